"""Small shared utilities: atomic file writing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import IO, Any

__all__ = ["atomic_write", "write_text_atomic"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """
    Write a file so that ``path`` holds either its previous content or the complete new one, never a partial file.

    ``write(f)`` writes into a hidden temporary file in the same folder (a unique name, so concurrent writers such as
    several ranks do not collide; permissions ``0o666 & ~umask`` like a normal file), which is flushed, ``fsync``-ed
    and renamed over ``path`` with ``os.replace``; the folder is then ``fsync``-ed where the platform allows. On any
    error the temporary file is removed and the exception re-raised. Missing parent folders are created.

    Args:
        path: the destination file.
        write: called with the open temporary file.
        binary: open it in binary mode (default text, UTF-8, ``newline=""``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode & ~umask, like open(..., "w")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))
