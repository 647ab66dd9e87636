"""Ignite handlers: mean teacher, MC-dropout uncertainty, adaptive and sampled regularisation weights."""

from __future__ import annotations

from .figures import RegistrationFigureHandler, WeightCurveHandler, save_pair_figure, save_weight_curves
from .metrics import RegistrationMetricsHandler, registration_metric_inputs, spacing_from_affine
from .report import RegistrationReportHandler, format_mean_std, summarise_columns
from .teacher import MeanTeacherHandler
from .uncertainty import MCUncertaintyHandler, coefficient_of_variation, mc_predictions
from .writer import RAS_TO_LPS, RegistrationWriter, ddf_to_world
from .weighting import AdaptiveWeightHandler, RandomRegWeightHandler, uncertain_fraction

__all__ = [
    "RAS_TO_LPS",
    "RegistrationWriter",
    "ddf_to_world",
    "RegistrationFigureHandler",
    "RegistrationMetricsHandler",
    "RegistrationReportHandler",
    "WeightCurveHandler",
    "registration_metric_inputs",
    "save_pair_figure",
    "save_weight_curves",
    "spacing_from_affine",
    "AdaptiveWeightHandler",
    "MCUncertaintyHandler",
    "MeanTeacherHandler",
    "RandomRegWeightHandler",
    "coefficient_of_variation",
    "mc_predictions",
    "uncertain_fraction",
    "format_mean_std",
    "summarise_columns",
]
