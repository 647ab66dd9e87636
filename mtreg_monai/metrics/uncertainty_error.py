"""How well the teacher's Monte Carlo uncertainty predicts the registration error (Xu et al., MICCAI 2022).

The paper weights its losses by two per-voxel uncertainties of the EMA teacher's MC dropout samples: ``U_phi``
(coefficient of variation of the displacements, ``(B, 3, H, W, D)``) and ``U_I`` (of the warped images,
``(B, 1, H, W, D)``). Where the true displacement is known (the phantom), this module measures whether a voxel
that is more uncertain is also more wrong: the voxel-wise Spearman rank correlation between an uncertainty map
and an error map (:func:`spearman_correlation`, accumulated over pairs by :class:`UncertaintyErrorMetric`) and a
calibration curve, mean error per uncertainty quantile bin (:func:`calibration_curve`).

Maps with several channels are reduced to one value per voxel first (``channel_reduction``): the L2 norm over
the channels by default, so ``U_phi`` becomes ``||U_phi(x)||_2`` and compares with the error magnitude
``||ddf_pred(x) - ddf_true(x)||_2`` of :func:`registration_error`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction, look_up_option

from .reduction import aggregate_per_pair

__all__ = [
    "CHANNEL_REDUCTIONS",
    "CalibrationCurve",
    "UncertaintyErrorMetric",
    "calibration_curve",
    "rank_average",
    "registration_error",
    "spearman_correlation",
]

logger = logging.getLogger(__name__)

#: how a map with several channels becomes one value per voxel: L2 norm, mean or max over the channels.
CHANNEL_REDUCTIONS = ("norm", "mean", "max")


def registration_error(ddf_pred: torch.Tensor, ddf_true: torch.Tensor) -> torch.Tensor:
    """Voxel-wise end-point error ``||ddf_pred(x) - ddf_true(x)||_2`` of a displacement against the true one.

    Args:
        ddf_pred: predicted displacement ``(B, 3, H, W, D)`` (or ``(B, 2, H, W)``), voxel units, channel i along
            spatial axis i, sampled on the fixed grid: warped(x) = moving(x + ddf(x)) (MONAI ``Warp``).
        ddf_true: the true displacement, same shape and convention.

    Returns:
        ``(B, 1, H, W, D)`` error in voxels (not mm), in the inputs' promoted dtype (at least float32), on
        ``ddf_pred``'s device.

    Raises:
        TypeError: when an input is not a real-valued tensor.
        ValueError: when the shapes differ or the channels are not one per spatial axis (2 or 3).

    Example::

        >>> registration_error(torch.ones(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4)).unique()
        tensor([1.7321])
    """
    for name, value in (("ddf_pred", ddf_pred), ("ddf_true", ddf_true)):
        if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real-valued torch.Tensor, got {getattr(value, 'dtype', type(value))}.")
    spatial_dims = ddf_pred.ndim - 2
    if spatial_dims not in (2, 3) or ddf_pred.shape[1] != spatial_dims:
        raise ValueError(
            "Expecting ddf_pred of shape (B, 3, H, W, D) or (B, 2, H, W) (one channel per spatial axis), "
            f"instead got ddf_pred of shape {tuple(ddf_pred.shape)}."
        )
    if ddf_true.shape != ddf_pred.shape:
        raise ValueError(
            f"Expecting ddf_true of the same shape as ddf_pred {tuple(ddf_pred.shape)}, "
            f"instead got ddf_true of shape {tuple(ddf_true.shape)}."
        )
    dtype = torch.promote_types(torch.promote_types(ddf_pred.dtype, ddf_true.dtype), torch.float32)
    diff = ddf_pred.to(dtype) - ddf_true.to(device=ddf_pred.device, dtype=dtype)
    return torch.linalg.vector_norm(diff, dim=1, keepdim=True)


def rank_average(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values getting the average of their ranks (``scipy.stats.rankdata``).

    One sort and one pass over the sorted values: memory is a few copies of ``values``, so millions of voxels
    are fine. NaN sorts last; pass finite or ±inf values only.

    Args:
        values: ``(N,)`` real values.

    Returns:
        ``(N,)`` float64 ranks on ``values``' device.
    """
    if not isinstance(values, torch.Tensor) or values.ndim != 1:
        raise ValueError(f"Expecting a 1-d values tensor, instead got {getattr(values, 'shape', type(values))}.")
    sorted_values, order = torch.sort(values)
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, dim=0).to(torch.float64)  # 1-based rank of each group's last member
    average = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    ranks[order] = average[inverse]
    return ranks


