r"""The deep latent factor covariance as a GPyTorch kernel.

A :class:`~pyro_dlf.models.DeepLatentFactor` is a Gaussian process with the
low-rank, non-stationary covariance

.. math::

    k(x, x') = \Phi_\theta(x)^\top \Phi_\theta(x'), \qquad
    \Phi_\theta(x) \in \mathbb R^q,

so a set of :math:`n` points has kernel matrix :math:`K = \Phi \Phi^\top` of rank
at most :math:`q`. :class:`DLFKernel` exposes it to GPyTorch as a
``LowRankRootLinearOperator`` (or ``MatmulLinearOperator`` for cross-covariances),
so GPyTorch's solves use the Woodbury identity in :math:`O(n q^2)` rather than
:math:`O(n^3)`. With :class:`~pyro_dlf.kernels.DLFMean` and a Gaussian
likelihood of noise :math:`\sigma_f^2`, an ``ExactGP`` reproduces the DLF's
marginal likelihood :math:`\mathcal N(f_i;\, \mu, \Phi\Phi^\top + \sigma_f^2 I)`.

A *full* multivariate DLF (``covariance="full"``, :math:`\Phi(x) \in \mathbb R^{c\times q}`)
is a multitask kernel: :math:`k((x, j), (x', k)) = \Phi(x)_j^\top \Phi(x')_k`
over the ``n·c`` (point, class) pairs, class index fastest (GPyTorch's
interleaved multitask order, ``num_outputs_per_input = c``), again of rank ≤ q.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import gpytorch
import torch
from linear_operator.operators import LinearOperator, LowRankRootLinearOperator, MatmulLinearOperator, RootLinearOperator
from torch import Tensor, nn

from pyro_dlf._validation import check_flag
from pyro_dlf.kernels._features import batched_rows, is_same_input

__all__ = ["DLFKernel"]


class DLFKernel(gpytorch.kernels.Kernel):
    r"""Kernel :math:`k(x, x') = \Phi(x)^\top \Phi(x')` from a loading network.

    :param loading: a univariate :class:`~pyro_dlf.models.DeepLatentFactor`
        (its :meth:`loading`, in the teachers' units, is used), or any
        :class:`torch.nn.Module` mapping inputs ``(n, d)`` to loadings ``(n, q)``.
        For a separable multivariate DLF this is the input kernel :math:`K_x`
        of the covariance :math:`K_c \otimes K_x`; pass it with
        ``allow_multivariate=True`` and put :math:`K_c = L L^\top`
        (``dlf.class_covariance()``) into e.g. a ``gpytorch.kernels.MultitaskKernel``.
        For a full multivariate DLF the kernel is the whole multitask
        covariance of the (point, class) pairs (module docstring); a module
        returning ``(n, c, q)`` loadings is treated the same way.
    :param allow_multivariate: accept a separable multivariate DLF (see above).
    :param kwargs: :class:`gpytorch.kernels.Kernel` options (``active_dims``,
        ``batch_shape``). The kernel has no parameters of its own: the loading
        network's parameters are trained with it and shared across the batch.

    The kernel is non-stationary (``is_stationary = False``). ``diag=True``
    returns :math:`\lVert\Phi(x)\rVert^2` row sums without forming a matrix.

    Example::

        kernel = DLFKernel(student.dlf)
        with gpytorch.settings.max_cholesky_size(10_000):
            K = kernel(x).to_dense()          # equals student.dlf.covariance(x)
    """

    is_stationary = False
    has_lengthscale = False

    def __init__(self, loading: Union[nn.Module, Callable[[Tensor], Tensor]], *, allow_multivariate: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        allow_multivariate = check_flag(allow_multivariate, "allow_multivariate")
        if not isinstance(loading, nn.Module):
            raise TypeError(
                "loading must be a DeepLatentFactor or an nn.Module mapping (n, d) inputs to (n, q) loadings, "
                f"got {type(loading).__name__}"
            )
        if getattr(loading, "separable", False) and not allow_multivariate:
            raise ValueError(
                "loading is a multivariate DeepLatentFactor: DLFKernel gives only its input kernel Phi Phi^T; "
                "pass allow_multivariate=True and combine it with dlf.class_covariance() (e.g. in a MultitaskKernel)"
            )
        self.loading_module = loading

    def loadings(self, x: Tensor) -> Tensor:
        r""":math:`\Phi(x)` for inputs ``(*batch, n, d)``: ``(*batch, n, q)`` (full model ``(*batch, n, c, q)``)."""
        loading = self.loading_module.loading if hasattr(self.loading_module, "loading") else self.loading_module
        return batched_rows(loading, x, "DLFKernel")

    def _rows(self, x: Tensor) -> Tensor:
        """The kernel's root: one row per input, or per (input, class) pair of a full model."""
        phi = self.loadings(x)
        return phi.flatten(-3, -2) if phi.dim() == x.dim() + 1 else phi

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: Optional[bool] = False, **params) -> Union[Tensor, LinearOperator]:
        if last_dim_is_batch:
            raise ValueError("DLFKernel: last_dim_is_batch=True is not supported (the loading network reads all input dimensions together)")
        phi1 = self._rows(x1)
        same = is_same_input(x1, x2)
        phi2 = phi1 if same else self._rows(x2)
        # The network is shared by the kernel's batch: broadcast to its batch shape.
        batch = torch.broadcast_shapes(phi1.shape[:-2], phi2.shape[:-2], self.batch_shape)
        phi1 = phi1.expand(*batch, *phi1.shape[-2:])
        phi2 = phi1 if same else phi2.expand(*batch, *phi2.shape[-2:])
        if diag:
            return (phi1 * phi2).sum(-1)
        if same:
            # K = Phi Phi^T: a root decomposition GPyTorch inverts by Woodbury when q < n.
            n, q = phi1.shape[-2:]
            return LowRankRootLinearOperator(phi1) if q < n else RootLinearOperator(phi1)
        return MatmulLinearOperator(phi1, phi2.transpose(-1, -2))

    def num_outputs_per_input(self, x1: Tensor, x2: Tensor) -> int:
        if getattr(self.loading_module, "covariance_type", None) == "full":
            return self.loading_module.num_outputs
        return 1

    def __getitem__(self, index) -> "DLFKernel":
        # The loading network is shared across the batch, so indexing a batched
        # kernel only changes its batch shape.
        if len(self.batch_shape) == 0:
            return self
        new = super().__getitem__(index)
        new.batch_shape = torch.empty(self.batch_shape).__getitem__(index).shape
        return new
