"""Inference for deep latent factor models: exact EM and MMD initialization."""

from pyro_dlf.infer.em import EM, expected_complete_nll
from pyro_dlf.infer.mmd import mmd, mmd_initialize

__all__ = ["EM", "expected_complete_nll", "mmd", "mmd_initialize"]
