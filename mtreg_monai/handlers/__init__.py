"""Ignite handlers: mean teacher, MC-dropout uncertainty, regularisation weights, metrics, reports, writers, figures."""

from __future__ import annotations

from .checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckpointError,
    SafeCheckpointLoader,
    engine_progress,
    load_checkpoint,
    non_finite_entries,
)
from .failures import FAILURE_COLUMNS, FailureReportHandler, record_failure
from .figures import RegistrationFigureHandler, WeightCurveHandler, save_pair_figure, save_weight_curves
from .metrics import RegistrationMetricsHandler, registration_metric_inputs
from .quality import QC_COLUMNS, QC_MC_COLUMNS, QualityControlHandler
from .report import RegistrationReportHandler, format_mean_std, summarise_columns
from .reseed import ReseedHandler, derived_seed
from .run_identity import (
    RunIdentity,
    RunIdentityError,
    check_network,
    checkpoint_identity,
    datalist_identity,
    fingerprint_differences,
    fingerprint_digest,
    network_definition,
)
from .teacher import MeanTeacherHandler
from .uncertainty import MCUncertaintyHandler, coefficient_of_variation, mc_predictions
from .validation import FinalEpochValidationHandler
from .weighting import AdaptiveWeightHandler, RandomRegWeightHandler, uncertain_fraction
from .writer import RAS_TO_LPS, RegistrationWriter, ddf_to_world

__all__ = [
    "AdaptiveWeightHandler",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "check_network",
    "CheckpointError",
    "checkpoint_identity",
    "coefficient_of_variation",
    "datalist_identity",
    "ddf_to_world",
    "derived_seed",
    "engine_progress",
    "FAILURE_COLUMNS",
    "FailureReportHandler",
    "FinalEpochValidationHandler",
    "fingerprint_differences",
    "fingerprint_digest",
    "format_mean_std",
    "load_checkpoint",
    "mc_predictions",
    "MCUncertaintyHandler",
    "MeanTeacherHandler",
    "network_definition",
    "non_finite_entries",
    "QC_COLUMNS",
    "QC_MC_COLUMNS",
    "QualityControlHandler",
    "RandomRegWeightHandler",
    "RAS_TO_LPS",
    "record_failure",
    "registration_metric_inputs",
    "RegistrationFigureHandler",
    "RegistrationMetricsHandler",
    "RegistrationReportHandler",
    "RegistrationWriter",
    "ReseedHandler",
    "RunIdentity",
    "RunIdentityError",
    "SafeCheckpointLoader",
    "save_pair_figure",
    "save_weight_curves",
    "summarise_columns",
    "uncertain_fraction",
    "WeightCurveHandler",
]
