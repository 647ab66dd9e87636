"""Checkpoints that are written atomically, never hold non-finite weights, and load only tensors.

MONAI 1.6.1's ``CheckpointSaver`` writes with ``atomic=False`` (a crash or a full disk during ``torch.save`` leaves a
corrupt file under the final name) and, like Ignite's ``Checkpoint``, deletes the previous file *before* writing
the next one. Its ``CheckpointLoader`` loads with ``weights_only=True`` but its errors do not name the file. The
classes here keep MONAI's constructors (a bundle config changes only ``_target_``) and fix those three points.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from mtreg_monai.utils import atomic_write

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckpointError",
    "engine_progress",
    "load_checkpoint",
    "non_finite_entries",
    "SafeCheckpointLoader",
]


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used: empty, truncated, corrupt, refused, or mismatched."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict:
    """
    Load a checkpoint with ``torch.load(path, map_location=map_location, weights_only=True)``, naming the file on error.

    ``weights_only=True`` unpickles only tensors, primitive types and containers, so a file carrying code (a pickle
    whose ``__reduce__`` calls a function) is refused without running anything.

    Args:
        path: the ``.pt`` file.
        map_location: as ``torch.load`` (``"cpu"``, a ``torch.device``, a dict or a callable).

    Returns:
        the checkpoint mapping (for example ``{"model": state_dict, "optimizer": state_dict, ...}``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: (a ``ValueError``) the file is not a regular file, is empty, truncated or corrupt, holds
            objects that ``weights_only`` loading refuses, or does not hold a mapping. Chained from the original error.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: '{path}'.")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path '{path}' is not a regular file.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint file '{path}' is empty (0 bytes): an interrupted or failed save?")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "GLOBAL" in detail or "global" in detail:
            raise CheckpointError(
                f"checkpoint file '{path}' was refused by weights_only loading: it references a Python object other "
                f"than tensors and plain containers ({detail.split(' was not')[0]}), which could run code if "
                "unpickled; load only files from a trusted source."
            ) from e
        raise CheckpointError(
            f"checkpoint file '{path}' ({size} bytes) is corrupt or not a PyTorch checkpoint that weights_only "
            f"loading accepts (refused without unpickling): {detail}"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ValueError, ... for bad files
        raise CheckpointError(
            f"checkpoint file '{path}' ({size} bytes) is truncated, corrupt or not a PyTorch checkpoint: "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint file '{path}' holds a {type(checkpoint).__name__}, expected a dict of state dicts."
        )
    return dict(checkpoint)


def non_finite_entries(save_dict: Mapping[str, Any], limit: int = 5) -> list[str]:
    """
    Names of floating-point tensors holding NaN or inf in the state of the objects of ``save_dict``.

    Args:
        save_dict: ``{name: object with state_dict()}`` (modules, optimisers, schedulers, engines), as given to
            :class:`AtomicCheckpointSaver`; plain mappings and tensors are accepted too.
        limit: stop after this many names.

    Returns:
        up to ``limit`` dotted names such as ``"model.conv.weight"``; empty when everything is finite.
    """
    found: list[str] = []

    def _walk(obj: Any, name: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(obj, torch.Tensor):
            if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
                found.append(name)
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                _walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                _walk(v, f"{name}.{i}")

    for key, obj in save_dict.items():
        if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            obj = obj.module
        state = obj.state_dict() if hasattr(obj, "state_dict") and callable(obj.state_dict) else obj
        _walk(state, str(key))
    return found


def engine_progress(state: Any) -> tuple[int | None, int | None]:
    """
    ``(epoch, iteration)`` of an Ignite engine's saved ``state_dict`` (which holds ``iteration`` or ``epoch``).

    Args:
        state: the ``"trainer"`` entry of a checkpoint, or anything else (then ``(None, None)``).

    Returns:
        the completed epochs and iterations, ``None`` where the state cannot tell.
    """
    if not isinstance(state, Mapping):
        return None, None
    iteration, epoch, length = state.get("iteration"), state.get("epoch"), state.get("epoch_length")
    if epoch is None and isinstance(iteration, int) and isinstance(length, int) and length > 0:
        epoch = iteration // length
    if iteration is None and isinstance(epoch, int) and isinstance(length, int):
        iteration = epoch * length
    return epoch, iteration


class AtomicDiskSaver(DiskSaver):
    """
    Ignite ``DiskSaver`` whose writes are atomic, umask-respecting and whose deletions wait for the next good write.

    Each write goes to a hidden temporary file in the same folder (``.<name>.<random>.tmp``, created with mode
    ``0o666 & ~umask`` like a normal file, not Ignite's ``0600``), is flushed and ``fsync``-ed, then renamed over the
    final name with ``os.replace``; on any error the temporary file is removed and the previous file stays intact.
    Ignite's ``Checkpoint`` removes the old file *before* writing the new one; here a removal is only queued and done
    after the next successful write, so a failed write never leaves the folder without a checkpoint.

    Args:
        dirname: folder of the checkpoints (created if missing).
        filename: a fixed file name replacing Ignite's (MONAI's ``final_filename`` / ``key_metric_filename``).
        save_on_rank: the rank that writes in distributed runs.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if self.filename is not None:
            filename = self.filename
        if self.save_on_rank != idist.get_rank():
            return
        self._save_func(checkpoint, self.dirname / filename, torch.save)
        pending, self._pending_removal = self._pending_removal, []
        for name in pending:
            if name != filename:
                (self.dirname / name).unlink(missing_ok=True)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        atomic_write(path, lambda f: func(checkpoint, f, **self.kwargs), binary=True)

    def remove(self, filename: str) -> None:
        """Queue ``filename`` for deletion after the next successful write (a fixed file name is never deleted)."""
        if self.filename is not None or idist.get_rank() != self.save_on_rank:
            return
        self._pending_removal.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """
    MONAI ``CheckpointSaver`` that writes atomically and never writes non-finite weights.

    Same arguments and file names as :class:`monai.handlers.CheckpointSaver` (a config changes only ``_target_``),
    but every save goes through :class:`AtomicDiskSaver` (temporary file + ``fsync`` + ``os.replace``, normal file
    permissions, old files deleted only after the new one is written), and before every save the floating-point
    state of ``save_dict`` is checked: if any tensor holds NaN or inf, nothing is written, an error naming the
    checkpoint and the first offending tensors is logged, and the previous file is kept. The final checkpoint
    (at ``COMPLETED`` or ``EXCEPTION_RAISED``) is written only if at least one iteration ran in this run of the
    engine (``iterations_run``): resuming a finished training, or failing before the first step, rewrites nothing.
    ``attach`` does not register the same callback twice. The saver has ``state_dict``/``load_state_dict`` (the
    key-metric tracking state), so it can itself go into a checkpoint's ``save_dict`` to resume the best-model
    tracking.

    Args:
        save_dir, save_dict, name, file_prefix, save_final, final_filename, save_key_metric, key_metric_name,
        key_metric_n_saved, key_metric_filename, key_metric_save_state, key_metric_greater_or_equal,
        key_metric_negative_sign, epoch_level, save_interval, n_saved: as :class:`monai.handlers.CheckpointSaver`.
        key_metric_from_epoch: the key-metric checkpoint only considers validations at this training epoch or
            later (the evaluator's ``state.epoch``, which MONAI's ``ValidationHandler`` sets to the trainer's), for
            example the second half of training; default 1 (every validation, MONAI's behaviour).

    Example::

        saver = AtomicCheckpointSaver(save_dir="ckpt", save_dict={"model": net, "optimizer": opt},
                                      save_interval=1, n_saved=1, save_final=True, final_filename="model_final.pt")
        saver.attach(trainer)
        resume_dict = {"model": net, "best_checkpoint": best_saver}  # best_saver: save_key_metric=True
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        name: str | None = None,
        file_prefix: str = "",
        save_final: bool = False,
        final_filename: str | None = None,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_n_saved: int = 1,
        key_metric_filename: str | None = None,
        key_metric_save_state: bool = False,
        key_metric_greater_or_equal: bool = False,
        key_metric_negative_sign: bool = False,
        epoch_level: bool = True,
        save_interval: int = 0,
        n_saved: int | None = None,
        key_metric_from_epoch: int = 1,
    ) -> None:
        if isinstance(key_metric_from_epoch, bool) or not isinstance(key_metric_from_epoch, int):
            raise TypeError(f"key_metric_from_epoch must be an int, got {type(key_metric_from_epoch).__name__}.")
        if key_metric_from_epoch < 1:
            raise ValueError(f"key_metric_from_epoch must be >= 1, got {key_metric_from_epoch}.")
        self.key_metric_from_epoch = key_metric_from_epoch
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            name=name,
            file_prefix=file_prefix,
            save_final=save_final,
            final_filename=final_filename,
            save_key_metric=save_key_metric,
            key_metric_name=key_metric_name,
            key_metric_n_saved=key_metric_n_saved,
            key_metric_filename=key_metric_filename,
            key_metric_save_state=key_metric_save_state,
            key_metric_greater_or_equal=key_metric_greater_or_equal,
            key_metric_negative_sign=key_metric_negative_sign,
            epoch_level=epoch_level,
            save_interval=save_interval,
            n_saved=n_saved,
        )
        for ckpt, fixed in zip(self._checkpoints(), (final_filename, key_metric_filename, None), strict=True):
            if ckpt is not None:
                ckpt.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed)
        self.iterations_run = 0

    def _checkpoints(self) -> tuple[Checkpoint | None, Checkpoint | None, Checkpoint | None]:
        """The final, key-metric and interval Ignite ``Checkpoint`` objects that MONAI's constructor built."""
        return self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint

    @property
    def key_metric_checkpoint(self) -> Checkpoint | None:
        """The Ignite ``Checkpoint`` of the key-metric file (``None`` without ``save_key_metric``)."""
        return self._checkpoints()[1]

    def state_dict(self) -> dict:
        """The key-metric tracking state (the saved files and their scores), so that a resume keeps the best model.

        Put the saver itself into a checkpoint's ``save_dict`` (``{"best_checkpoint": saver}``);
        ``load_state_dict`` (MONAI's) restores it. Empty without ``save_key_metric``.
        """
        ckpt = self.key_metric_checkpoint
        return dict(ckpt.state_dict()) if ckpt is not None else {}

    def _finite(self, what: str) -> bool:
        bad = non_finite_entries(self.save_dict)
        if bad:
            self.logger.error(
                f"Not saving the {what} checkpoint in '{self.save_dir}': non-finite (NaN/inf) values in "
                f"{', '.join(bad)}; the previous checkpoint file is kept."
            )
        return not bad

    def _trained(self, what: str) -> bool:
        """Whether ``engine.run`` completed an iteration in this process (else nothing new to save)."""
        if self.iterations_run == 0:
            self.logger.info(
                f"Not saving the {what} checkpoint in '{self.save_dir}': no iteration ran in this run (a finished "
                "training resumed, or a failure before the first step); the files there are kept as they are."
            )
        return self.iterations_run > 0

    def _run_started(self, engine: Engine) -> None:
        self.iterations_run = 0

    def _iteration_completed(self, engine: Engine) -> None:
        self.iterations_run += 1

    def attach(self, engine: Engine) -> None:
        """Register the save callbacks on ``engine`` (MONAI's ``attach``, done at most once per engine)."""
        counters = ((Events.STARTED, self._run_started), (Events.ITERATION_COMPLETED, self._iteration_completed))
        for event, handler in counters:
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)
        if not any(
            engine.has_event_handler(h)
            for h in (self.completed, self.exception_raised, self.metrics_completed, self.interval_completed)
        ):
            super().attach(engine)

    def completed(self, engine: Engine) -> None:
        """Save the final checkpoint (skipped if no iteration ran in this run, or with an error logged if the
        weights are not finite)."""
        if self._trained("final") and self._finite("final"):
            super().completed(engine)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """Save the final checkpoint if an iteration ran in this run and the weights are finite, then re-raise ``e``."""
        if self._trained("final (exception)") and self._finite("final (exception)"):
            super().exception_raised(engine, e)
        raise e

    def metrics_completed(self, engine: Engine) -> None:
        """Save the key-metric checkpoint if the metric improved, the epoch is at least ``key_metric_from_epoch``
        and the weights are finite."""
        if engine.state.epoch < self.key_metric_from_epoch:
            self.logger.info(
                f"Not considering epoch {engine.state.epoch} for the key-metric checkpoint in '{self.save_dir}': "
                f"only epochs from {self.key_metric_from_epoch} on are (key_metric_from_epoch)."
            )
            return
        if self._finite("key-metric"):
            super().metrics_completed(engine)

    def interval_completed(self, engine: Engine) -> None:
        """Save the interval checkpoint if the weights are finite."""
        if self._finite("interval"):
            super().interval_completed(engine)


