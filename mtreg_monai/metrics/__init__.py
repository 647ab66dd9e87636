"""Registration metrics of Xu et al., MICCAI 2022, Table 1: per-organ Dice and ASD, folding %, std of |J|.

See ``docs/metrics.md`` for definitions and conventions.
"""

from __future__ import annotations

from mtreg_monai.metrics.jacobian import (
    JACOBIAN_METRICS,
    JacobianMetric,
    compute_folding_percentage,
    compute_jacobian_metric,
    compute_jacobian_std,
    compute_log_jacobian_std,
    jacobian_determinant,
)
from mtreg_monai.metrics.overlap import (
    DEFAULT_LABEL_NAMES,
    check_label_maps,
    check_label_names,
    compute_label_asd,
    compute_label_dice,
    compute_label_overlap,
)
from mtreg_monai.metrics.registration import (
    DEFAULT_JACOBIAN_METRICS,
    FiniteSummary,
    RegistrationMetric,
    compute_registration_metrics,
    finite_summary,
    registration_metric_keys,
)
from mtreg_monai.metrics.uncertainty_error import (
    CHANNEL_REDUCTIONS,
    CalibrationCurve,
    UncertaintyErrorMetric,
    calibration_curve,
    rank_average,
    registration_error,
    spearman_correlation,
)

__all__ = [
    "JACOBIAN_METRICS",
    "JacobianMetric",
    "compute_folding_percentage",
    "compute_jacobian_metric",
    "compute_jacobian_std",
    "compute_log_jacobian_std",
    "jacobian_determinant",
    "DEFAULT_JACOBIAN_METRICS",
    "DEFAULT_LABEL_NAMES",
    "FiniteSummary",
    "RegistrationMetric",
    "check_label_maps",
    "check_label_names",
    "compute_label_asd",
    "compute_label_dice",
    "compute_label_overlap",
    "compute_registration_metrics",
    "finite_summary",
    "registration_metric_keys",
    "CHANNEL_REDUCTIONS",
    "CalibrationCurve",
    "UncertaintyErrorMetric",
    "calibration_curve",
    "rank_average",
    "registration_error",
    "spearman_correlation",
]
