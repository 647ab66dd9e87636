"""Registration networks."""

from __future__ import annotations

from .mc_voxelmorph import DROPOUT_SCOPES, MCDropoutVoxelMorphUNet, MCVoxelMorph

__all__ = ["DROPOUT_SCOPES", "MCDropoutVoxelMorphUNet", "MCVoxelMorph"]
