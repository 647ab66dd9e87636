"""Ignite metric of the registration evaluator: the paper's Table-1 columns per pair and their means."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing

from mtreg_monai.engines.utils import RegistrationKeys
from mtreg_monai.metrics import DEFAULT_JACOBIAN_METRICS, DEFAULT_LABEL_NAMES, RegistrationMetric, finite_summary

__all__ = ["RegistrationMetricsHandler", "registration_metric_inputs"]

Keys = RegistrationKeys
logger = logging.getLogger(__name__)


def registration_metric_inputs(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(warped_label, fixed_label, ddf)`` from the evaluator's output dict (the default ``output_transform``)."""
    missing = [str(k) for k in (Keys.WARPED_LABEL, Keys.FIXED_LABEL, Keys.DDF) if k not in output]
    if missing:
        raise KeyError(f"The evaluator's output has no {missing}: the pairs need 'moving_label' and 'fixed_label'.")
    return output[Keys.WARPED_LABEL], output[Keys.FIXED_LABEL], output[Keys.DDF]


class RegistrationMetricsHandler(Metric):
    """
    Ignite metric over an evaluation run: per-organ Dice and ASD (mm), % non-positive Jacobian, std of |J|.

    It wraps :class:`~mtreg_monai.metrics.RegistrationMetric`. When the run completes, every column mean is put
    into ``engine.state.metrics`` under its own name (``dice_liver``, ..., ``asd_mean``, ``folding_percent``,
    ``jacobian_std``), the metric's own name gets the ``key`` column (by default ``dice_mean``, so it can serve as
    the evaluator's ``key_val_metric`` for the best checkpoint), and the per-pair rows are kept in
    ``engine.state.metric_details[name]`` as a (num_pairs, num_columns) tensor with the columns in
    :attr:`keys`.

    The column names, in order, are put in ``engine.state.metric_columns[name]`` (what
    :class:`~mtreg_monai.handlers.RegistrationReportHandler` reads when it is given no ``columns``).

    Each mean is :func:`~mtreg_monai.metrics.finite_summary`'s: over the pairs with a finite value, NaN and ±inf
    left out (a label absent from both maps, an organ lost by the registration), the same rule as the report's.
    A column with values left out as inf is named in a logged warning with their count.

    The voxel spacing of the ASD is read from the fixed label's affine when it is a ``MetaTensor``
    (``PrepareRegistrationBatch(keep_meta=True)``; MONAI's ``affine_to_spacing`` of the batch's first item), else
    ``spacing`` is used.

    Args:
        label_names: label value -> name, e.g. ``{1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"}``.
        spacing: default voxel size in mm.
        jacobian_metrics: Jacobian columns.
        key: the column returned as this metric's value.
        output_transform: maps the evaluator output to ``(warped_label, fixed_label, ddf)``.
        device: Ignite's metric device.
    """

    def __init__(
        self,
        label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES,
        spacing: float | Sequence[float] = 1.0,
        jacobian_metrics: Sequence[str] = DEFAULT_JACOBIAN_METRICS,
        key: str = "dice_mean",
        output_transform: Callable = registration_metric_inputs,
        device: str | torch.device = "cpu",
    ) -> None:
        self.metric = RegistrationMetric(
            label_names={int(k): v for k, v in label_names.items()},
            spacing=spacing,
            jacobian_metrics=jacobian_metrics,
            reduction="none",
        )
        if key not in self.metric.keys:
            raise ValueError(f"key must be one of {self.metric.keys}, got {key!r}.")
        self.key = key
        self.spacing = spacing
        super().__init__(output_transform=output_transform, device=device)

    @property
    def keys(self) -> list[str]:
        """Column names, in order."""
        return list(self.metric.keys)

    def reset(self) -> None:
        self.metric.reset()

    def update(self, output: Sequence[torch.Tensor]) -> None:
        warped_label, fixed_label, ddf = output
        spacing = self.spacing
        if isinstance(fixed_label, MetaTensor) and fixed_label.affine is not None:
            affine = fixed_label.affine[0] if fixed_label.affine.ndim == 3 else fixed_label.affine
            spacing = affine_to_spacing(affine, r=fixed_label.ndim - 2, suppress_zeros=False).tolist()
        self.metric(
            torch.as_tensor(warped_label), torch.as_tensor(fixed_label), ddf=torch.as_tensor(ddf), spacing=spacing
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-pair rows: ``{column: (num_pairs,) tensor}``."""
        rows = self.metric.aggregate()
        return {k: torch.as_tensor(v).float().reshape(-1).cpu() for k, v in rows.items()}

    def completed(self, engine: Engine, name: str) -> None:
        rows = self.compute()
        summaries = {k: finite_summary(v) for k, v in rows.items()}
        engine.state.metrics.update({k: s.mean for k, s in summaries.items()})
        engine.state.metrics[name] = engine.state.metrics[self.key]
        lost = {k: s.inf for k, s in summaries.items() if s.inf}
        if lost:
            logger.warning(
                "%s: infinite values (an organ in only one of the warped and fixed label maps) left out of the "
                "means, per column: %s.",
                name,
                lost,
            )
        if getattr(engine.state, "metric_columns", None) is None:
            engine.state.metric_columns = {}
        engine.state.metric_columns[name] = self.keys
        if not hasattr(engine.state, "metric_details") or engine.state.metric_details is None:
            engine.state.metric_details = {}
        engine.state.metric_details[name] = torch.stack([rows[k] for k in self.keys], dim=1) if rows else None
