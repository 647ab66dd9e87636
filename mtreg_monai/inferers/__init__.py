"""Inferers: test-time refinement (instance optimisation) of a registration network's displacement."""

from __future__ import annotations

from .refinement import MCSmoothnessWeight, RefinementInferer, refine_ddf

__all__ = ["MCSmoothnessWeight", "RefinementInferer", "refine_ddf"]
