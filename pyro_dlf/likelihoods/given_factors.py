r"""Noise that follows the factors: ``σ² | z ~ IG(a, b · u(z)^β)``, ``u(z) = z^T \hat G z`` (mathematics §6.3).

A teacher whose function strays far from the others' (a large ``u(z)``) gets a noise variance to match; the
i.i.d. law is ``β = 0``. Fitted by :func:`pyro_dlf.noise.fit_factor_inverse_gamma` on each teacher's noise
variance and its posterior expected ``u``. One-output regression students only.
"""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from scipy.stats import invgamma
from torch import Tensor

from pyro_dlf._validation import check_finite_outputs
from pyro_dlf.likelihoods.base import MixtureParts, NoiseLaw
from pyro_dlf.quadrature import scrambled_sobol
from pyro_dlf.sufficient_statistics import combine

__all__ = ["FactorInverseGammaNoise", "FACTOR_NODES", "factor_nodes"]

#: Quasi-random draws of ``z`` that average over the factors where a closed form is missing.
FACTOR_NODES = 4096


def factor_nodes(num_factors: int, num: int, like: Tensor, with_levels: bool = False):
    """``num`` (even) fixed quasi-random draws of ``z ~ N(0, I)`` like ``like``: ``num / 2`` scrambled Sobol
    points (seed 0) and their mirror images ``−z``, so the nodes average to exactly zero and a mixture over them
    has mean ``μ(x)`` (``u(−z) = u(z)``). With ``with_levels`` the Sobol points have one more coordinate, a
    probability level per node (shared by ``z`` and ``−z``) at which to read the noise law's quantile: one
    low-discrepancy set over ``(z, σ²)`` jointly, so the noise law's tail is sampled as finely as ``z``."""
    uniform = scrambled_sobol(num_factors + int(with_levels), num // 2)
    half = torch.special.ndtri(uniform[:, :num_factors])
    z = torch.cat([half, -half]).to(dtype=like.dtype, device=like.device)
    return (z, uniform[:, num_factors].repeat(2)) if with_levels else z


class FactorInverseGammaNoise(NoiseLaw):
    r"""``σ² | z ~ IG(a, b · u(z)^β)`` with ``u(z) = z^T \hat G z``.

    :param concentration: ``a > 0``.
    :param rate: ``b > 0``.
    :param exponent: ``β`` (nonzero).
    :param gram: ``\hat G`` (``q×q``, trace 1), in the student's dtype and device.
    """

    mixture_factor = 16

    def __init__(self, concentration: float, rate: float, exponent: float, gram: Tensor) -> None:
        self.concentration, self.rate, self.exponent, self.gram = concentration, rate, exponent, gram

    def deviation_size(self, z: Tensor) -> Tensor:
        r"""``u(z) = z^T \hat G z`` over the last dimension of ``z``."""
        gram = self.gram.to(z)
        return ((z @ gram) * z).sum(-1).clamp_min(torch.finfo(z.dtype).tiny)

    def average_rate(self, like: Tensor) -> float:
        """``E_z[u(z)^β]``, averaged over :data:`FACTOR_NODES` fixed nodes in float64."""
        nodes = factor_nodes(self.gram.shape[0], FACTOR_NODES, like).double()
        return float(self.deviation_size(nodes).pow(self.exponent).mean())

    def constant_mean(self, like: Tensor) -> float:
        """``E[σ²] = E_z[b u(z)^β] / (a − 1)`` (infinite when ``a ≤ 1``)."""
        rate = self.rate * self.average_rate(like)
        return rate / (self.concentration - 1) if self.concentration > 1 else float("inf")

    def mean(self, x: Optional[Tensor], like: Tensor) -> Tensor:
        return torch.zeros_like(like) + like.new_tensor(self.constant_mean(like))

    def prior(self, like: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b u(z)^β)`` as tensors like ``like``, with ``z``'s batch shape."""
        a, b = like.new_tensor(self.concentration), like.new_tensor(self.rate)
        return a, b * self.deviation_size(z.to(like)).pow(self.exponent)

    def draws(self, x: Optional[Tensor], z: Tensor, levels: Optional[Tensor]) -> Tensor:
        return dist.InverseGamma(*self.prior(z, z.squeeze(-2))).sample()  # one per draw of z

    def sample_sites(self, prefix: str, x: Tensor, z: Tensor, like: Tensor, multivariate: bool, hide_params) -> Tensor:
        return pyro.sample(prefix + "noise_variance", dist.InverseGamma(*self.prior(like, z)))

    def mixture(self, parts: MixtureParts, num_components: int) -> tuple[Tensor, Tensor]:
        """``σ²`` and the function are dependent, so ``z`` is integrated too: ``K = 16 · num_components`` components
        ``N(μ(x) + Φ(x)^T z_k, σ²_k)`` over one low-discrepancy set of ``(z_k, σ²_k)`` (:func:`factor_nodes`):
        ``σ²_k`` is the quantile of ``IG(a, b u(z_k)^β)`` at the node's level."""
        mean = parts.mean
        z, levels = factor_nodes(parts.num_factors, self.mixture_factor * num_components, mean, with_levels=True)
        # IG(a, s b) quantiles are s × IG(a, b) quantiles.
        unit = torch.as_tensor(invgamma.ppf(levels.numpy(), self.concentration, scale=self.rate)).to(mean)
        noise = (unit * self.deviation_size(z).pow(self.exponent)).unsqueeze(-1)  # (K, 1)
        means = combine(mean, parts.loading, z.unsqueeze(-2))  # (K, m)
        check_finite_outputs((means,), parts.x, mean.dtype, "x")
        return means, (noise + parts.nugget).expand_as(means).clone()

    def record(self) -> tuple[list, dict, dict]:
        return [self.concentration, self.rate], {"exponent": self.exponent, "gram": self.gram.double().cpu().tolist()}, {}
