"""Building blocks of the registration networks."""

from __future__ import annotations

from .conditional import ConditionalInstanceNorm, WeightMappingNetwork
from .mc_dropout import MCDropout

__all__ = ["ConditionalInstanceNorm", "MCDropout", "WeightMappingNetwork"]
