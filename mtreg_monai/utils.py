"""Small shared utilities: atomic file writing, the mixed-precision default."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "fast_mixed_precision", "write_text_atomic"]


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); not possible on every platform."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """
    A temporary path to write a file through, for writers that want a file name rather than an open file.

    The block writes the file at the yielded path: a hidden, unique name in the destination's folder,
    ``.<name>.<random hex>.tmp<suffix>``, created empty beforehand (so concurrent writers such as several ranks do
    not collide; permissions ``0o666 & ~umask`` like a normal file). When the block ends without error the file is
    ``fsync``-ed and renamed over ``path`` with ``os.replace``, and the folder is ``fsync``-ed where the platform
    allows, so ``path`` holds either its previous content or the complete new one, never a partial file. On any
    error the temporary file is removed and the exception re-raised. Missing parent folders are created.

    Args:
        path: the destination file.
        suffix: appended to the temporary name, for writers that choose the format by the file name
            (``".nii.gz"`` for SimpleITK, ``".png"`` for matplotlib).

    Example::

        with atomic_path("out/ddf.nii.gz", suffix=".nii.gz") as tmp:
            sitk.WriteImage(image, tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode & ~umask, like open(..., "w")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """
    Write a file so that ``path`` holds either its previous content or the complete new one, never a partial file.

    ``write(f)`` writes into the temporary file of :func:`atomic_path` (``.<name>.<random hex>.tmp`` in the same
    folder), which is then ``fsync``-ed and renamed over ``path``; on any error it is removed and the exception
    re-raised. Missing parent folders are created.

    Args:
        path: the destination file.
        write: called with the open temporary file.
        binary: open it in binary mode (default text, UTF-8, ``newline=""``).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def fast_mixed_precision(device: Any) -> bool:
    """
    Whether automatic mixed precision (``torch.autocast``) speeds up training on ``device``: the bundle's ``amp``
    default.

    True on CUDA (float16/bfloat16 tensor cores) and on a CPU with AMX tiles (Intel Xeon since Sapphire Rapids:
    bfloat16 matrix units; on the development machine a 64x64x48 ``as_atc`` training step took 0.69x the float32
    time, docs/performance.md). False on other CPUs: there bfloat16 convolutions have no matrix units, and no
    speed-up was measured.

    Args:
        device: a ``torch.device`` or a device string such as ``"cpu"`` or ``"cuda:0"``.

    Returns:
        whether to enable ``amp`` by default.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind != "cpu":
        return False
    amx = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    try:
        return bool(amx()) if callable(amx) else False
    except RuntimeError:  # a build without the CPU capability query
        return False
