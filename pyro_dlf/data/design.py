r"""Design points off the training inputs: neighbour-distance jitter.

Teachers are usually fitted to their training inputs and agree most there, so
their spread at the training inputs under-states their spread at new inputs.
:func:`neighbour_jitter` places design points where new inputs fall: for a
training input :math:`x_i` (in standardized coordinates) let
:math:`d_i = \min_{k \ne i} \lVert x_i - x_k \rVert` be the distance to its
nearest neighbour, then

.. math::

    \tilde x_i = x_i + d_i\, u_i, \qquad u_i \sim \mathrm{Uniform}(S^{D-1}).

A fresh input from the same distribution lies, in distribution, at the
leave-one-out nearest-neighbour distance from the training set, so
:math:`\tilde x_i` sits as far from the data as a new input typically does.
Caveat: on inputs confined to a grid or to discrete levels, :math:`\tilde x_i`
leaves the support (new inputs do not), and teachers may disagree there far
more than at new inputs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyro_dlf.data.splits import Standardizer
from pyro_dlf.nn import _positive_int

__all__ = ["neighbour_jitter"]


def neighbour_jitter(x: Tensor, copies: int = 1, *, generator: Optional[torch.Generator] = None,
                     chunk_size: int = 2048) -> Tensor:
    """Jittered copies of ``x``, each row moved by its nearest-neighbour distance in a random direction.

    :param x: inputs of shape ``(n, D)`` with ``n >= 2``, in original units.
    :param copies: jittered copies per row.
    :param generator: source of the random directions (CPU).
    :param chunk_size: rows per block of the pairwise distances (memory ``chunk_size × n``).
    :returns: ``(copies * n, D)`` points in the units of ``x``; copy ``c`` of row
        ``i`` is row ``c * n + i``.
    :raises ValueError: if ``x`` is not a finite floating ``(n, D)`` tensor with ``n >= 2``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be a floating tensor of shape (n, D) with n >= 2, got {getattr(x, 'shape', x)!r}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values; clean or impute them first")
    copies = _positive_int(copies, "copies")
    chunk_size = _positive_int(chunk_size, "chunk_size")
    standardizer = Standardizer.fit(x, dim=0)
    xs = standardizer.transform(x)
    distance = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        block = torch.cdist(xs[start:start + chunk_size], xs)
        rows = torch.arange(block.shape[0], device=x.device)
        block[rows, rows + start] = float("inf")  # exclude the point itself
        distance[start:start + chunk_size] = block.min(1).values
    direction = torch.randn(copies, *x.shape, generator=generator, dtype=x.dtype).to(x.device)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    jittered = xs + distance.unsqueeze(-1) * direction
    return standardizer.inverse(jittered.reshape(-1, x.shape[1]))
