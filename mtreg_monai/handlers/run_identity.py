"""Run identity: a fingerprint of what defines a training run, stored in its checkpoints and checked on resume.

A checkpoint folder is resumed by default; without a record of *which* run wrote it, a changed ``--datalist``,
``--spatial_size`` or loss weight silently continues (or, when finished, silently keeps) another run's model.
:class:`RunIdentity` is an object with ``state_dict``/``load_state_dict`` that goes into a checkpoint's
``save_dict`` and holds the run's fingerprint: a plain dict of JSON values (the method and its hyperparameters,
the datalist's path and content hash, the network definition, the seed, ...). Only plain types are stored, so
checkpoints still load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import torch
from torch import nn

from mtreg_monai.handlers.checkpoint import CheckpointError, engine_progress, load_checkpoint

__all__ = [
    "RunIdentity",
    "RunIdentityError",
    "check_network",
    "checkpoint_identity",
    "datalist_identity",
    "fingerprint_differences",
    "fingerprint_digest",
    "format_differences",
    "network_definition",
    "stored_fingerprint_digest",
]

logger = logging.getLogger(__name__)

IDENTITY_KEY = "run_identity"  # the save_dict key under which checkpoints hold the identity
_SCALARS = (bool, int, float, str, type(None))


class RunIdentityError(CheckpointError):
    """A checkpoint written by another run (another fingerprint), or one without a recorded run identity."""


def _plain(value: Any, name: str) -> Any:
    """``value`` as plain JSON types (dict with str keys, list, str, int, float, bool, None)."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"run identity value {name!r} must be a plain value (number, str, bool, None, list, dict), "
        f"got {type(value).__name__}."
    )


def _canonical(value: Any) -> Any:
    """Integral floats as ints, so that ``3`` and ``3.0`` (equal in a comparison) get the same digest too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def fingerprint_digest(fingerprint: Mapping[str, Any], length: int = 16) -> str:
    """
    A short hexadecimal SHA-256 of a fingerprint (canonical JSON: sorted keys, integral floats as ints).

    Args:
        fingerprint: a plain mapping, such as :attr:`RunIdentity.fingerprint`.
        length: number of hexadecimal digits kept (1-64).

    Returns:
        the first ``length`` hexadecimal digits, for logs and reports.
    """
    text = json.dumps(_canonical(_plain(fingerprint, "fingerprint")), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def datalist_identity(path: str | os.PathLike) -> dict[str, str]:
    """
    The datalist's path (as given, normalised) and the SHA-256 of its content.

    The path is kept relative when given relative, so a project folder moved as a whole keeps its identity; the
    hash makes an edited datalist under the same name a different one.

    Args:
        path: the datalist JSON file.

    Returns:
        ``{"datalist": path, "datalist_sha256": hex digest}``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist file not found: '{path}'.")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"datalist": os.path.normpath(path), "datalist_sha256": digest.hexdigest()}


def network_definition(network: nn.Module) -> dict[str, Any]:
    """
    What a network *is*, as a plain dict: its class, its constructor arguments and the shapes of its state.

    ``arguments`` holds, for the network and each submodule, every constructor argument that the module keeps
    under its own name as a plain value (``integration_steps``, ``dropout``, a convolution's ``kernel_size``, ...);
    runtime flags that are not constructor arguments (``training``, an MC-dropout mode) are not part of it.
    ``tensors`` holds the shape of every entry of the state dict. ``DataParallel`` and
    ``DistributedDataParallel`` wrappers are looked through.

    Args:
        network: the model.

    Returns:
        ``{"class": "module.Class", "arguments": {"<submodule path>.<argument>": value}, "tensors": {name: shape}}``
        (the root module's arguments without a path prefix).
    """
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    arguments: dict[str, Any] = {}
    for path, module in network.named_modules():
        try:
            params = inspect.signature(type(module).__init__).parameters
        except (TypeError, ValueError):  # builtins without a signature
            continue
        state = vars(module)
        for name, p in params.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name not in state:
                continue
            try:
                value = _plain(state[name], name)
            except TypeError:
                continue  # a module, a tensor or another object: its state is in ``tensors``
            arguments[f"{path}.{name}" if path else name] = value
    tensors = {k: list(v.shape) for k, v in network.state_dict().items()}
    cls = f"{type(network).__module__}.{type(network).__qualname__}"
    return {"class": cls, "arguments": arguments, "tensors": tensors}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


_ABSENT = "<absent>"


