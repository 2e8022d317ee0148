import warnings
from pathlib import Path
from typing import Callable

import pyro
import pytest
import torch

import shared_data

# Small tensors: one thread avoids oversubscribing the 2-core CI machine.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts from an empty param store and a fixed seed (deterministic suite)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def uci_set_or_diabetes(tmp_path_factory) -> Callable[[str], Path]:
    """``get(name)``: the folder of UCI set ``name`` under the tests' data root (see ``shared_data``), or,
    when that set is absent, scikit-learn's diabetes set written once in the UCI layout.

    For tests of a pipeline, which must run with or without the benchmark data; they read the set's name
    and sizes from the data they get.
    """
    written: list[Path] = []

    def get(name: str) -> Path:
        folder = shared_data.uci_set(name)
        if folder is not None:
            return folder
        if not written:
            written.append(shared_data.write_diabetes(tmp_path_factory.mktemp("uci")))
        return written[0]

    return get
