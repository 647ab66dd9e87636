"""Engines: the registration trainer and evaluator, their output keys, events and batch preparation."""

from __future__ import annotations

from .evaluator import RegistrationEvaluator
from .trainer import RegistrationTrainer
from .utils import LOGGED_TERMS, PrepareRegistrationBatch, RegistrationEvents, RegistrationKeys, loss_terms, per_pair

__all__ = [
    "LOGGED_TERMS",
    "PrepareRegistrationBatch",
    "RegistrationEvaluator",
    "RegistrationEvents",
    "RegistrationKeys",
    "RegistrationTrainer",
    "loss_terms",
    "per_pair",
]
