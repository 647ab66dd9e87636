"""Networks: the MC-dropout VoxelMorph backbone, the registration network and MC dropout utilities."""

from __future__ import annotations

from .blocks import MCDropout
from .nets import DROPOUT_SCOPES, MCDropoutVoxelMorphUNet, MCVoxelMorph
from .utils import mc_dropout_layers, mc_dropout_mode

__all__ = [
    "DROPOUT_SCOPES",
    "MCDropout",
    "MCDropoutVoxelMorphUNet",
    "MCVoxelMorph",
    "mc_dropout_layers",
    "mc_dropout_mode",
]
