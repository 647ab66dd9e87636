"""The full Table-1 row of a registration (Xu et al., MICCAI 2022): per-organ Dice and ASD, folding %, std of |J|.

:func:`compute_registration_metrics` combines :mod:`mtreg_monai.metrics.overlap` (Dice and ASD per label) and
:mod:`mtreg_monai.metrics.jacobian` (Jacobian figures) into one dict of ``(B,)`` columns;
:class:`RegistrationMetric` accumulates them over an evaluation run as a MONAI ``CumulativeIterationMetric``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option

from mtreg_monai.metrics.jacobian import JACOBIAN_METRICS, compute_jacobian_metric, jacobian_determinant
from mtreg_monai.metrics.overlap import (
    DEFAULT_LABEL_NAMES,
    check_label_maps,
    check_label_names,
    compute_label_overlap,
)

__all__ = [
    "DEFAULT_JACOBIAN_METRICS",
    "FiniteSummary",
    "RegistrationMetric",
    "compute_registration_metrics",
    "finite_summary",
    "registration_metric_keys",
]

#: the Jacobian columns of the paper's Table 1.
DEFAULT_JACOBIAN_METRICS: tuple[str, ...] = ("folding_percent", "jacobian_std")


def registration_metric_keys(
    label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES, jacobian_metrics: Sequence[str] = DEFAULT_JACOBIAN_METRICS
) -> list[str]:
    """Column names of :func:`compute_registration_metrics`, in order.

    ``dice_<name>`` per label, ``dice_mean``, ``asd_<name>`` per label, ``asd_mean``, then ``jacobian_metrics``.

    Args:
        label_names: label value -> name.
        jacobian_metrics: names among ``"folding_percent"``, ``"jacobian_std"``, ``"log_jacobian_std"``.

    Returns:
        the key list.

    Raises:
        ValueError: for an unknown Jacobian metric or a bad label name.
    """
    names = list(check_label_names(label_names).values())
    jac = [look_up_option(m, JACOBIAN_METRICS) for m in jacobian_metrics]
    if len(set(jac)) != len(jac):
        raise ValueError(f"jacobian_metrics must not repeat a name, got {list(jacobian_metrics)}.")
    return [f"dice_{n}" for n in names] + ["dice_mean"] + [f"asd_{n}" for n in names] + ["asd_mean"] + jac


def compute_registration_metrics(
    warped_label: torch.Tensor,
    fixed_label: torch.Tensor,
    ddf: torch.Tensor,
    label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES,
    spacing: float | Sequence[float] = 1.0,
    jacobian_metrics: Sequence[str] = DEFAULT_JACOBIAN_METRICS,
    jacobian_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All Table-1 columns for a batch of registered pairs.

    Keys (see :func:`registration_metric_keys`): ``dice_<name>`` and ``asd_<name>`` (mm) per label,
    ``dice_mean`` and ``asd_mean`` (per pair, the mean over the labels that are not NaN; an ``inf`` ASD makes
    ``asd_mean`` inf), and the Jacobian figures ``folding_percent`` (% of voxels with determinant <= 0) and
    ``jacobian_std`` (std of the determinant), optionally ``log_jacobian_std`` (Learn2Reg's SDlogJ).

    Args:
        warped_label: moving label map warped to the fixed grid, ``(B, 1, H, W, D)``, integer values.
        fixed_label: fixed label map ``(B, 1, H, W, D)``.
        ddf: the displacement that warped the moving image, ``(B, 3, H, W, D)``, voxel units, channel i along
            spatial axis i, sampled on the fixed grid: warped(x) = moving(x + ddf(x)).
        label_names: label value -> name (default Learn2Reg AbdomenMRCT: liver, spleen, kidneys).
        spacing: fixed-image voxel size in mm, one number or one per spatial axis; used by the ASD only.
        jacobian_metrics: which Jacobian figures to add, in this order.
        jacobian_mask: optional region ``(B or 1, 1, H, W, D)`` for the Jacobian figures (whole volume if None).

    Returns:
        dict key -> ``(B,)`` tensor.

    Raises:
        TypeError, ValueError: for the inputs, as the functions used, and when ``ddf``'s batch or spatial shape
        differs from the label maps'.

    Example::

        >>> lab = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
        >>> lab[..., 4:10, 4:10, 4:10] = 1
        >>> out = compute_registration_metrics(lab, lab, torch.zeros(1, 3, 16, 16, 16), label_names={1: "liver"})
        >>> out["dice_liver"], out["asd_liver"], out["folding_percent"]
        (tensor([1.]), tensor([0.]), tensor([0.]))
    """
    keys = registration_metric_keys(label_names, jacobian_metrics)
    check_label_maps(warped_label, fixed_label)
    if not isinstance(ddf, torch.Tensor):
        raise TypeError(f"ddf must be a torch.Tensor, got {type(ddf).__name__}.")
    same_grid = ddf.ndim == warped_label.ndim and ddf.shape[2:] == warped_label.shape[2:]
    if not same_grid or ddf.shape[0] != warped_label.shape[0]:
        raise ValueError(
            f"ddf must have shape ({warped_label.shape[0]}, {warped_label.ndim - 2}, "
            f"*{tuple(warped_label.shape[2:])}) to match the label maps, got {tuple(ddf.shape)}."
        )
    dice, asd = compute_label_overlap(warped_label, fixed_label, label_names, spacing)
    names = list(check_label_names(label_names).values())
    out: dict[str, torch.Tensor] = {}
    for c, n in enumerate(names):
        out[f"dice_{n}"] = dice[:, c]
    out["dice_mean"] = torch.nanmean(dice, dim=1)
    for c, n in enumerate(names):
        out[f"asd_{n}"] = asd[:, c]
    out["asd_mean"] = torch.nanmean(asd, dim=1)
    jac_names = keys[2 * len(names) + 2 :]
    if jac_names:
        jac = jacobian_determinant(ddf)
        for m in jac_names:
            out[m] = compute_jacobian_metric(jac, m, mask=jacobian_mask).to(device=dice.device)
    return out


