"""Loaders for the image classification sets: MNIST, Fashion-MNIST and scikit-learn's digits.

MNIST and Fashion-MNIST are read from the original IDX files (gzipped or
not) in a folder holding

* ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``;
* ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.

Nothing is downloaded: :func:`load_image_folder` reads the folder it is
given; :func:`load_mnist` and :func:`load_fashion_mnist` take that folder, or
find ``mnist/`` and ``fashion-mnist/`` under the directory named by the
environment variable ``PYRO_DLF_DATA_DIR``. scikit-learn's ``load_digits``
(1,797 images of 8×8, shipped inside the package) gives a small set for fast
tests: :func:`load_digits_images`.

Images come as float tensors ``(N, 1, H, W)`` with pixel values in ``[0, 1]``
(no per-set standardisation: the networks see the same scale on every set, so
a model trained on MNIST can be fed Fashion-MNIST as out-of-distribution
inputs unchanged), labels as ``int64`` in ``{0, …, 9}``.

:func:`flip_labels` gives the MNIST-Flip distribution shift, ``y → c − 1 − y``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageData", "read_idx", "load_image_folder", "load_mnist", "load_fashion_mnist", "load_digits_images",
           "flip_labels", "DATA_DIR_ENV"]

PathLike = Union[str, os.PathLike]
DATA_DIR_ENV = "PYRO_DLF_DATA_DIR"
_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageData:
    """An image classification set with its fixed train/test split.

    :ivar name: the set's name.
    :ivar x_train: ``(N, 1, H, W)`` float images in ``[0, 1]``.
    :ivar y_train: ``(N,)`` int64 labels.
    :ivar x_test: ``(N_test, 1, H, W)``.
    :ivar y_test: ``(N_test,)``.
    :ivar num_classes: number of classes ``c``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 10

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 4:
                raise ValueError(f"x_{split} must be (N, channels, height, width), got {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"y_{split} must hold one label per image ({x.shape[0]}), got shape {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"y_{split} has labels outside 0..{self.num_classes - 1}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"ImageData(name={self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes})")


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its stored type and shape.

    The format: two zero bytes, a type code, the number of dimensions ``k``,
    then ``k`` big-endian int32 sizes and the data in row-major order.
    """
    path = Path(os.fspath(path))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() if raw else 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">i4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header promises shape {shape} ({expected} bytes) but holds {len(raw) - header} bytes; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: no {stem}.gz or {stem}; the folder must hold the four IDX files {sorted(_FILES.values())}")


def load_image_folder(path: PathLike, name: Optional[str] = None) -> ImageData:
    """Load a set in the MNIST IDX layout from ``path``.

    :param path: the folder holding the four IDX files (gzipped or not).
    :param name: the set's name (default: the folder's name).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    folder = Path(os.fspath(path)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"path={os.fspath(path)!r} is not a folder; pass the folder holding the IDX files (e.g. ../shared/data/mnist)")
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in _FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match (want (N, H, W) and (N,))")
    images = {k: torch.from_numpy(arrays[k].astype(np.float32) / 255.0).unsqueeze(1) for k in ("x_train", "x_test")}
    labels = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in ("y_train", "y_test")}
    num_classes = int(max(labels["y_train"].max(), labels["y_test"].max())) + 1
    return ImageData(name or folder.name, images["x_train"], labels["y_train"], images["x_test"], labels["y_test"],
                     num_classes=num_classes)


def _named_folder(path: Optional[PathLike], sub: str) -> Path:
    if path is not None:
        return Path(os.fspath(path))
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        raise FileNotFoundError(f"no path given and {DATA_DIR_ENV} is not set; pass the {sub}/ folder or set {DATA_DIR_ENV} to the folder holding it")
    return Path(root).expanduser() / sub


def load_mnist(path: Optional[PathLike] = None) -> ImageData:
    """MNIST (60,000 + 10,000 handwritten digits, 28×28) from ``path`` or ``$PYRO_DLF_DATA_DIR/mnist``."""
    return load_image_folder(_named_folder(path, "mnist"), "mnist")


def load_fashion_mnist(path: Optional[PathLike] = None) -> ImageData:
    """Fashion-MNIST (60,000 + 10,000 clothing images, 28×28) from ``path`` or ``$PYRO_DLF_DATA_DIR/fashion-mnist``."""
    return load_image_folder(_named_folder(path, "fashion-mnist"), "fashion-mnist")


def load_digits_images(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's digits (1,797 images of 8×8, 10 classes) as an :class:`ImageData`.

    The pixel values 0..16 are scaled to ``[0, 1]``; the train/test split is a
    seeded random permutation (the set has no official split).
    """
    if not (0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return ImageData("digits", x[train], y[train], x[test], y[test], num_classes=10)


def flip_labels(y: Tensor, num_classes: int = 10) -> Tensor:
    """The label-flip shift ``y → num_classes − 1 − y`` (MNIST-Flip: 0↔9, 1↔8, …)."""
    if not isinstance(y, Tensor) or y.is_floating_point():
        raise TypeError("y must be an integer label tensor")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y has labels outside 0..{num_classes - 1}; pass the right num_classes")
    return num_classes - 1 - y
