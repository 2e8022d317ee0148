"""Apply a row-wise network to GPyTorch's batched inputs."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["batched_rows", "is_same_input"]


def batched_rows(function: Callable[[Tensor], Tensor], x: Tensor, name: str) -> Tensor:
    """``function`` on the rows of ``x`` of shape ``(*batch, n, d)``, reshaped back to ``(*batch, n, ...)``.

    The networks of a :class:`~pyro_dlf.models.DeepLatentFactor` take a matrix of
    inputs; GPyTorch hands kernels and means arbitrary batches of them.
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"{name} needs inputs of shape (*batch, n, d), got {getattr(x, 'shape', type(x).__name__)}")
    batch, rows = x.shape[:-2], x.shape[-2]
    out = function(x.reshape(-1, x.shape[-1]))
    return out.reshape(*batch, rows, *out.shape[1:])


def is_same_input(x1: Tensor, x2: Tensor) -> bool:
    """Whether GPyTorch asked for the symmetric matrix ``K(x, x)``."""
    return x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2))
