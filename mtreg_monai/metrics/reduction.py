"""The NaN-aware reduction shared by the per-pair cumulative metrics (one value per pair, buffered as (N, 1))."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["aggregate_per_pair"]


def aggregate_per_pair(
    metric: CumulativeIterationMetric, reduction: MetricReduction | str | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reduce a metric's buffered ``(N, 1)`` per-pair values, NaN skipped; a reduction of nothing is NaN.

    Args:
        metric: the metric (its ``get_buffer()``, ``reduction`` and ``get_not_nans``).
        reduction: overrides the metric's ``reduction`` when given (``"none"`` gives the ``(N, 1)`` values).

    Returns:
        the reduced value, and the not-NaN count when ``metric.get_not_nans`` is True.

    Raises:
        ValueError: when nothing has been buffered.
    """
    data = metric.get_buffer()
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{type(metric).__name__} has no buffered values to aggregate, got {type(data).__name__}.")
    f, not_nans = do_metric_reduction(data, reduction or metric.reduction)
    # MONAI reduces a group with no valid value to 0; a mean of nothing is NaN
    f = torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))
    return (f, not_nans) if metric.get_not_nans else f
