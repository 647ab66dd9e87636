"""Tests of mtreg_monai/handlers/validation.py: validation every interval and after the last epoch."""

from __future__ import annotations

import pytest
from ignite.engine import Engine

from mtreg_monai.handlers import FinalEpochValidationHandler


class _RecordingValidator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _validated_epochs(max_epochs: int, interval: int, **kwargs) -> list[int]:
    handler = FinalEpochValidationHandler(interval, **kwargs)
    handler.validator = _RecordingValidator()  # the isinstance(Evaluator) check is only in __init__/set_validator
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run(range(2), max_epochs=max_epochs)
    return handler.validator.epochs


@pytest.mark.parametrize(
    "max_epochs, interval, expected",
    [(7, 3, [3, 6, 7]), (6, 3, [3, 6]), (1, 5, [1]), (20, 2, list(range(2, 21, 2)))],
)
def test_validates_every_interval_and_once_after_the_last_epoch(max_epochs, interval, expected):
    assert _validated_epochs(max_epochs, interval) == expected


def test_without_exec_at_end_it_is_monais_schedule():
    assert _validated_epochs(7, 3, exec_at_end=False) == [3, 6]
    assert _validated_epochs(4, 3, exec_at_start=True) == [0, 3, 4]


def test_a_resumed_run_with_more_epochs_validates_at_its_new_end():
    handler = FinalEpochValidationHandler(3)
    handler.validator = _RecordingValidator()
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run(range(2), max_epochs=4)
    trainer.run(range(2), max_epochs=5)  # Ignite continues from epoch 4
    assert handler.validator.epochs == [3, 4, 5]


@pytest.mark.parametrize("interval", [0, -1, 1.5, True])
def test_rejects_a_bad_interval(interval):
    with pytest.raises(ValueError, match="interval"):
        FinalEpochValidationHandler(interval)
