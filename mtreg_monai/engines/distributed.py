"""Helpers for multi-process (``DistributedDataParallel``) training: rank queries, ordered first runs, guards.

Used by the bundle's ``configs/multi_gpu_train.json`` (merged over ``train.json`` and started with ``torchrun``);
every function is a no-op (or returns the single-process answer) when ``torch.distributed`` is not initialised,
so the same code runs in one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from mtreg_monai.engines.utils import RegistrationKeys

__all__ = [
    "DistributedNonFiniteGuard",
    "broadcast_object",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "local_rank",
    "rank_zero_first",
    "rank_zero_first_begin",
    "rank_zero_first_end",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)

# stages of rank_zero_first: 0 global rank 0; 1 the first process (LOCAL_RANK 0) of every other node; 2 the rest
_NUM_STAGES = 3


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and its default process group initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank of this process on its node: ``LOCAL_RANK`` as set by ``torchrun``, else the global rank."""
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return get_rank()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an integer, got {value!r}.") from None


def _stage() -> int:
    if get_rank() == 0:
        return 0
    return 1 if local_rank() == 0 else 2


def rank_zero_first_begin() -> None:
    """
    Start a section that global rank 0 runs first, then the first process of every other node, then the rest.

    Call it before the section and :func:`rank_zero_first_end` after it, in every process (each process calls
    ``dist.barrier()`` exactly ``2`` times over the pair). Meant for idempotent work on files, such as generating
    a dataset with ``reuse_existing=True``: with a shared file system rank 0 writes it and every other process
    finds it complete; without one, one process per node writes its node's copy while the node's others wait.

    If the section raises in one process the others keep waiting at the barrier; ``torchrun`` stops them when
    that process exits, rather than letting them run the section concurrently.
    """
    if not is_distributed():
        return
    stage = _stage()
    for barrier in range(_NUM_STAGES - 1):
        if stage > barrier:
            dist.barrier()


def rank_zero_first_end() -> None:
    """End the section begun with :func:`rank_zero_first_begin` (release the processes of the next stages)."""
    if not is_distributed():
        return
    stage = _stage()
    for barrier in range(_NUM_STAGES - 1):
        if stage <= barrier:
            dist.barrier()


def rank_zero_first(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """
    ``fn(*args, **kwargs)`` in every process, global rank 0 first (see :func:`rank_zero_first_begin`).

    Example::

        path = rank_zero_first(make_phantom_dataset, "/data/phantom", num_pairs=40, reuse_existing=True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    rank_zero_first_begin()
    result = fn(*args, **kwargs)
    rank_zero_first_end()
    return result


def broadcast_object(obj: T, src: int = 0) -> T:
    """
    The value ``obj`` has in process ``src``, in every process (``dist.broadcast_object_list``); ``obj`` itself
    without a process group.

    The bundle broadcasts the path of the checkpoint to resume from, so every rank loads the same file (and
    fails loudly where it is missing) rather than some ranks silently starting afresh: ``DistributedDataParallel``
    synchronises the weights only when it is built, before the checkpoint is loaded.

    Args:
        obj: a picklable object.
        src: the source rank.
    """
    if not is_distributed():
        return obj
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < dist.get_world_size():
        raise ValueError(f"src must be a rank in [0, {dist.get_world_size()}), got {src!r}.")
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


class DistributedNonFiniteGuard:
    """
    Makes every rank skip a training step when the loss of any rank is not finite.

    :class:`~mtreg_monai.engines.RegistrationTrainer` skips backward, optimiser step and teacher update when its
    loss is not finite. Under ``DistributedDataParallel`` a rank that skips backward leaves the others waiting in
    the gradient all-reduce until the collective times out. At ``IterationEvents.LOSS_COMPLETED`` this handler
    all-reduces a finite flag (one integer per iteration) and, when any rank's loss is not finite, sets this rank's
    loss to NaN in place, so all ranks take the trainer's skip path together and the students stay identical.
    Without a process group it does nothing.

    Example::

        DistributedNonFiniteGuard().attach(trainer)
    """

    def attach(self, engine: Engine) -> None:
        """Run at ``IterationEvents.LOSS_COMPLETED`` (registered by MONAI's trainers)."""
        if not engine.has_event_handler(self, IterationEvents.LOSS_COMPLETED):
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_distributed():
            return
        output = engine.state.output
        loss = output.get(RegistrationKeys.LOSS) if isinstance(output, Mapping) else None
        if not isinstance(loss, torch.Tensor):
            raise TypeError(
                f"engine.state.output['{RegistrationKeys.LOSS}'] must be a tensor at LOSS_COMPLETED, "
                f"got {type(loss).__name__}."
            )
        finite = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
        flag = finite.clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag.item()) == 0 and bool(finite.item()):
            with torch.no_grad():
                loss.fill_(float("nan"))
            logger.warning(
                "Rank %d: a non-finite loss on another rank at iteration %d: every rank skips this step.",
                get_rank(),
                engine.state.iteration,
            )
