"""Atomic file replacement: a file is either its old self or completely written, never half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO

__all__ = ["atomic_write"]


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, flush it to disk, then rename it
    over ``path`` (:func:`os.replace`, atomic on POSIX and Windows). On any error the temporary file is
    removed and ``path`` is untouched."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder {folder!r} does not exist; create it first")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".pyro-dlf-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
