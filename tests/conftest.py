import warnings

import pyro
import pytest
import torch

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
