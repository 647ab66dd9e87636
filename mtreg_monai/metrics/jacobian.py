"""Jacobian-determinant figures of a dense displacement field (Table 1 of Xu et al., MICCAI 2022).

The paper reports, per registered pair, the percentage of voxels where the Jacobian determinant of the
transformation is non-positive (folding) and the standard deviation of the determinant.  The determinant is
computed as voxelmorph's ``jacobian_determinant`` does (``np.gradient`` of ``identity + ddf``: central
differences inside the volume, one-sided first-order differences at the borders), so the figures are
comparable with those of voxelmorph-based papers and, inside the volume, with SimpleITK's
``DisplacementFieldJacobianDeterminantFilter``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction, look_up_option

from .reduction import aggregate_per_pair

__all__ = [
    "JACOBIAN_METRICS",
    "jacobian_determinant",
    "compute_folding_percentage",
    "compute_jacobian_std",
    "compute_log_jacobian_std",
    "compute_jacobian_metric",
    "JacobianMetric",
]

logger = logging.getLogger(__name__)

#: names of the per-pair Jacobian figures; they are also the keys used by ``compute_registration_metrics``.
JACOBIAN_METRICS = ("folding_percent", "jacobian_std", "log_jacobian_std")


def _check_ddf(ddf: Any, name: str = "ddf") -> None:
    if not isinstance(ddf, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ddf).__name__}.")
    if ddf.is_complex() or ddf.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {ddf.dtype}.")
    spatial_dims = ddf.ndim - 2
    if spatial_dims not in (2, 3):
        raise NotImplementedError(
            f"{name} must be a 2-D (B, 2, H, W) or 3-D (B, 3, H, W, D) displacement, got shape {tuple(ddf.shape)}."
        )
    if ddf.shape[1] != spatial_dims:
        raise ValueError(
            f"{name} of shape {tuple(ddf.shape)} must have {spatial_dims} channels (one per spatial axis), "
            f"got {ddf.shape[1]}."
        )
    if min(ddf.shape[2:]) < 2:
        raise ValueError(f"{name} needs at least 2 voxels along every spatial axis, got shape {tuple(ddf.shape)}.")


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of the transformation ``x -> x + ddf(x)``, voxel by voxel.

    ``det(I + grad ddf)`` with the derivatives taken as ``np.gradient`` / :func:`torch.gradient` take them:
    central differences ``(u(x + 1) - u(x - 1)) / 2`` inside the volume, one-sided first-order differences
    ``u(1) - u(0)`` and ``u(n - 1) - u(n - 2)`` on the border voxels.  This is voxelmorph's
    ``jacobian_determinant`` (which applies ``np.gradient`` to ``identity + ddf``); inside the volume it is also
    what SimpleITK's ``DisplacementFieldJacobianDeterminantFilter`` returns (that filter differs on the
    outermost voxels only).  A linear displacement ``ddf(x) = A x`` gives ``det(I + A)`` on every voxel,
    borders included.

    The determinant needs no voxel spacing: with the displacement and the derivatives both in voxel units the
    spacing cancels (``det(I + S G S^-1) = det(I + G)`` for ``S = diag(spacing)``), and it equals the
    determinant of the same transformation expressed in millimetres.

    Args:
        ddf: dense displacement ``(B, 3, H, W, D)`` (or ``(B, 2, H, W)`` in 2-D), voxel units, channel i along
            spatial axis i, sampled on the fixed grid: warped(x) = moving(x + ddf(x)).

    Returns:
        determinant ``(B, 1, H, W, D)`` (or ``(B, 1, H, W)``) on ``ddf``'s device, in ``ddf``'s dtype promoted to
        at least float32 (a float16/bfloat16 field is differentiated in float32).  Identity (zero displacement)
        gives 1; a value <= 0 marks folding.

    Raises:
        TypeError: when ``ddf`` is not a real-valued tensor.
        NotImplementedError: when ``ddf`` is neither 4-D nor 5-D.
        ValueError: when ``ddf`` has not one channel per spatial axis, or fewer than 2 voxels along an axis.

    Example::

        >>> ddf = torch.zeros(1, 3, 8, 8, 8)
        >>> jacobian_determinant(ddf).unique()
        tensor([1.])
    """
    _check_ddf(ddf)
    dtype = torch.promote_types(ddf.dtype, torch.float32)
    u = ddf.to(dtype)
    spatial_dims = u.ndim - 2
    # grads[j][:, i] = d u_i / d x_j
    grads = torch.gradient(u, dim=tuple(range(2, 2 + spatial_dims)), edge_order=1)

    def jac(i: int, j: int) -> torch.Tensor:
        g = grads[j][:, i]
        return g + 1.0 if i == j else g

    if spatial_dims == 2:
        det = jac(0, 0) * jac(1, 1) - jac(0, 1) * jac(1, 0)
    else:
        det = (
            jac(0, 0) * (jac(1, 1) * jac(2, 2) - jac(1, 2) * jac(2, 1))
            - jac(0, 1) * (jac(1, 0) * jac(2, 2) - jac(1, 2) * jac(2, 0))
            + jac(0, 2) * (jac(1, 0) * jac(2, 1) - jac(1, 1) * jac(2, 0))
        )
    return det.unsqueeze(1)


