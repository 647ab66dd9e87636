"""MONAI's ``ValidationHandler`` that also validates after the last training epoch."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

__all__ = ["FinalEpochValidationHandler"]


class FinalEpochValidationHandler(ValidationHandler):
    """
    Validate every ``interval`` epochs, and after the last epoch even when ``max_epochs`` is not a multiple of
    ``interval``.

    With MONAI's :class:`~monai.handlers.ValidationHandler` a schedule of, say, 47 epochs validated every 4 has its
    last validation at epoch 44, so the last checkpoint (``model_final.pt``) has no validation figure and the
    best-validation checkpoint never considers it. Here the trigger is "epoch divisible by ``interval``, or the
    trainer's last epoch" (``engine.state.max_epochs``, so a resumed run with more epochs validates at its new end);
    the last epoch is validated once, also when it is a multiple of ``interval``. The validation runs at
    ``EPOCH_COMPLETED``, before the trainer's ``COMPLETED`` handlers (final checkpoint, reports).

    Args:
        interval: validate every ``interval`` epochs (or iterations with ``epoch_level=False``), an int >= 1.
        validator: the evaluator to run, or None and :meth:`set_validator` later.
        epoch_level: epoch-level (True) or iteration-level (False) intervals. ``exec_at_end`` needs epoch level.
        exec_at_start: also validate before training (MONAI's option).
        exec_at_end: also validate after the last epoch (True); False gives MONAI's behaviour.

    Raises:
        ValueError: when ``interval`` is not an int >= 1.
    """

    def __init__(
        self,
        interval: int,
        validator: Evaluator | None = None,
        epoch_level: bool = True,
        exec_at_start: bool = False,
        exec_at_end: bool = True,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}.")
        super().__init__(interval, validator, epoch_level, exec_at_start)
        self.exec_at_end = bool(exec_at_end)

    def attach(self, engine: Engine) -> None:
        if not (self.epoch_level and self.exec_at_end):
            super().attach(engine)
            return
        interval = self.interval

        def due(trainer: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == trainer.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
