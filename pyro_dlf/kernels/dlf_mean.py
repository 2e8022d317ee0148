r"""The deep latent factor mean function as a GPyTorch mean."""

from __future__ import annotations

from typing import Callable, Union

import gpytorch
from torch import Tensor, nn

from pyro_dlf.kernels._features import batched_rows

__all__ = ["DLFMean"]


class DLFMean(gpytorch.means.Mean):
    r"""Mean :math:`\mu_\theta(x)` of a univariate :class:`~pyro_dlf.models.DeepLatentFactor`.

    :param mean: a univariate ``DeepLatentFactor`` (its :meth:`mean`, in the
        teachers' units, is used) or any :class:`torch.nn.Module` mapping inputs
        ``(n, d)`` to ``(n,)``.

    Paired with :class:`~pyro_dlf.kernels.DLFKernel` over the same model, an
    ``ExactGP`` is the DLF's prior over functions.
    """

    def __init__(self, mean: Union[nn.Module, Callable[[Tensor], Tensor]]) -> None:
        super().__init__()
        if not isinstance(mean, nn.Module):
            raise TypeError(f"mean must be a DeepLatentFactor or an nn.Module mapping (n, d) to (n,), got {type(mean).__name__}")
        if getattr(mean, "multivariate", False):
            raise ValueError("mean is a multivariate DeepLatentFactor; DLFMean supports the univariate model (one output)")
        self.mean_module = mean

    def forward(self, x: Tensor) -> Tensor:
        function = self.mean_module.mean if hasattr(self.mean_module, "mean") else self.mean_module
        out = batched_rows(function, x, "DLFMean")
        return out.squeeze(-1) if out.dim() == x.dim() and out.shape[-1] == 1 else out
