"""Inference for deep latent factor models: exact EM (in memory, streamed or distributed) and MMD initialization."""

from pyro_dlf.infer.em import EM, expected_complete_nll
from pyro_dlf.infer.mmd import mmd, mmd_initialize
from pyro_dlf.infer.streaming import StreamingEM

__all__ = ["EM", "StreamingEM", "expected_complete_nll", "mmd", "mmd_initialize"]
