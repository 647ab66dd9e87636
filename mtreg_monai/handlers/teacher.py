"""Mean teacher: an exponential moving average of the student, through Ignite's ``EMAHandler``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from mtreg_monai.engines.utils import RegistrationKeys

__all__ = ["MeanTeacherHandler"]


class MeanTeacherHandler(EMAHandler):
    """
    Keeps the mean teacher ``theta'_k = alpha * theta'_{k-1} + (1 - alpha) * theta_k`` after every iteration.

    A thin configuration of Ignite's :class:`~ignite.handlers.EMAHandler`: Ignite's ``momentum`` is the weight of
    the online model, so ``momentum = 1 - alpha`` (the paper's alpha = 0.99 is ``momentum=0.01``). The teacher is
    ``self.ema_model`` (also :attr:`teacher`): a deep copy of the student taken at construction, in eval mode,
    with parameters detached (``requires_grad=False``), so no gradient can reach it. No momentum warm-up is used
    (Ignite 0.5.5's warm-up writes to the default state name whatever ``name`` is given).

    The update is skipped for an iteration whose ``engine.state.output["nonfinite"]`` is true (the trainer skipped
    the student's step). Put ``self.ema_model`` (or this handler, which has ``state_dict``/``load_state_dict``) in
    the checkpoint's ``save_dict``: otherwise a resumed run silently restarts the teacher from the student.

    Args:
        model: the student (``DistributedDataParallel`` is unwrapped by Ignite).
        alpha: EMA decay, in (0, 1).
        handle_buffers: Ignite's buffer policy, ``"copy"`` (default), ``"update"`` or ``"ema_train"``.
        event: when to update, default ``Events.ITERATION_COMPLETED`` (after the optimiser step).

    Example::

        teacher_handler = MeanTeacherHandler(student, alpha=0.99)
        teacher_handler.attach(trainer)
        teacher = teacher_handler.teacher
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 0.99,
        handle_buffers: str = "copy",
        event: Any = Events.ITERATION_COMPLETED,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}.")
        super().__init__(model, momentum=1.0 - float(alpha), handle_buffers=handle_buffers)
        self.alpha = float(alpha)
        self.event = event

    @property
    def teacher(self) -> nn.Module:
        """The EMA model."""
        return self.ema_model

    def attach(
        self, engine: Engine, name: str = "ema_momentum", warn_if_exists: bool = False, event: Any = None
    ) -> None:  # type: ignore[override]
        """Register the update for ``event`` (default: the constructor's) unless already attached."""
        if not engine.has_event_handler(self._update_ema_model, event or self.event):
            super().attach(engine, name=name, warn_if_exists=warn_if_exists, event=event or self.event)

    def _update_ema_model(self, engine: Engine, name: str) -> None:
        output = engine.state.output
        if isinstance(output, Mapping) and bool(output.get(RegistrationKeys.NONFINITE, False)):
            return
        super()._update_ema_model(engine, name)

    def state_dict(self) -> dict:
        """The teacher's weights."""
        return self.ema_model.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load the teacher's weights."""
        self.ema_model.load_state_dict(state_dict)