def _as_jacobian(ddf_or_jac: Any) -> torch.Tensor:
    """A displacement ``(B, n, *spatial)`` with ``n = len(spatial)`` -> its determinant; ``(B, 1, ...)`` passes."""
    if not isinstance(ddf_or_jac, torch.Tensor):
        raise TypeError(f"ddf_or_jac must be a torch.Tensor, got {type(ddf_or_jac).__name__}.")
    spatial_dims = ddf_or_jac.ndim - 2
    if spatial_dims not in (2, 3):
        raise NotImplementedError(
            "ddf_or_jac must be (B, C, H, W) or (B, C, H, W, D) with C = 1 (a Jacobian determinant) or "
            f"C = number of spatial dims (a displacement), got shape {tuple(ddf_or_jac.shape)}."
        )
    if ddf_or_jac.shape[1] == 1:
        if ddf_or_jac.is_complex() or ddf_or_jac.dtype == torch.bool:
            raise TypeError(f"ddf_or_jac must be a real-valued tensor, got dtype {ddf_or_jac.dtype}.")
        return ddf_or_jac.to(torch.promote_types(ddf_or_jac.dtype, torch.float32))
    if ddf_or_jac.shape[1] != spatial_dims:
        raise ValueError(
            f"ddf_or_jac of shape {tuple(ddf_or_jac.shape)} must have 1 channel (a Jacobian determinant) or "
            f"{spatial_dims} channels (a {spatial_dims}-D displacement), got {ddf_or_jac.shape[1]}."
        )
    return jacobian_determinant(ddf_or_jac)


