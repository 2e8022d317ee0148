"""Data utilities: standardisation, the random split protocols, the UCI, image and text loaders, and a UCI-layout writer.

Design points built from data live in :mod:`pyro_dlf.design`.
"""

from pyro_dlf.data.images import (
    ImageData,
    flip_labels,
    load_digits_images,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    read_idx,
)
from pyro_dlf.data.splits import Standardizer, train_design_test_split, train_test_split
from pyro_dlf.data.streams import NpyStream, TeacherStream, TensorStream
from pyro_dlf.data.text import TextData, load_rotten_tomatoes
from pyro_dlf.data.uci import UCI_DATASETS, UCIData, UCISplit, load_uci, write_uci_layout

__all__ = [
    "ImageData",
    "flip_labels",
    "load_digits_images",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "read_idx",
    "Standardizer",
    "train_design_test_split",
    "train_test_split",
    "UCI_DATASETS",
    "UCIData",
    "UCISplit",
    "load_uci",
    "write_uci_layout",
    "TextData",
    "TensorStream",
    "NpyStream",
    "TeacherStream",
    "load_rotten_tomatoes",
]
