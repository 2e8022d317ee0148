"""GPyTorch views of the deep latent factor model: its kernel and its mean."""

from pyro_dlf.kernels.dlf_kernel import DLFKernel
from pyro_dlf.kernels.dlf_mean import DLFMean

__all__ = ["DLFKernel", "DLFMean"]
