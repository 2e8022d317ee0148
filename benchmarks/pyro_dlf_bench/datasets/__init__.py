"""Dataset loaders of the benchmarks: UCI, MNIST / Fashion-MNIST / digits, Rotten Tomatoes; standardisation and splits.

Every loader takes a path (or reads ``$PYRO_DLF_DATA_DIR``); nothing is downloaded.
"""

from pyro_dlf_bench.datasets.images import (
    ImageData,
    flip_labels,
    load_digits_images,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    read_idx,
)
from pyro_dlf_bench.datasets.splits import Standardizer, train_design_test_split, train_test_split
from pyro_dlf_bench.datasets.text import TextData, load_rotten_tomatoes
from pyro_dlf_bench.datasets.uci import UCI_DATASETS, UCIData, UCISplit, load_uci, write_uci_layout

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
    "load_rotten_tomatoes",
]