def fingerprint_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """
    The entries in which two fingerprints differ, as ``(dotted key, old value, new value)``.

    Nested mappings are compared entry by entry (``method_cfg.teacher``, ``network.arguments.dropout``), lists as a
    whole; ``3`` equals ``3.0``. A key present in only one of them has the value ``"<absent>"`` in the other.

    Args:
        old: the checkpoint's fingerprint.
        new: this configuration's fingerprint.

    Returns:
        the differing entries in the order of ``new``'s keys, then those only in ``old``.
    """
    a, b = _flatten(_plain(old, "old")), _flatten(_plain(new, "new"))
    keys = list(b) + [k for k in a if k not in b]
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def format_differences(differences: Sequence[tuple[str, Any, Any]], limit: int = 12, new_label: str = "now") -> str:
    """One ``  key: checkpoint <old>, <new_label> <new>`` line per difference, at most ``limit`` (then a count)."""
    lines = [f"  {k}: checkpoint {old!r}, {new_label} {new!r}" for k, old, new in differences[:limit]]
    if len(differences) > limit:
        lines.append(f"  ... and {len(differences) - limit} more")
    return "\n".join(lines)


def _stored_identity(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    state = checkpoint.get(IDENTITY_KEY)
    if not isinstance(state, Mapping) or not isinstance(state.get("fingerprint"), Mapping):
        return None
    return dict(state["fingerprint"])


def stored_fingerprint_digest(checkpoint: Mapping[str, Any]) -> str | None:
    """The digest of the run fingerprint a loaded checkpoint records (``None`` when it records none)."""
    stored = _stored_identity(checkpoint)
    return None if stored is None else fingerprint_digest(stored)


def _summary(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint with the network definition replaced by its digest (for logs and reports)."""
    out = dict(fingerprint)
    if isinstance(out.get("network"), Mapping):
        out["network"] = f"{out['network'].get('class', '?')} ({fingerprint_digest(out['network'])})"
    return out


def checkpoint_identity(path: str | os.PathLike) -> dict[str, Any]:
    """
    Which model a checkpoint holds: its path, epoch, iteration and run fingerprint, for a report.

    Args:
        path: a checkpoint written by the training bundle (``model.pt``, ``model_final.pt``, ...).

    Returns:
        ``{"checkpoint": path, "epoch": int | None, "iteration": int | None, "run_identity": digest | None,
        "fingerprint": compact JSON of the fingerprint (network as its digest) | None}``; ``None`` where the
        checkpoint does not record it (a checkpoint without a trainer state or run identity).

    Raises:
        FileNotFoundError, CheckpointError: as :func:`~mtreg_monai.handlers.load_checkpoint`.
    """
    checkpoint = load_checkpoint(path, map_location="cpu")
    epoch, iteration = engine_progress(checkpoint.get("trainer"))
    fingerprint = _stored_identity(checkpoint)
    return {
        "checkpoint": os.fspath(path),
        "epoch": epoch,
        "iteration": iteration,
        "run_identity": None if fingerprint is None else fingerprint_digest(fingerprint),
        "fingerprint": None if fingerprint is None else json.dumps(_summary(fingerprint), sort_keys=True),
    }


class RunIdentity:
    """
    The fingerprint of a training run, saved in every checkpoint (``save_dict``) and checked before a resume.

    The fingerprint is a plain dict: the given ``values`` (method, loss and weighting hyperparameters,
    spatial size, seed, ...), ``datalist`` and ``datalist_sha256`` (see :func:`datalist_identity`) and ``network``
    (see :func:`network_definition`). What is left out (``epochs``, logging, validation interval, device, output
    folders) may change between a run and its resume. ``state_dict()`` returns ``{"fingerprint": ..., "digest":
    ...}`` (plain types only: ``weights_only`` loading accepts it); ``load_state_dict`` refuses a different one.

    Call :meth:`check_resume` before the trainer runs (the bundle does it first in ``initialize``): a checkpoint of
    another run, or one without a recorded identity, is refused before anything is loaded or written.

    Args:
        values: ``{name: value}`` of plain values (nested mappings and lists allowed; tensors and numpy values are
            converted to lists), e.g. ``{"method": "as_atc", "spatial_size": [64, 64, 48], "k1": 5.0}``.
        network: the model whose definition is part of the identity (``None``: not recorded).
        datalist: the datalist file whose path and content hash are part of the identity (``None``: not recorded).

    Raises:
        TypeError: a value that is not a plain value, or ``network`` not a module.
        FileNotFoundError: ``datalist`` is not a file.

    Example::

        identity = RunIdentity({"method": "vm", "spatial_size": [64, 64, 48]}, network=net, datalist="dataset.json")
        identity.check_resume("models/vm_checkpoint_epoch=3.pt")  # raises RunIdentityError if another run wrote it
        saver = AtomicCheckpointSaver("models", save_dict={"model": net, "run_identity": identity}, save_interval=1)
    """

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        network: nn.Module | None = None,
        datalist: str | os.PathLike | None = None,
    ) -> None:
        if values is not None and not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping of run settings, got {type(values).__name__}.")
        fingerprint: dict[str, Any] = _plain(dict(values or {}), "values")
        if datalist is not None and os.fspath(datalist):
            fingerprint.update(datalist_identity(datalist))
        if network is not None:
            fingerprint["network"] = network_definition(network)
        self.fingerprint = fingerprint

    @property
    def digest(self) -> str:
        """Short SHA-256 of :attr:`fingerprint` (see :func:`fingerprint_digest`)."""
        return fingerprint_digest(self.fingerprint)

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "digest": self.digest}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Accept a saved identity only if it equals this one (nothing to restore: the identity is the config's).

        Raises:
            RunIdentityError: the saved fingerprint is missing or differs (the differences are listed).
        """
        stored = _stored_identity({IDENTITY_KEY: state_dict})
        if stored is None:
            raise RunIdentityError(f"the saved run identity is not a {{'fingerprint': dict}} mapping: {state_dict!r}.")
        diff = fingerprint_differences(stored, self.fingerprint)
        if diff:
            raise RunIdentityError(f"the checkpoint was written by another run:\n{format_differences(diff)}")

    def check_resume(self, path: str | os.PathLike) -> None:
        """
        Refuse to resume from ``path`` unless the checkpoint records this run identity.

        Reads the checkpoint (``weights_only``) and writes nothing. Only the keys of the fingerprint are compared,
        so raising ``epochs`` resumes.

        Args:
            path: the checkpoint a resume would load.

        Raises:
            RunIdentityError: the checkpoint records another fingerprint (the message lists each differing key with
                the checkpoint's value and this configuration's) or none at all; the message names the two ways
                out, ``--resume False`` and another ``--ckpt_dir``.
            FileNotFoundError, CheckpointError: as :func:`~mtreg_monai.handlers.load_checkpoint`.
        """
        path = os.fspath(path)
        folder = os.path.dirname(path) or "."
        ways_out = (
            "Nothing was loaded or written. To start a new training with this configuration, either pass "
            f"`--resume False` (its checkpoints then replace those in '{folder}'), or keep both runs by passing "
            "another `--ckpt_dir`. Only `epochs` and the logging/validation settings may change when resuming."
        )
        stored = _stored_identity(load_checkpoint(path, map_location="cpu"))
        if stored is None:
            raise RunIdentityError(
                f"Refusing to resume training from '{path}': the checkpoint records no run identity (it was written "
                f"before run identities were recorded, or by other code), so it cannot be told apart from another "
                f"run's. {ways_out}"
            )
        diff = fingerprint_differences(stored, self.fingerprint)
        if diff:
            raise RunIdentityError(
                f"Refusing to resume training from '{path}': it was written by another run (run identity "
                f"{fingerprint_digest(stored)}, this configuration's is {self.digest}). Differences:\n"
                f"{format_differences(diff)}\n{ways_out}"
            )
        logger.info("Resuming from '%s': same run identity %s.", path, self.digest)


def check_network(
    checkpoint: Mapping[str, Any], network: nn.Module, path: str, log: logging.Logger | None = None
) -> dict[str, Any] | None:
    """
    Log a checkpoint's run identity and refuse it if its network definition differs from ``network``'s.

    Args:
        checkpoint: the loaded checkpoint mapping.
        network: the model it is about to be loaded into.
        path: the checkpoint's path, for the messages.
        log: logger of the messages (default: this module's).

    Returns:
        the checkpoint's fingerprint, or ``None`` when it records none (a warning is logged: only its state dict
        can then be checked).

    Raises:
        RunIdentityError: the recorded network definition differs (each differing entry listed).
    """
    log = log or logger
    stored = _stored_identity(checkpoint)
    epoch, iteration = engine_progress(checkpoint.get("trainer"))
    if stored is None:
        log.warning(
            f"Checkpoint '{path}' records no run identity (an older or external checkpoint): its network "
            "definition cannot be checked against this configuration, only its state dict's keys and shapes."
        )
        return None
    log.info(
        f"Checkpoint '{path}': epoch {epoch}, iteration {iteration}, run identity "
        f"{fingerprint_digest(stored)}: {json.dumps(_summary(stored), sort_keys=True)}"
    )
    if "network" not in stored:
        log.warning(f"Checkpoint '{path}' records no network definition: it cannot be checked.")
        return stored
    diff = fingerprint_differences({"network": stored["network"]}, {"network": network_definition(network)})
    if diff:
        raise RunIdentityError(
            f"Checkpoint '{path}' holds a network defined differently from this configuration's network "
            f"(network_def, method, dropout, ...), so its weights do not belong to this network. Differences:\n"
            f"{format_differences(diff, new_label='config')}\nUse the configuration the checkpoint was trained "
            "with (its run identity is logged above), or a checkpoint trained with this one."
        )
    return stored