class SafeCheckpointLoader(CheckpointLoader):
    """
    MONAI ``CheckpointLoader`` that checks the file first, names it in every error, and can check the network.

    Same arguments and behaviour as :class:`monai.handlers.CheckpointLoader` (``strict``, ``strict_shape``, Ignite's
    ``Checkpoint.load_objects``, the ``max_epochs`` check), whose ``__call__`` does the loading. Before it, the file
    is read with :func:`load_checkpoint`: a missing file raises ``FileNotFoundError`` and an empty, truncated,
    corrupt or code-carrying file a :class:`CheckpointError`, each naming ``load_path``; a checkpoint whose keys or
    shapes do not match ``load_dict`` raises a :class:`CheckpointError` naming it too.

    With ``check_network=True`` (evaluation, inference) it also logs the checkpoint's epoch and run identity (see
    :class:`~mtreg_monai.handlers.RunIdentity`) and refuses, with a :class:`~mtreg_monai.handlers.RunIdentityError`
    listing the differences, a checkpoint whose recorded network definition differs from that of the networks in
    ``load_dict`` (for example another ``integration_steps``, ``dropout`` or channel list); a checkpoint that
    records no run identity is loaded with a warning (its state dict must still match).

    After loading, :attr:`loaded` (and ``engine.state.loaded_checkpoint``) holds which checkpoint was loaded:
    ``{"checkpoint": path, "checkpoint_epoch": int | None, "checkpoint_iteration": int | None,
    "checkpoint_run_identity": digest | None}``; with ``record`` (for example a report's ``info`` dict) these
    items are also written into that mapping, so a report names the model that produced it.

    Args:
        load_path, load_dict, name, map_location, strict, strict_shape: as :class:`monai.handlers.CheckpointLoader`.
        check_network: log the run identity and check the network definition before loading.
        record: a mutable mapping updated with :attr:`loaded` after each load (``None``: none).

    Example::

        SafeCheckpointLoader(load_path="ckpt/model.pt", load_dict={"model": net}, map_location="cpu").attach(evaluator)
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
        strict_shape: bool = True,
        check_network: bool = False,
        record: MutableMapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            load_path=load_path,
            load_dict=load_dict,
            name=name,
            map_location=map_location,
            strict=strict,
            strict_shape=strict_shape,
        )
        if record is not None and not isinstance(record, MutableMapping):
            raise TypeError(
                f"record must be a mutable mapping (e.g. a report's info dict), got {type(record).__name__}."
            )
        self.check_network = bool(check_network)
        self.record = record
        self.loaded: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Load at ``Events.STARTED`` of ``engine`` (registered once)."""
        if not engine.has_event_handler(self, Events.STARTED):
            super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        """Check ``load_path``, then load it into the objects of ``load_dict`` (MONAI's ``__call__``)."""
        from mtreg_monai.handlers.run_identity import check_network, stored_fingerprint_digest

        checkpoint = load_checkpoint(self.load_path, map_location="cpu")
        epoch, iteration = engine_progress(checkpoint.get("trainer"))
        loaded = {
            "checkpoint": os.fspath(self.load_path),
            "checkpoint_epoch": epoch,
            "checkpoint_iteration": iteration,
            "checkpoint_run_identity": stored_fingerprint_digest(checkpoint),
        }
        if self.check_network:
            for obj in self.load_dict.values():
                if isinstance(obj, torch.nn.Module):
                    check_network(checkpoint, obj, os.fspath(self.load_path), log=self.logger)
        for key, obj in self.load_dict.items():  # MONAI's max_epochs error does not name the file
            saved_epoch = engine_progress(checkpoint.get(key))[0] if isinstance(obj, Engine) else None
            max_epochs = engine.state.max_epochs
            if saved_epoch is not None and max_epochs is not None and saved_epoch > max_epochs:
                raise ValueError(
                    f"Epoch count ({saved_epoch}) in checkpoint '{self.load_path}' is larger than the "
                    f"`engine.state.max_epochs` ({max_epochs}) of engine. To further train from "
                    "checkpoint, construct trainer with `max_epochs` larger than checkpoint's epoch count. "
                    "To use checkpoint for inference, no need to load state_dict for the engine."
                )
        del checkpoint
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint file '{self.load_path}' could not be loaded into the objects {sorted(self.load_dict)}: "
                f"{type(e).__name__}: {e}"
            ) from e
        self.loaded = loaded
        engine.state.loaded_checkpoint = loaded
        if self.record is not None:
            self.record.update(loaded)
