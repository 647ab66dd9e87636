"""Losses: the MIND-SSC similarity and the smoothness regulariser on the paper's (voxelmorph's) scale."""

from __future__ import annotations

from .mind import MIND_SSC_CHANNELS, MINDSSCLoss, mind_ssc
from .mind_reference import mind_ssc_reference
from .smoothness import SmoothnessLoss

__all__ = ["MIND_SSC_CHANNELS", "MINDSSCLoss", "SmoothnessLoss", "mind_ssc", "mind_ssc_reference"]
