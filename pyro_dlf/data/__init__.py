"""Data utilities: standardisation and the random split protocols."""

from pyro_dlf.data.splits import Standardizer, train_design_test_split, train_test_split

__all__ = ["Standardizer", "train_design_test_split", "train_test_split"]