def _check_map(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {value.dtype}.")
    if value.ndim < 3:
        raise ValueError(
            f"Expecting {name} of shape (B, C, H, W, D) or (B, C, H, W), instead got {tuple(value.shape)}."
        )


def _check_reduction(channel_reduction: Any) -> str:
    if not isinstance(channel_reduction, str) or channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(f"Expecting channel_reduction in {CHANNEL_REDUCTIONS}, instead got {channel_reduction!r}.")
    return look_up_option(channel_reduction, CHANNEL_REDUCTIONS)


def _reduce_channels(value: torch.Tensor, channel_reduction: str) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(B, 1, ...)`` float64 (a single channel passes unchanged, sign kept)."""
    value = value.detach().to(torch.float64)
    if value.shape[1] == 1:
        return value
    if channel_reduction == "norm":
        return torch.linalg.vector_norm(value, dim=1, keepdim=True)
    if channel_reduction == "mean":
        return value.mean(dim=1, keepdim=True)
    return value.amax(dim=1, keepdim=True)


def _flat_pair(
    uncertainty: Any, error: Any, mask: Any, channel_reduction: str, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked ``(B, N)`` float64 uncertainty and error and ``(B, N)`` boolean selection (mask and not NaN)."""
    _check_map(uncertainty, "uncertainty")
    _check_map(error, "error")
    red = _check_reduction(channel_reduction)
    if (
        error.ndim != uncertainty.ndim
        or error.shape[0] != uncertainty.shape[0]
        or error.shape[2:] != uncertainty.shape[2:]
    ):
        raise ValueError(
            f"Expecting error of shape ({uncertainty.shape[0]}, C, *{tuple(uncertainty.shape[2:])}) to match "
            f"uncertainty {tuple(uncertainty.shape)}, instead got error of shape {tuple(error.shape)}."
        )
    batch = uncertainty.shape[0]
    u = _reduce_channels(uncertainty, red).reshape(batch, -1)
    e = _reduce_channels(error, red).to(u.device).reshape(batch, -1)
    if mask is None:
        m = torch.ones_like(u, dtype=torch.bool)
    else:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}.")
        good = mask.ndim == uncertainty.ndim and mask.shape[1] == 1 and mask.shape[2:] == uncertainty.shape[2:]
        if not good or mask.shape[0] not in (1, batch):
            raise ValueError(
                f"Expecting mask of shape ({batch} or 1, 1, *{tuple(uncertainty.shape[2:])}), "
                f"instead got mask of shape {tuple(mask.shape)}."
            )
        m = (mask != 0).to(u.device).expand(batch, *mask.shape[1:]).reshape(batch, -1)
    nan = (torch.isnan(u) | torch.isnan(e)) & m
    if nan.any():
        logger.warning(
            "%s: %d voxel(s) with a NaN uncertainty or error left out (batch item(s) %s).",
            name,
            int(nan.sum()),
            nan.any(dim=1).nonzero().flatten().tolist(),
        )
        m = m & ~nan
    return u, e, m


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    denom = torch.sqrt((a * a).sum() * (b * b).sum())
    if not denom > 0:  # a constant map has no ranking
        return torch.full((), float("nan"), dtype=a.dtype, device=a.device)
    return ((a * b).sum() / denom).clamp(-1.0, 1.0)


