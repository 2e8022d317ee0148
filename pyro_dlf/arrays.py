"""Arrays from and to files for the command line: ``.npy``, ``.npz`` and comma-separated text.

Reading never runs code (``allow_pickle=False``); every failure is a one-line
error that names the argument and the file. Writing is atomic: a temporary
file in the destination folder is renamed over the destination.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Mapping

import numpy as np

__all__ = ["load_array", "save_arrays", "check_writable", "make_folder"]

_TEXT = (".csv", ".txt")


def load_array(path: str, name: str, *, mmap: bool = False) -> np.ndarray:
    """A numeric array from ``path`` (``.npy``, or ``.csv``/``.txt`` with comma-separated rows).

    :param name: the command-line argument, for error messages (e.g. ``--x``).
    :param mmap: memory-map a ``.npy`` file (read-only) instead of reading it (``.npy`` only).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no file at {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    if mmap and suffix != ".npy":
        raise ValueError(f"{name}: {path!r} must be a .npy file to be memory-mapped (save the array with np.save)")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        elif suffix in _TEXT:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # an empty file is said below, in the flag's words
                array = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
        else:
            raise ValueError(f"{name}: {path!r} must be a .npy, .csv or .txt file")
    except ValueError as err:
        if str(err).startswith(name):
            raise
        if "pickle" in str(err):  # NumPy reads a file without the .npy header as a pickle, which is refused
            raise ValueError(f"{name}: cannot read {path!r} as one .npy array (not a .npy file, or an array of Python "
                             "objects); save the array with np.save") from None
        if "could not convert string" in str(err):
            raise ValueError(f"{name}: {path!r} holds text that is not a number ({err}); remove a header line or "
                             "start it with #, and give comma-separated numbers only") from None
        raise ValueError(f"{name}: cannot read {path!r} as numbers ({err})") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read {path!r} ({err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive (or a student file) named .npy
        array.close()
        raise ValueError(f"{name}: {path!r} is an archive of several arrays (.npz or a student file), not one .npy array; "
                         "save the array with np.save")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name}: {path!r} holds complex values ({array.dtype}); give real numbers (e.g. the real part)")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise ValueError(f"{name}: {path!r} holds {array.dtype} values; give numbers")
    if array.ndim == 0:
        raise ValueError(f"{name}: {path!r} holds a single number (a 0-d array); give an array with one row per point")
    if array.size == 0:
        raise ValueError(f"{name}: {path!r} holds no values (shape {array.shape}); give a non-empty array, one row per point")
    return array


def check_writable(path: str, name: str) -> None:
    """Fail now, not after a long run, when ``path`` cannot be written. Nothing is created: a missing folder is
    made when the file is written (:func:`make_folder`), so a run that fails first leaves no folder behind."""
    if not path:
        raise ValueError(f"{name} is empty; give a file name")
    folder = os.path.dirname(os.path.abspath(path)) or "."
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{name}: {existing!r} is a file, not a folder, so {path!r} cannot be written; give a path in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write to {existing!r} (permission denied); give a path in a folder you can write to")
    if existing == folder:
        try:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(handle)
            os.unlink(probe)
        except OSError as err:
            raise ValueError(f"{name}: cannot write to {folder!r} ({err.strerror or err})") from None
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a folder; give a file name")
    _check_name_lengths(os.path.abspath(path), existing, name)


def _check_name_lengths(path: str, existing: str, name: str) -> None:
    """Each part of ``path`` below its deepest existing folder fits the file system's name limit (else the
    write would fail with ``File name too long`` only after the run)."""
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no such setting: nothing to check
        return
    for part in os.path.relpath(path, existing).split(os.sep):
        if len(os.fsencode(part)) > limit:
            raise ValueError(f"{name}: the name {part[:20]}... is {len(os.fsencode(part))} bytes, longer than the "
                             f"{limit} this file system allows; give a shorter name")


def make_folder(path: str) -> None:
    """Create the folder that ``path`` goes in (after :func:`check_writable`, just before writing it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)


def save_arrays(path: str, arrays: Mapping[str, np.ndarray], name: str = "--out") -> None:
    """Write named arrays to ``.npz``, or to ``.csv`` (one row per input; 2-D arrays become
    ``key_0 … key_{k-1}`` columns; every array must have one row per input)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npz", ".csv"):
        raise ValueError(f"{name}: {path!r} must end in .npz or .csv")
    make_folder(path)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".pyro-dlf-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as fh:
            if suffix == ".npz":
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
            else:
                columns, header = [], []
                for key, value in arrays.items():
                    value = np.asarray(value)
                    if value.ndim == 1:
                        columns.append(value[:, None])
                        header.append(key)
                    elif value.ndim == 2:
                        columns.append(value)
                        header += [f"{key}_{k}" for k in range(value.shape[1])]
                    else:
                        raise ValueError(f"{name}: {key} has {value.ndim} dimensions; a .csv holds one row per input (use .npz)")
                np.savetxt(fh, np.hstack(columns), delimiter=",", header=",".join(header), comments="")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
