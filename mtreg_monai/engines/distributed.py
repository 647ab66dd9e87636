"""Helpers for multi-process (``DistributedDataParallel``) training that ``ignite.distributed`` lacks.

Used by the bundle's ``configs/multi_gpu_train.json`` (merged over ``train.json`` and started with ``torchrun``).
Ranks, world size and collectives come from ``ignite.distributed`` (``idist.get_rank()``,
``idist.get_world_size()``, ``idist.get_local_rank()``, ``idist.barrier()``, ``idist.all_reduce()``); this module
adds a staged "rank 0 first" section, an object broadcast that keeps any path intact, and a guard for non-finite
losses. Every function is a no-op (or returns the single-process answer) in one process, so the same code runs
without ``torchrun``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from mtreg_monai.engines.utils import RegistrationKeys

__all__ = [
    "DistributedNonFiniteGuard",
    "broadcast_object",
    "rank_zero_first",
    "rank_zero_first_begin",
    "rank_zero_first_end",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)

# stages of rank_zero_first: 0 global rank 0; 1 the first process (local rank 0) of every other node; 2 the rest
_NUM_STAGES = 3


def _stage() -> int:
    if idist.get_rank() == 0:
        return 0
    return 1 if idist.get_local_rank() == 0 else 2


def rank_zero_first_begin() -> None:
    """
    Start a section that global rank 0 runs first, then the first process of every other node, then the rest.

    Call it before the section and :func:`rank_zero_first_end` after it, in every process (each process calls
    ``idist.barrier()`` exactly ``2`` times over the pair). Meant for idempotent work on files, such as generating
    a dataset with ``reuse_existing=True``: with a shared file system rank 0 writes it and every other process
    finds it complete; without one, one process per node writes its node's copy while the node's others wait.
    Ignite's ``idist.one_rank_first`` has one stage (one rank, or the first of each node) and is a context
    manager, which a config's ``initialize`` list of expressions cannot open and close.

    If the section raises in one process the others keep waiting at the barrier; ``torchrun`` stops them when
    that process exits, rather than letting them run the section concurrently.
    """
    if idist.get_world_size() == 1:
        return
    stage = _stage()
    for barrier in range(_NUM_STAGES - 1):
        if stage > barrier:
            idist.barrier()


def rank_zero_first_end() -> None:
    """End the section begun with :func:`rank_zero_first_begin` (release the processes of the next stages)."""
    if idist.get_world_size() == 1:
        return
    stage = _stage()
    for barrier in range(_NUM_STAGES - 1):
        if stage <= barrier:
            idist.barrier()


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
    in one process.

    The bundle broadcasts the path of the checkpoint to resume from, so every rank loads the same file (and
    fails loudly where it is missing) rather than some ranks silently starting afresh: ``DistributedDataParallel``
    synchronises the weights only when it is built, before the checkpoint is loaded. Ignite's
    ``idist.broadcast(..., safe_mode=True)`` is not used: in Ignite 0.5.5 it sizes a string by its characters but
    sends its UTF-8 bytes, so a path with a non-ASCII character arrives cut short and ending in a stray byte.

    Args:
        obj: a picklable object.
        src: the source rank.

    Raises:
        ValueError: when ``src`` is not a rank of the process group.
    """
    world_size = idist.get_world_size()
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world_size:
        raise ValueError(f"src must be a rank in [0, {world_size}), got {src!r}.")
    if world_size == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


class DistributedNonFiniteGuard:
    """
    Makes every rank skip a training step when the loss of any rank is not finite.

    :class:`~mtreg_monai.engines.RegistrationTrainer` skips backward, optimiser step and teacher update when its
    loss is not finite. Under ``DistributedDataParallel`` a rank that skips backward leaves the others waiting in
    the gradient all-reduce until the collective times out. At ``IterationEvents.LOSS_COMPLETED`` this handler
    all-reduces a finite flag (one integer per iteration, ``idist.all_reduce(..., op="MIN")``) and, when any rank's
    loss is not finite, sets this rank's loss to NaN in place, so all ranks take the trainer's skip path together
    and the students stay identical. In one process it does nothing.

    Example::

        DistributedNonFiniteGuard().attach(trainer)
    """

    def attach(self, engine: Engine) -> None:
        """Run at ``IterationEvents.LOSS_COMPLETED`` (registered by MONAI's trainers)."""
        if not engine.has_event_handler(self, IterationEvents.LOSS_COMPLETED):
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_world_size() == 1:
            return
        output = engine.state.output
        loss = output.get(RegistrationKeys.LOSS) if isinstance(output, Mapping) else None
        if not isinstance(loss, torch.Tensor):
            raise TypeError(
                f"engine.state.output['{RegistrationKeys.LOSS}'] must be a tensor at LOSS_COMPLETED, "
                f"got {type(loss).__name__}."
            )
        finite = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
        flag = idist.all_reduce(finite.clone(), op="MIN")
        if int(flag.item()) == 0 and bool(finite.item()):
            with torch.no_grad():
                loss.fill_(float("nan"))
            logger.warning(
                "Rank %d: a non-finite loss on another rank at iteration %d: every rank skips this step.",
                idist.get_rank(),
                engine.state.iteration,
            )