def spearman_correlation(
    uncertainty: torch.Tensor,
    error: torch.Tensor,
    mask: torch.Tensor | None = None,
    channel_reduction: str = "norm",
) -> torch.Tensor:
    """Voxel-wise Spearman rank correlation between an uncertainty map and an error map, per batch item.

    Both maps are reduced to one value per voxel (``channel_reduction`` over C when C > 1; a single channel is
    used as it is), the selected voxels of each item ranked with tied values getting their average rank (an
    error of exactly 0 at many voxels, a floored uncertainty), and the Pearson correlation of the two rankings
    is returned, as ``scipy.stats.spearmanr`` computes it. Positive: the more uncertain voxels are the more
    wrong ones. ``+inf`` (a coefficient of variation over a zero mean) ranks above every finite value; NaN voxels
    are left out with a logged warning. Computed in float64 without gradients; one item at a time, memory is a
    few ``(N,)`` float64 and int64 vectors (N = H * W * D).

    Args:
        uncertainty: ``(B, C, H, W, D)`` (or ``(B, C, H, W)``), e.g. ``U_phi`` ``(B, 3, ...)`` or ``U_I``
            ``(B, 1, ...)``; any unit (only the order of the values matters).
        error: ``(B, C', H, W, D)``, same batch and spatial shape, e.g. :func:`registration_error` ``(B, 1, ...)``
            in voxels, or an absolute intensity difference.
        mask: optional ``(B or 1, 1, H, W, D)``; non-zero voxels are used (e.g. inside the body). ``None``: all.
        channel_reduction: ``"norm"`` (default: L2 norm over channels, ``||U_phi(x)||_2``), ``"mean"`` or ``"max"``.

    Returns:
        ``(B,)`` float64 correlations in [-1, 1] on ``uncertainty``'s device. NaN for an item with fewer than two
        selected voxels or a constant map there (no ranking).

    Raises:
        TypeError: when an input is not a real-valued tensor.
        ValueError: when a map has fewer than 3 dims, ``error`` or ``mask`` does not match ``uncertainty``'s batch
            and spatial shape, or ``channel_reduction`` is unknown.

    Example::

        >>> err = torch.rand(2, 1, 8, 8, 8)
        >>> spearman_correlation(err.exp(), err)
        tensor([1., 1.], dtype=torch.float64)
    """
    with torch.no_grad():
        u, e, m = _flat_pair(uncertainty, error, mask, channel_reduction, "spearman_correlation")
        rho = torch.full((u.shape[0],), float("nan"), dtype=torch.float64, device=u.device)
        for i in range(u.shape[0]):
            if int(m[i].sum()) < 2:
                logger.warning("spearman_correlation: fewer than 2 voxels for batch item %d; rho is NaN.", i)
                continue
            rho[i] = _pearson(rank_average(u[i][m[i]]), rank_average(e[i][m[i]]))
    return rho


class CalibrationCurve(NamedTuple):
    """What :func:`calibration_curve` returns; every field has one row per batch item (one row when pooled)."""

    uncertainty: torch.Tensor  #: ``(B, num_bins)`` float64 mean uncertainty of each bin (NaN for an empty bin)
    error: torch.Tensor  #: ``(B, num_bins)`` float64 mean error of each bin (NaN for an empty bin)
    count: torch.Tensor  #: ``(B, num_bins)`` int64 number of voxels in each bin
    edges: torch.Tensor  #: ``(B, num_bins + 1)`` float64 uncertainty quantiles bounding the bins


