"""Mean teacher: an exponential moving average of the student, through Ignite's ``EMAHandler``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from mtreg_monai.engines.utils import RegistrationKeys

__all__ = ["MeanTeacherHandler"]

logger = logging.getLogger(__name__)


class MeanTeacherHandler(EMAHandler):
    """
    Keeps the mean teacher ``theta'_k = alpha_k * theta'_{k-1} + (1 - alpha_k) * theta_k`` after every iteration.

    A thin configuration of Ignite's :class:`~ignite.handlers.EMAHandler`: Ignite's ``momentum`` is the weight of
    the online model, so ``momentum = 1 - alpha`` (the paper's alpha = 0.99 is ``momentum=0.01``). The teacher is
    ``self.ema_model`` (also :attr:`teacher`): a deep copy of the student taken at construction, in eval mode,
    with parameters detached (``requires_grad=False``), so no gradient can reach it.

    ``alpha_k`` is ``alpha`` at every update (the paper) unless ``warmup`` is true: then it follows the Mean
    Teacher reference ramp (Tarvainen & Valpola, 2017) ``alpha_k = min(1 - 1/(k + 1), alpha)``, i.e. Ignite's
    ``momentum_k = max(1/(k + 1), 1 - alpha)`` = 1, 1/2, 1/3, ... until it reaches ``1 - alpha``, where ``k`` is
    :attr:`num_updates`, the number of teacher updates done before this one. The first update (``k = 0``) makes
    the teacher a copy of the student; while ``momentum_k = 1/(k + 1)`` the teacher is the plain average of all
    the student's states so far; once ``1/(k + 1) <= 1 - alpha`` (from the 100th update for alpha = 0.99) it is
    the paper's EMA. Ignite's own ``momentum_warmup`` is not used (in Ignite 0.5.5 it writes to the default state name
    whatever ``name`` is given, and it counts engine iterations, skipped ones included). The momentum of the last
    update is on ``engine.state.<name>`` (default ``engine.state.ema_momentum``).

    The update is skipped, and not counted, for an iteration whose ``engine.state.output["nonfinite"]`` is true
    (the trainer skipped the student's step). Put this handler in the checkpoint's ``save_dict``: its
    :meth:`state_dict` holds the teacher's weights and :attr:`num_updates`, so a resumed run continues the
    warm-up where it stopped; otherwise a resumed run silently restarts the teacher from the student.

    Args:
        model: the student (``DistributedDataParallel`` is unwrapped by Ignite).
        alpha: EMA decay after the warm-up, in (0, 1).
        handle_buffers: Ignite's buffer policy, ``"copy"`` (default), ``"update"`` or ``"ema_train"``.
        event: when to update, default ``Events.ITERATION_COMPLETED`` (after the optimiser step).
        warmup: ramp ``alpha_k`` up as above (a deviation from the paper, which states a constant alpha);
            default ``False``.

    Example::

        teacher_handler = MeanTeacherHandler(student, alpha=0.99, warmup=True)
        teacher_handler.attach(trainer)
        teacher = teacher_handler.teacher
        save_dict = {"model": student, "teacher": teacher_handler}  # weights and the update count
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 0.99,
        handle_buffers: str = "copy",
        event: Any = Events.ITERATION_COMPLETED,
        warmup: bool = False,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}.")
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be a bool, got {type(warmup).__name__} ({warmup!r}).")
        super().__init__(model, momentum=1.0 - float(alpha), handle_buffers=handle_buffers)
        self.alpha = float(alpha)
        self.event = event
        self.warmup = warmup
        #: number of teacher updates done (skipped non-finite iterations not counted); in :meth:`state_dict`.
        self.num_updates = 0

    @property
    def teacher(self) -> nn.Module:
        """The EMA model."""
        return self.ema_model

    def momentum_at(self, k: int) -> float:
        """
        Ignite's momentum (weight of the student) of update ``k`` (0-based): ``max(1/(k + 1), 1 - alpha)`` with
        ``warmup``, else ``1 - alpha``.
        """
        if not self.warmup:
            return self.momentum
        return max(1.0 / (k + 1), self.momentum)

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
        setattr(engine.state, name, self.momentum_at(self.num_updates))
        super()._update_ema_model(engine, name)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """``{"ema_model": the teacher's weights, "num_updates": int}``."""
        return {"ema_model": self.ema_model.state_dict(), "num_updates": self.num_updates}

    @staticmethod
    def teacher_weights(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
        """The teacher network's weights in a checkpoint's ``teacher`` entry: :meth:`state_dict`'s ``ema_model``,
        or the entry itself when it holds weights only (checkpoints of earlier versions)."""
        weights = state_dict.get("ema_model")
        return weights if isinstance(weights, Mapping) else state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """
        Load the teacher's weights and update count.

        Args:
            state_dict: as :meth:`state_dict` returns, or the teacher's weights alone (what earlier versions
                saved, the state of ``self.teacher``). The latter carries no count: the teacher is assumed trained,
                so :attr:`num_updates` is set past the warm-up (a warning is logged when ``warmup`` is on).
            strict: as :meth:`torch.nn.Module.load_state_dict`, for the weights.

        Raises:
            TypeError: ``state_dict`` is not a mapping.
            ValueError: ``num_updates`` is not an int >= 0.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}.")
        weights = self.teacher_weights(state_dict)
        if weights is not state_dict:
            count = state_dict.get("num_updates", None)
            if isinstance(count, torch.Tensor) and count.numel() == 1 and not count.is_floating_point():
                count = int(count.item())
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"state_dict['num_updates'] must be an int >= 0, got {count!r}.")
            self.ema_model.load_state_dict(weights, strict=strict)
            self.num_updates = count
            return
        # weights only (saved by an earlier version, or the state of self.teacher)
        self.ema_model.load_state_dict(weights, strict=strict)
        self.num_updates = max(self.num_updates, math.ceil(1.0 / self.momentum))  # momentum_at() == 1 - alpha
        if self.warmup:
            logger.warning(
                "MeanTeacherHandler: the loaded teacher state holds weights only (no update count); assuming a "
                "trained teacher, the EMA warm-up is treated as finished (num_updates=%d).",
                self.num_updates,
            )
