"""Files: atomic replacement (a file is either its old self or completely written, never half-written) and the
record of a custom body's classes saved with a student."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from typing import IO

from torch import nn

__all__ = ["atomic_write", "body_record"]


def _umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, so that it is never changed even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: str) -> int:
    """The permission bits the written file gets: those of the file it replaces, else what a plain
    ``open(path, "w")`` would give (``0o666`` less the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _naming(err: OSError, path: str) -> OSError:
    """``err`` reworded to name ``path`` (the user's file) instead of the temporary file."""
    reason = err.strerror or str(err)
    try:
        return type(err)(err.errno, f"cannot write {path!r}: {reason}") if err.errno else type(err)(f"cannot write {path!r}: {reason}")
    except TypeError:  # an OSError subclass with another signature
        return OSError(err.errno, f"cannot write {path!r}: {reason}")


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, flush it to disk, then rename it
    over ``path`` (:func:`os.replace`, atomic on POSIX and Windows). On any error the temporary file is
    removed and ``path`` is untouched; an :class:`OSError` names ``path``, not the temporary file.

    The written file keeps the permission bits of the file it replaces; a new
    file gets the umask's default, as with :func:`open`.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder {folder!r} does not exist; create it first")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; give a file name inside it")
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".pyro-dlf-", suffix=".tmp")
    except OSError as err:
        raise _naming(err, path) from None
    try:
        mode = _final_mode(path)
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            # mkstemp makes the file 0600; give it the mode the destination should have.
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if not hasattr(os, "fchmod"):
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as err:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise _naming(err, path) from None
        raise


def body_record(body: nn.Module) -> tuple[str, list[list[str]]]:
    """A custom body's class as ``module.qualname`` and ``[[name, class], ...]`` over its submodules.

    Saved with the student, so that :meth:`~pyro_dlf.student.Student.load`
    refuses a body of another class (or another layer layout) whose weights
    merely have the same shapes.
    """
    name = lambda m: f"{type(m).__module__}.{type(m).__qualname__}"  # noqa: E731
    return name(body), [[key, name(module)] for key, module in body.named_modules() if key]
