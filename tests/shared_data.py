"""Where the tests find the benchmark data, and the stand-in that ships with scikit-learn.

The data root is ``$PYRO_DLF_DATA_DIR`` when that variable is set -- even to an
empty folder or one that lacks a set: what is not there counts as absent, with
no fallback -- and otherwise ``../shared/data`` beside the repository root when
that folder exists. Under the root: ``uci/<set>/``, ``mnist/``,
``fashion-mnist/`` and ``text/``.

Tests of the real sets' properties skip when their data are absent
(:func:`require`); tests of a pipeline run on a stand-in instead
(:func:`write_diabetes`, scikit-learn's diabetes set in the UCI layout). Every
test whose behaviour depends on the data's presence carries the ``data`` marker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest

__all__ = [
    "DATA_DIR_ENV",
    "BESIDE_REPOSITORY",
    "data_root",
    "data_folder",
    "uci_set",
    "missing_reason",
    "require",
    "require_uci_set",
    "write_diabetes",
]

DATA_DIR_ENV = "PYRO_DLF_DATA_DIR"
#: ``../shared/data`` beside the repository root (tests/ -> repository root -> its parent).
BESIDE_REPOSITORY = Path(__file__).resolve().parents[2] / "shared" / "data"

# What each subfolder holds, for the skip reasons.
_DESCRIPTIONS = {
    "uci": "UCI data",
    "mnist": "MNIST data",
    "fashion-mnist": "Fashion-MNIST data",
    "text": "Rotten Tomatoes corpus",
}


def data_root() -> Optional[Path]:
    """The tests' data root, or ``None`` when there is none (see the module docstring)."""
    if DATA_DIR_ENV in os.environ:
        value = os.environ[DATA_DIR_ENV]
        root = Path(value).expanduser() if value else None
        return root if root is not None and root.is_dir() else None
    return BESIDE_REPOSITORY if BESIDE_REPOSITORY.is_dir() else None


def data_folder(sub: str) -> Optional[Path]:
    """``<root>/<sub>`` (``uci``, ``mnist``, ``fashion-mnist`` or ``text``) when it is a folder, else ``None``."""
    root = data_root()
    folder = None if root is None else root / sub
    return folder if folder is not None and folder.is_dir() else None


def uci_set(name: str) -> Optional[Path]:
    """The folder of UCI set ``name`` under the data root, in either layout :func:`~pyro_dlf_bench.datasets.load_uci` reads."""
    uci = data_folder("uci")
    if uci is None:
        return None
    folder = uci / name
    return folder if (folder / "data.txt").is_file() or (folder / "data" / "data.txt").is_file() else None


def missing_reason(sub: str) -> str:
    """The skip reason when ``<root>/<sub>`` is absent: says how to point the tests at the data."""
    what = _DESCRIPTIONS.get(sub, f"{sub}/ data")
    return f"{what} not found: set {DATA_DIR_ENV} to the folder holding {sub}/ (e.g. ../shared/data)"


def require(sub: str) -> Path:
    """``<root>/<sub>``, or skip the calling test with :func:`missing_reason`."""
    folder = data_folder(sub)
    if folder is None:
        pytest.skip(missing_reason(sub))
    return folder


def write_diabetes(parent: Path) -> Path:
    """Write scikit-learn's diabetes set (442 rows, 10 inputs; ships with the package) to ``parent/diabetes``."""
    from sklearn.datasets import load_diabetes

    from pyro_dlf_bench.datasets import write_uci_layout

    x, y = load_diabetes(return_X_y=True, scaled=False)
    return write_uci_layout(parent / "diabetes", x, y)


def require_uci_set(name: str) -> Path:
    """The folder of UCI set ``name`` (see :func:`uci_set`), or skip the calling test saying how to point at it."""
    folder = uci_set(name)
    if folder is None:
        uci = data_folder("uci")
        if uci is None:
            pytest.skip(missing_reason("uci"))
        pytest.skip(f"UCI set {name!r} not found in {uci}: set {DATA_DIR_ENV} to a folder whose uci/ holds it "
                    "(e.g. ../shared/data)")
    return folder
