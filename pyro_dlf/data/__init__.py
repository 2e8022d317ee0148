"""Data utilities: standardisation, the random split protocols, design points and the UCI loader."""

from pyro_dlf.data.design import neighbour_jitter
from pyro_dlf.data.splits import Standardizer, train_design_test_split, train_test_split
from pyro_dlf.data.uci import UCI_DATASETS, UCIData, UCISplit, load_uci

__all__ = [
    "neighbour_jitter",
    "Standardizer",
    "train_design_test_split",
    "train_test_split",
    "UCI_DATASETS",
    "UCIData",
    "UCISplit",
    "load_uci",
]