def _split_per_item(value: Any, n: int, name: str) -> list[Any]:
    """``value`` as ``n`` batch-of-one items for list-mode metrics (None -> ``n`` Nones)."""
    if value is None:
        return [None] * n
    if isinstance(value, torch.Tensor):
        if value.shape[0] == 1:
            return [value] * n
        items = [v.unsqueeze(0) for v in value]
    else:
        items = [v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for v in value]
    if len(items) != n:
        raise ValueError(f"{name} must hold one item per prediction ({n}), got {len(items)}.")
    return items


class FiniteSummary(NamedTuple):
    """What :func:`finite_summary` returns for one column of per-pair values."""

    mean: float  #: mean of the finite values (NaN when there is none)
    std: float  #: their sample standard deviation, n - 1 (NaN for fewer than two)
    n: int  #: number of finite values used
    nan: int  #: NaN values left out
    inf: int  #: +inf and -inf values left out


def finite_summary(values: Any) -> FiniteSummary:
    """Mean and sample std of one column of per-pair values over its finite values; NaN and ±inf counted apart.

    The one rule by which the evaluation handlers average a column over the pairs (the means that
    :class:`~mtreg_monai.handlers.RegistrationMetricsHandler` logs in ``engine.state.metrics`` and the summary of
    :class:`~mtreg_monai.handlers.RegistrationReportHandler`), so the two always agree. A NaN is a label absent
    from both label maps (no value); an ``inf`` is an ASD of a label present in only one map (the organ was lost,
    its Dice 0 is averaged): both are left out of the mean, so one lost organ does not make the run's mean ASD
    infinite, and are counted, so they are not hidden either.

    Args:
        values: the column, any shape (a tensor, an array or a sequence of numbers); it is flattened.

    Returns:
        :class:`FiniteSummary` ``(mean, std, n, nan, inf)``.

    Example::

        >>> finite_summary([1.0, 3.0, float("nan"), float("inf")])
        FiniteSummary(mean=2.0, std=1.4142135623730951, n=2, nan=1, inf=1)
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    col = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = col[np.isfinite(col)]
    mean = float(finite.mean()) if finite.size else float("nan")
    std = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return FiniteSummary(mean, std, int(finite.size), int(np.isnan(col).sum()), int(np.isinf(col).sum()))


_AGGREGATE_REDUCTIONS = {
    "mean": MetricReduction.MEAN_BATCH,
    "mean_batch": MetricReduction.MEAN_BATCH,
    "sum": MetricReduction.SUM_BATCH,
    "sum_batch": MetricReduction.SUM_BATCH,
    "none": MetricReduction.NONE,
}


class RegistrationMetric(CumulativeIterationMetric):
    """Cumulative Table-1 metrics of a registration: per-label Dice and ASD (mm), folding %, std of |J|.

    Xu et al., MICCAI 2022, Table 1.  Each call computes :func:`compute_registration_metrics` for a batch
    (``y_pred``: warped moving label map, ``y``: fixed label map, keyword ``ddf``: the displacement) and buffers
    one row of :attr:`keys` per pair; :meth:`aggregate` returns a dict key -> value reduced over the pairs
    (NaN skipped, as MONAI's metrics do).

    Args:
        label_names: label value -> name (default Learn2Reg AbdomenMRCT: liver, spleen, right/left kidney).
        spacing: voxel size in mm, one number or one per spatial axis (ASD only); a ``spacing=`` keyword at
            call time overrides it for that batch.
        jacobian_metrics: Jacobian columns, among ``"folding_percent"``, ``"jacobian_std"``,
            ``"log_jacobian_std"``; ``()`` for overlap only (then ``ddf`` is not needed).
        reduction: ``"mean"`` (default), ``"sum"`` over the pairs, or ``"none"`` (each column as ``(N,)``).
        get_not_nans: whether :meth:`aggregate` also returns, per key, the count of not-NaN values.

    Example::

        >>> metric = RegistrationMetric(label_names={1: "liver"})
        >>> lab = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
        >>> lab[..., 4:10, 4:10, 4:10] = 1
        >>> _ = metric(lab, lab, ddf=torch.zeros(2, 3, 16, 16, 16))
        >>> metric.aggregate()["dice_liver"]
        tensor(1.)
    """

    def __init__(
        self,
        label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES,
        spacing: float | Sequence[float] = 1.0,
        jacobian_metrics: Sequence[str] = DEFAULT_JACOBIAN_METRICS,
        reduction: MetricReduction | str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.label_names = dict(check_label_names(label_names))
        self.jacobian_metrics = tuple(jacobian_metrics)
        self.keys = registration_metric_keys(self.label_names, self.jacobian_metrics)
        self.spacing = spacing
        self.reduction = look_up_option(str(reduction), _AGGREGATE_REDUCTIONS)
        self.get_not_nans = get_not_nans

    def _compute_tensor(  # type: ignore[override]
        self,
        y_pred: torch.Tensor,
        y: torch.Tensor | None = None,
        ddf: torch.Tensor | None = None,
        spacing: float | Sequence[float] | None = None,
        jacobian_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            y_pred: warped moving label map ``(B, 1, H, W, D)``, integer values.
            y: fixed label map ``(B, 1, H, W, D)``.
            ddf: displacement ``(B, 3, H, W, D)``, voxel units, warped(x) = moving(x + ddf(x)); required unless
                ``jacobian_metrics`` is empty.
            spacing: voxel size in mm for this batch (default: the constructor's).
            jacobian_mask: optional region for the Jacobian figures.

        Returns:
            ``(B, K)`` rows in the order of :attr:`keys`.

        Raises:
            ValueError: when ``y`` or a needed ``ddf`` is missing, and as :func:`compute_registration_metrics`.
        """
        if y is None:
            raise ValueError("RegistrationMetric needs y (the fixed label map), got None.")
        if ddf is None:
            if self.jacobian_metrics:
                raise ValueError(
                    f"RegistrationMetric needs ddf for jacobian_metrics={self.jacobian_metrics}, got None "
                    "(pass ddf=..., or jacobian_metrics=() for overlap only)."
                )
            ddf = torch.zeros((y_pred.shape[0], y_pred.ndim - 2, *y_pred.shape[2:]), device=y_pred.device)
        with torch.no_grad():
            out = compute_registration_metrics(
                y_pred,
                y,
                ddf.detach(),
                label_names=self.label_names,
                spacing=self.spacing if spacing is None else spacing,
                jacobian_metrics=self.jacobian_metrics,
                jacobian_mask=jacobian_mask,
            )
        return torch.stack([out[k].float() for k in self.keys], dim=1)

    def _compute_list(self, y_pred: Any, y: Any = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """List mode: ``y_pred``/``y`` lists of ``(1, H, W, D)`` maps; ``ddf`` and ``jacobian_mask`` as lists too."""
        if y is None:
            raise ValueError("RegistrationMetric needs y (the fixed label maps), got None.")
        if len(y_pred) != len(y):
            raise ValueError(f"y_pred and y must have the same length, got {len(y_pred)} and {len(y)}.")
        n = len(y_pred)
        ddfs = _split_per_item(kwargs.pop("ddf", None), n, "ddf")
        masks = _split_per_item(kwargs.pop("jacobian_mask", None), n, "jacobian_mask")
        rows = [
            self._compute_tensor(p.detach().unsqueeze(0), t.detach().unsqueeze(0), ddf=d, jacobian_mask=m, **kwargs)
            for p, t, d, m in zip(y_pred, y, ddfs, masks)
        ]
        return torch.cat(rows, dim=0)

    def aggregate(  # type: ignore[override]
        self, reduction: MetricReduction | str | None = None
    ) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Reduce the buffered rows per column (NaN skipped; ``inf`` kept).

        Args:
            reduction: ``"mean"``, ``"sum"`` or ``"none"``; overrides the constructor's when given.

        Returns:
            dict key -> scalar tensor (``(N,)`` for ``"none"``), and with ``get_not_nans`` also dict key -> count
            of not-NaN values.

        Raises:
            ValueError: when nothing has been buffered, or for an unknown ``reduction``.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"RegistrationMetric has no buffered values to aggregate, got {type(data).__name__}.")
        red = self.reduction if reduction is None else look_up_option(str(reduction), _AGGREGATE_REDUCTIONS)
        f, not_nans = do_metric_reduction(data, red)
        if red == MetricReduction.NONE:
            not_nans = (~torch.isnan(data)).sum(dim=0).float()
            values = {k: f[:, i] for i, k in enumerate(self.keys)}
        else:
            # MONAI reduces a column with no valid value to 0; a mean of nothing is NaN
            f = torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))
            values = {k: f[i] for i, k in enumerate(self.keys)}
        counts = {k: not_nans[i] for i, k in enumerate(self.keys)}
        return (values, counts) if self.get_not_nans else values
