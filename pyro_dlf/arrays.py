"""Arrays from and to files for the command line: ``.npy``, ``.npz`` and comma-separated text.

Reading never runs code (``allow_pickle=False``); every failure is a one-line
error that names the argument and the file. Writing is atomic: a temporary
file in the destination folder is renamed over the destination.
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping

import numpy as np

__all__ = ["load_array", "save_arrays", "check_writable"]

_TEXT = (".csv", ".txt")


def load_array(path: str, name: str) -> np.ndarray:
    """A numeric array from ``path`` (``.npy``, or ``.csv``/``.txt`` with comma-separated rows).

    :param name: the command-line argument, for error messages (e.g. ``--x``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no file at {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in _TEXT:
            array = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
        else:
            raise ValueError(f"{name}: {path!r} must be a .npy, .csv or .txt file")
    except ValueError as err:
        if str(err).startswith(name):
            raise
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
    return array


def check_writable(path: str, name: str) -> None:
    """Fail now, not after a long run, when ``path`` cannot be written (its folder is created)."""
    if not path:
        raise ValueError(f"{name} is empty; give a file name")
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{name}: cannot write to {folder!r} ({err.strerror or err})") from None
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a folder; give a file name")


def save_arrays(path: str, arrays: Mapping[str, np.ndarray], name: str = "--out") -> None:
    """Write named arrays to ``.npz``, or to ``.csv`` (one row per input; 2-D arrays become
    ``key_0 … key_{k-1}`` columns; every array must have one row per input)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npz", ".csv"):
        raise ValueError(f"{name}: {path!r} must end in .npz or .csv")
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".pyro-dlf-", suffix=suffix)
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
