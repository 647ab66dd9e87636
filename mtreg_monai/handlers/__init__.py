"""Ignite handlers: mean teacher, MC-dropout uncertainty, regularisation weights, metrics, reports, writers, figures."""

from __future__ import annotations

from .figures import RegistrationFigureHandler, WeightCurveHandler, save_pair_figure, save_weight_curves
from .metrics import RegistrationMetricsHandler, registration_metric_inputs, spacing_from_affine
from .report import RegistrationReportHandler, format_mean_std, summarise_columns
from .teacher import MeanTeacherHandler
from .uncertainty import MCUncertaintyHandler, coefficient_of_variation, mc_predictions
from .weighting import AdaptiveWeightHandler, RandomRegWeightHandler, uncertain_fraction
from .writer import RAS_TO_LPS, RegistrationWriter, ddf_to_world

__all__ = [
    "AdaptiveWeightHandler",
    "coefficient_of_variation",
    "ddf_to_world",
    "format_mean_std",
    "mc_predictions",
    "MCUncertaintyHandler",
    "MeanTeacherHandler",
    "RandomRegWeightHandler",
    "RAS_TO_LPS",
    "registration_metric_inputs",
    "RegistrationFigureHandler",
    "RegistrationMetricsHandler",
    "RegistrationReportHandler",
    "RegistrationWriter",
    "save_pair_figure",
    "save_weight_curves",
    "spacing_from_affine",
    "summarise_columns",
    "uncertain_fraction",
    "WeightCurveHandler",
]