def _quantiles(sorted_values: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``k / num_bins`` quantiles, k = 0..num_bins, linear interpolation (``torch.quantile``'s default)."""
    n = sorted_values.numel()
    pos = torch.linspace(0, n - 1, num_bins + 1, dtype=torch.float64, device=sorted_values.device)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = pos - lo.to(torch.float64)
    a, b = sorted_values[lo], sorted_values[hi]
    return torch.where(frac > 0, a + (b - a) * frac, a)  # no inf - inf at an infinite top quantile


def calibration_curve(
    uncertainty: torch.Tensor,
    error: torch.Tensor,
    num_bins: int = 10,
    mask: torch.Tensor | None = None,
    channel_reduction: str = "norm",
    pool_batch: bool = False,
) -> CalibrationCurve:
    """Mean error per uncertainty-quantile bin: is the error larger where the uncertainty is larger?

    The maps are reduced to one value per voxel as in :func:`spearman_correlation`. The selected voxels (mask,
    not NaN) are split at the ``k / num_bins`` quantiles of their uncertainty, ``q_0 = min`` ... ``q_n = max``:
    bin k holds ``q_k <= u < q_{k+1}`` (the last bin also ``u = max``). Tied uncertainties always share a bin, so
    with many ties (a floored or zero uncertainty) some bins are empty: ``count`` 0, means NaN. For a
    well-calibrated uncertainty ``error`` increases with the bin.

    Args:
        uncertainty: ``(B, C, H, W, D)`` (or ``(B, C, H, W)``) uncertainty map.
        error: ``(B, C', H, W, D)`` error map, same batch and spatial shape (e.g. :func:`registration_error`, voxels).
        num_bins: number of quantile bins, >= 1.
        mask: optional ``(B or 1, 1, H, W, D)``; non-zero voxels are used.
        channel_reduction: ``"norm"`` (default), ``"mean"`` or ``"max"`` over channels when C > 1.
        pool_batch: one curve over the voxels of all batch items (rows of the result: 1) instead of one per item.

    Returns:
        :class:`CalibrationCurve` ``(uncertainty, error, count, edges)``, float64/int64 on ``uncertainty``'s
        device, ``B`` rows (1 with ``pool_batch``). An item with no selected voxel has counts 0 and NaN elsewhere.

    Raises:
        TypeError: when an input is not a real-valued tensor.
        ValueError: for shapes as :func:`spearman_correlation`, an unknown ``channel_reduction`` or ``num_bins < 1``.

    Example::

        >>> u = torch.arange(100.0).reshape(1, 1, 10, 10)
        >>> calibration_curve(u, 2 * u, num_bins=4).error
        tensor([[ 24.,  74., 124., 174.]], dtype=torch.float64)
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"Expecting num_bins to be an int >= 1, instead got {num_bins!r}.")
    with torch.no_grad():
        u, e, m = _flat_pair(uncertainty, error, mask, channel_reduction, "calibration_curve")
        if pool_batch:
            u, e, m = u.reshape(1, -1), e.reshape(1, -1), m.reshape(1, -1)
        rows = u.shape[0]
        nan = float("nan")
        mean_u = torch.full((rows, num_bins), nan, dtype=torch.float64, device=u.device)
        mean_e = torch.full_like(mean_u, nan)
        count = torch.zeros((rows, num_bins), dtype=torch.int64, device=u.device)
        edges = torch.full((rows, num_bins + 1), nan, dtype=torch.float64, device=u.device)
        for i in range(rows):
            ui, ei = u[i][m[i]], e[i][m[i]]
            if ui.numel() == 0:
                logger.warning("calibration_curve: no voxel selected for row %d; its curve is NaN.", i)
                continue
            edges[i] = _quantiles(torch.sort(ui).values, num_bins)
            bins = torch.searchsorted(edges[i, 1:-1].contiguous(), ui, right=True)
            count[i] = torch.bincount(bins, minlength=num_bins)
            n = count[i].to(torch.float64)
            sum_u = torch.zeros(num_bins, dtype=torch.float64, device=u.device).index_add_(0, bins, ui)
            sum_e = torch.zeros(num_bins, dtype=torch.float64, device=u.device).index_add_(0, bins, ei)
            mean_u[i] = torch.where(n > 0, sum_u / n.clamp_min(1), mean_u[i])
            mean_e[i] = torch.where(n > 0, sum_e / n.clamp_min(1), mean_e[i])
    return CalibrationCurve(mean_u, mean_e, count, edges)


class UncertaintyErrorMetric(CumulativeIterationMetric):
    """Cumulative Spearman correlation between an uncertainty map and the registration error, one value per pair.

    Checks how well the MC-dropout uncertainties of Xu et al. (MICCAI 2022) locate the errors. Each call computes
    :func:`spearman_correlation` for a batch (``y_pred``: the uncertainty ``(B, C, H, W, D)``, ``y``: the error
    ``(B, C', H, W, D)``, optional keyword ``mask``) and buffers one ``rho`` per pair; :meth:`aggregate` reduces
    them (NaN skipped, as MONAI's metrics do).

    Args:
        channel_reduction: ``"norm"`` (default), ``"mean"`` or ``"max"`` over channels when C > 1.
        reduction: MONAI ``MetricReduction`` over the buffered ``(N, 1)`` values; default ``"mean"``.
        get_not_nans: whether :meth:`aggregate` also returns the count of not-NaN values.

    Example::

        >>> metric = UncertaintyErrorMetric()
        >>> err = torch.rand(2, 1, 8, 8, 8)
        >>> _ = metric(err.sqrt(), err)
        >>> metric.aggregate()
        tensor([1.])
    """

    def __init__(
        self,
        channel_reduction: str = "norm",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.channel_reduction = _check_reduction(channel_reduction)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            y_pred: uncertainty ``(B, C, H, W, D)``.
            y: error ``(B, C', H, W, D)``, same batch and spatial shape.
            mask: optional ``(B or 1, 1, H, W, D)``; non-zero voxels are used.

        Returns:
            ``(B, 1)`` float32 Spearman correlations.

        Raises:
            ValueError: when ``y`` is missing, and as :func:`spearman_correlation`.
        """
        if y is None:
            raise ValueError("UncertaintyErrorMetric needs y (the error map), got None.")
        rho = spearman_correlation(y_pred, y, mask=mask, channel_reduction=self.channel_reduction)
        return rho.float().unsqueeze(1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``(N, 1)`` correlations (NaN skipped).

        Args:
            reduction: overrides the constructor's ``reduction`` when given (``"none"`` gives the ``(N, 1)`` values).

        Returns:
            the reduced value, and the not-NaN count when ``get_not_nans`` is True.

        Raises:
            ValueError: when nothing has been buffered.
        """
        return aggregate_per_pair(self, reduction)
