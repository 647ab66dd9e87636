"""Losses: the MIND-SSC similarity and the smoothness regulariser on the paper's (voxelmorph's) scale."""

from __future__ import annotations

from .mind import MIND_SSC_CHANNELS, MINDSSCLoss, mind_ssc
from .mind_reference import mind_ssc_reference
from .smoothness import SmoothnessLoss
from .utils import check_reduction, reduce_loss

__all__ = [
    "MIND_SSC_CHANNELS",
    "MINDSSCLoss",
    "SmoothnessLoss",
    "check_reduction",
    "mind_ssc",
    "mind_ssc_reference",
    "reduce_loss",
]