def _flat_mask(mask: Any, jac: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` boolean mask for the ``(B, 1, *spatial)`` determinant ``jac`` (all True when ``mask`` is None)."""
    batch = jac.shape[0]
    if mask is None:
        return torch.ones((batch, jac[0].numel()), dtype=torch.bool, device=jac.device)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}.")
    good_shape = mask.ndim == jac.ndim and mask.shape[1] == 1 and mask.shape[2:] == jac.shape[2:]
    if not good_shape or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"mask must have shape ({batch} or 1, 1, *{tuple(jac.shape[2:])}), got {tuple(mask.shape)}."
        )
    return (mask != 0).to(jac.device).expand(batch, *mask.shape[1:]).reshape(batch, -1)


def _masked_stats(
    jac: torch.Tensor, mask: Any, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened values, mask and per-item voxel count; warns for empty masks and non-finite values."""
    values = jac.reshape(jac.shape[0], -1)
    m = _flat_mask(mask, jac)
    count = m.sum(dim=1)
    empty = (count == 0).nonzero().flatten().tolist()
    if empty:
        logger.warning("%s: mask has no voxel for batch item(s) %s; the result is NaN.", name, empty)
    bad = (~torch.isfinite(values) & m).any(dim=1).nonzero().flatten().tolist()
    if bad:
        logger.warning(
            "%s: non-finite Jacobian determinant (NaN/inf in the displacement) for batch item(s) %s; "
            "the result is NaN.",
            name,
            bad,
        )
    return values, m, count


def _nan_where_invalid(
    result: torch.Tensor, values: torch.Tensor, m: torch.Tensor, count: torch.Tensor
) -> torch.Tensor:
    invalid = (count == 0) | (~torch.isfinite(values) & m).any(dim=1)
    return torch.where(invalid, torch.full_like(result, float("nan")), result)


def compute_folding_percentage(ddf_or_jac: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Percentage of voxels whose Jacobian determinant is <= 0 (the paper's "% of |J| <= 0").

    Args:
        ddf_or_jac: a displacement ``(B, 3, H, W, D)`` (voxel units, channel i along spatial axis i,
            warped(x) = moving(x + ddf(x))), or its determinant ``(B, 1, H, W, D)`` from
            :func:`jacobian_determinant`; 2-D ``(B, 2, H, W)`` / ``(B, 1, H, W)`` likewise.
        mask: optional region ``(B, 1, H, W, D)`` or ``(1, 1, H, W, D)``; non-zero voxels are counted, the
            percentage is relative to the voxels in the mask.  ``None``: the whole volume.

    Returns:
        ``(B,)`` percentages in [0, 100].  NaN (with a logged warning) for an item whose mask is empty or whose
        determinant is not finite inside the mask.

    Raises:
        TypeError: when ``ddf_or_jac`` or ``mask`` is not a tensor.
        ValueError: when the channels of ``ddf_or_jac`` or the shape of ``mask`` do not fit.
    """
    jac = _as_jacobian(ddf_or_jac)
    values, m, count = _masked_stats(jac, mask, "compute_folding_percentage")
    folded = ((values <= 0) & m).sum(dim=1).to(values.dtype)
    result = 100.0 * folded / count.clamp_min(1).to(values.dtype)
    return _nan_where_invalid(result, values, m, count)


def _masked_std(values: torch.Tensor, m: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    n = count.clamp_min(1).to(values.dtype)
    v = torch.where(m, values, torch.zeros_like(values))
    mean = v.sum(dim=1) / n
    centred = torch.where(m, values - mean[:, None], torch.zeros_like(values))
    return torch.sqrt((centred * centred).sum(dim=1) / n)


def compute_jacobian_std(ddf_or_jac: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of the Jacobian determinant over the voxels (the paper's "std(|J|)").

    The population standard deviation (``ddof=0``, as ``np.std``) of all determinant values, folded voxels
    included.

    Args:
        ddf_or_jac: a displacement ``(B, 3, H, W, D)`` (voxel units, channel i along spatial axis i,
            warped(x) = moving(x + ddf(x))) or its determinant ``(B, 1, H, W, D)``; 2-D likewise.
        mask: optional region ``(B or 1, 1, H, W, D)``; only non-zero voxels enter the statistic.

    Returns:
        ``(B,)`` standard deviations (dimensionless).  NaN (with a logged warning) for an empty mask or a
        non-finite determinant.

    Raises:
        TypeError: when ``ddf_or_jac`` or ``mask`` is not a tensor.
        ValueError: when the channels of ``ddf_or_jac`` or the shape of ``mask`` do not fit.
    """
    jac = _as_jacobian(ddf_or_jac)
    values, m, count = _masked_stats(jac, mask, "compute_jacobian_std")
    return _nan_where_invalid(_masked_std(values, m, count), values, m, count)


def compute_log_jacobian_std(
    ddf_or_jac: torch.Tensor,
    mask: torch.Tensor | None = None,
    offset: float = 3.0,
    clip_min: float = 1e-9,
    clip_max: float = 1e9,
) -> torch.Tensor:
    """SDlogJ: standard deviation of ``log(clip(J + offset, clip_min, clip_max))``.

    With the defaults this is Learn2Reg's ``LogJacDetStd`` (``offset=3``, clipped to [1e-9, 1e9]); note that the
    offset of 3 keeps the logarithm defined for folded voxels but makes it a different number from the textbook
    SDlogJ (``offset=0``: std of ``log J``, with non-positive determinants clipped to ``clip_min``).  Learn2Reg
    also drops a 2-voxel border (its derivatives are zero-padded there): pass a ``mask`` that is 0 on the
    outermost 2 voxels to reproduce that.  Population standard deviation (``ddof=0``).

    Args:
        ddf_or_jac: a displacement ``(B, 3, H, W, D)`` (voxel units, channel i along spatial axis i,
            warped(x) = moving(x + ddf(x))) or its determinant ``(B, 1, H, W, D)``; 2-D likewise.
        mask: optional region ``(B or 1, 1, H, W, D)``; only non-zero voxels enter the statistic.
        offset: added to the determinant before the logarithm.
        clip_min: lower clip of ``J + offset``, > 0.
        clip_max: upper clip of ``J + offset``, > ``clip_min``.

    Returns:
        ``(B,)`` standard deviations.  NaN (with a logged warning) for an empty mask or a non-finite determinant.

    Raises:
        TypeError: when ``ddf_or_jac`` or ``mask`` is not a tensor.
        ValueError: when the channels or shapes do not fit, or ``clip_min``/``clip_max`` are not
            ``0 < clip_min < clip_max``.
    """
    if not 0 < clip_min < clip_max:
        raise ValueError(f"expecting 0 < clip_min < clip_max, got clip_min={clip_min} and clip_max={clip_max}.")
    jac = _as_jacobian(ddf_or_jac)
    values, m, count = _masked_stats(jac, mask, "compute_log_jacobian_std")
    logs = torch.log(torch.clamp(values + offset, min=clip_min, max=clip_max))
    return _nan_where_invalid(_masked_std(logs, m, count), values, m, count)


_METRIC_FUNCTIONS = {
    "folding_percent": compute_folding_percentage,
    "jacobian_std": compute_jacobian_std,
    "log_jacobian_std": compute_log_jacobian_std,
}


def compute_jacobian_metric(
    ddf_or_jac: torch.Tensor, metric: str = "folding_percent", mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One of :data:`JACOBIAN_METRICS` by name (``"folding_percent"``, ``"jacobian_std"``, ``"log_jacobian_std"``).

    Args:
        ddf_or_jac: a displacement ``(B, 3, H, W, D)`` (voxel units, warped(x) = moving(x + ddf(x))) or its
            determinant ``(B, 1, H, W, D)``; 2-D likewise.
        metric: the figure's name.
        mask: optional region ``(B or 1, 1, H, W, D)``.

    Returns:
        ``(B,)`` values; see the function of that name.

    Raises:
        ValueError: when ``metric`` is not one of :data:`JACOBIAN_METRICS`, and as the function of that name.
    """
    fn = look_up_option(metric, _METRIC_FUNCTIONS)
    return fn(ddf_or_jac, mask=mask)


class JacobianMetric(CumulativeIterationMetric):
    """Cumulative Jacobian-determinant figure of predicted displacements (folding % or std of the determinant).

    Xu et al., MICCAI 2022, Table 1 ("% of |J| <= 0", "std(|J|)").  Call it with the displacement as ``y_pred``
    and, optionally, a region mask as ``y``; each call adds one value per batch item to the buffer, and
    :meth:`aggregate` reduces them (NaN values skipped), as MONAI's ``SurfaceDistanceMetric``.

    Args:
        metric: ``"folding_percent"`` (percentage of voxels with determinant <= 0), ``"jacobian_std"``
            (population std of the determinant) or ``"log_jacobian_std"`` (Learn2Reg's SDlogJ, see
            :func:`compute_log_jacobian_std`).
        reduction: MONAI ``MetricReduction`` applied by :meth:`aggregate` to the ``(N, 1)`` buffer; default mean.
        get_not_nans: whether :meth:`aggregate` also returns the count of not-NaN values.

    Example::

        >>> metric = JacobianMetric("folding_percent")
        >>> metric(torch.zeros(2, 3, 8, 8, 8))
        tensor([[0.],
                [0.]])
        >>> metric.aggregate().item()
        0.0
    """

    def __init__(
        self,
        metric: str = "folding_percent",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric = look_up_option(metric, JACOBIAN_METRICS)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """
        Args:
            y_pred: displacement ``(B, 3, H, W, D)`` in voxel units (warped(x) = moving(x + ddf(x))) or its
                determinant ``(B, 1, H, W, D)``; 2-D likewise.
            y: optional mask ``(B or 1, 1, H, W, D)``; non-zero voxels are evaluated.

        Returns:
            ``(B, 1)`` values of the chosen figure.
        """
        return compute_jacobian_metric(y_pred, self.metric, mask=y).unsqueeze(1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``(N, 1)`` values (NaN skipped).

        Args:
            reduction: overrides the constructor's ``reduction`` when given.

        Returns:
            the reduced value, and the not-NaN count when ``get_not_nans`` is True.

        Raises:
            ValueError: when nothing has been buffered.
        """
        return aggregate_per_pair(self, reduction)

