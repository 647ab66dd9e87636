"""Placeholder; see the subpackage docs."""
