"""Applications: the ``mtreg-register`` command."""

from __future__ import annotations

from .register import default_bundle_dir, main, register_pair

__all__ = ["default_bundle_dir", "main", "register_pair"]
