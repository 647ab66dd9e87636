"""Reseeds every random generator from (seed, epoch) and (seed, iteration), so a resumed run replays exactly."""

from __future__ import annotations

import random

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["ReseedHandler", "derived_seed"]

_EPOCH, _ITERATION = 1, 2


def derived_seed(seed: int, kind: int, index: int) -> int:
    """A 32-bit seed that depends only on ``(seed, kind, index)`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed), int(kind), int(index)]).generate_state(1)[0])


def _seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device


class ReseedHandler:
    """
    Makes the randomness of training a function of the position in training only, not of the history.

    At ``EPOCH_STARTED`` (before Ignite creates the epoch's data iterator, so the shuffled order of the pairs) it seeds
    Python's ``random``, NumPy and torch from ``(seed, epoch)``; at ``ITERATION_STARTED`` (dropout masks, MC samples,
    CIR-DM weights) from ``(seed, iteration)``. A run resumed from a checkpoint (weights, optimiser, scheduler, teacher,
    epoch and iteration) therefore draws the same numbers as the uninterrupted run from there on: the losses after
    the resume are equal to the uninterrupted run's (bitwise on the CPU with the same thread count), whatever
    happened before (validations, a kill in the middle of an epoch, a different process).

    Args:
        seed: the base seed, e.g. the bundle's ``seed``.
    """

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.epoch_started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        if not engine.has_event_handler(self.iteration_started, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self.iteration_started)

    def epoch_started(self, engine: Engine) -> None:
        _seed_all(derived_seed(self.seed, _EPOCH, engine.state.epoch))

    def iteration_started(self, engine: Engine) -> None:
        _seed_all(derived_seed(self.seed, _ITERATION, engine.state.iteration))
