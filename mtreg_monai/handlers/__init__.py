"""Ignite handlers: mean teacher, MC-dropout uncertainty, regularisation weights, metrics, reports, writers, figures."""

from __future__ import annotations

from .checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckpointError,
    SafeCheckpointLoader,
    load_checkpoint,
    non_finite_entries,
)
from .failures import FAILURE_COLUMNS, FailureReportHandler, record_failure
from .figures import RegistrationFigureHandler, WeightCurveHandler, save_pair_figure, save_weight_curves
from .metrics import RegistrationMetricsHandler, registration_metric_inputs, spacing_from_affine
from .report import RegistrationReportHandler, format_mean_std, summarise_columns
from .reseed import ReseedHandler, derived_seed
from .teacher import MeanTeacherHandler
from .uncertainty import MCUncertaintyHandler, coefficient_of_variation, mc_predictions
from .weighting import AdaptiveWeightHandler, RandomRegWeightHandler, uncertain_fraction
from .writer import RAS_TO_LPS, RegistrationWriter, ddf_to_world

__all__ = [
    "AdaptiveWeightHandler",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckpointError",
    "coefficient_of_variation",
    "ddf_to_world",
    "derived_seed",
    "FAILURE_COLUMNS",
    "FailureReportHandler",
    "format_mean_std",
    "load_checkpoint",
    "mc_predictions",
    "MCUncertaintyHandler",
    "MeanTeacherHandler",
    "non_finite_entries",
    "RandomRegWeightHandler",
    "RAS_TO_LPS",
    "record_failure",
    "registration_metric_inputs",
    "RegistrationFigureHandler",
    "RegistrationMetricsHandler",
    "RegistrationReportHandler",
    "RegistrationWriter",
    "ReseedHandler",
    "SafeCheckpointLoader",
    "save_pair_figure",
    "save_weight_curves",
    "spacing_from_affine",
    "summarise_columns",
    "uncertain_fraction",
    "WeightCurveHandler",
]
