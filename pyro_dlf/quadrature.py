r"""Deterministic integration against a standard Gaussian (mathematics §6.1).

The classification predictive is ``E_u[g(μ(x) + B(x) u)]`` with ``u ~ N(0, I_d)``
and ``g`` the softmax (or an entropy); ``d`` is small (the number of factors
of the full model). A fixed rule ``Σ_k w_k g(μ + B u_k)`` replaces ``S`` draws:

* a tensor-product Gauss–Hermite rule with ``k`` points per axis when
  ``k^d`` fits the node budget for some ``k ≥ 3``: positive weights, exact for
  every polynomial of degree ``≤ 2k − 1`` in each coordinate;
* otherwise ``K`` scrambled Sobol points (fixed seed) mapped through the normal
  quantile, each with its mirror image ``−u`` (equal weights): the nodes' mean is
  exactly zero and their odd moments cancel.

Both rules have positive weights summing to one, so a rule applied to
probabilities returns probabilities and the entropy decomposition keeps its
signs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["GaussianRule", "gauss_hermite_rule", "sobol_rule", "monte_carlo_rule", "scrambled_sobol", "gaussian_rule",
           "softmax_summary", "integrate_softmax"]

#: Points per axis beyond which a one-dimensional Gauss–Hermite rule gains nothing here.
_MAX_POINTS_PER_AXIS = 32

#: Logits evaluated at once by :func:`integrate_softmax` (about 512 KB in float32 per buffer): small
#: enough that the three reused buffers stay in the cache, large enough that the per-chunk calls are few.
_CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class GaussianRule:
    """Nodes and weights of a rule for ``E g(u)``, ``u ~ N(0, I_d)``.

    :ivar nodes: ``(K, d)``, float64.
    :ivar weights: ``(K,)``, positive, summing to one, float64.
    :ivar name: what the rule is, e.g. ``"Gauss–Hermite 4^4"``.
    """

    nodes: Tensor
    weights: Tensor
    name: str

    @property
    def num_nodes(self) -> int:
        return int(self.weights.shape[0])

    def to(self, like: Tensor) -> "GaussianRule":
        """The rule in ``like``'s dtype and device."""
        return GaussianRule(self.nodes.to(like), self.weights.to(like), self.name)


def gauss_hermite_rule(dim: int, points: int) -> GaussianRule:
    r"""The tensor product of ``points``-point Gauss–Hermite rules (probabilists' weight): ``points^dim`` nodes."""
    x, w = np.polynomial.hermite_e.hermegauss(points)
    axis_nodes, axis_weights = torch.from_numpy(x), torch.from_numpy(w / w.sum())
    nodes = torch.cartesian_prod(*[axis_nodes] * dim).reshape(-1, dim)
    weights = torch.cartesian_prod(*[axis_weights] * dim).reshape(-1, dim).prod(-1)
    return GaussianRule(nodes, weights / weights.sum(), f"Gauss–Hermite {points}^{dim}")


def scrambled_sobol(dim: int, num: int, seed: int = 0) -> Tensor:
    """``num`` scrambled Sobol points in ``(0, 1)^dim`` (float64), kept off the ends so quantiles stay finite."""
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    return engine.draw(num, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)


def sobol_rule(dim: int, num: int) -> GaussianRule:
    """``num`` (even) equal-weight nodes: ``num / 2`` normal-quantile Sobol points and their mirror images."""
    half = torch.special.ndtri(scrambled_sobol(dim, num // 2))
    nodes = torch.cat([half, -half])
    return _equal_weights(nodes, f"mirrored Sobol {nodes.shape[0]}")


def monte_carlo_rule(dim: int, num: int, seed: int = 0) -> GaussianRule:
    """``num`` standard normal draws (float64, from a generator seeded ``seed``) with equal weights: ``S`` draws
    written as a rule, to measure a fixed rule against the Monte Carlo predictive it replaces."""
    nodes = torch.randn(num, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return _equal_weights(nodes, f"{num:,} draws (seed {seed})")


def _equal_weights(nodes: Tensor, name: str) -> GaussianRule:
    """The rule of ``nodes`` (K, d) with weight 1 / K each."""
    return GaussianRule(nodes, torch.full((nodes.shape[0],), 1.0 / nodes.shape[0], dtype=torch.float64), name)


def gaussian_rule(dim: int, max_nodes: int = 512) -> GaussianRule:
    """The rule the predictive uses for ``dim`` factors under a budget of ``max_nodes`` nodes.

    Gauss–Hermite with the most points per axis ``k`` such that ``k^dim ≤ max_nodes``,
    when that ``k`` is at least 3 (degree 5 per axis); otherwise the mirrored Sobol rule
    with ``max_nodes`` nodes (rounded down to even). Arguments are checked by the caller.
    """
    points = min(_MAX_POINTS_PER_AXIS, int(math.floor(max_nodes ** (1.0 / dim) + 1e-9)))
    while points ** dim > max_nodes:  # guard the floating root
        points -= 1
    if points >= 3:
        return gauss_hermite_rule(dim, points)
    return sobol_rule(dim, max(2, max_nodes - max_nodes % 2))


def softmax_summary(logits: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Probabilities and the entropy decomposition from logits at ``K`` nodes (mathematics §6.1).

    With ``p_k = softmax(f_k)`` and ``\bar p = Σ_k w_k p_k``: the expected entropy
    ``Σ_k w_k H[p_k]`` and the mutual information as ``Σ_k w_k KL(p_k ‖ \bar p)``, a sum
    whose terms ``p_k (\log p_k − \log \bar p)`` are formed elementwise, so a small
    mutual information is not the difference of two nearly equal entropies;
    the total entropy ``H[\bar p]`` is their sum (exact for weights summing to one).

    :param logits: ``(m, c, K)``: classes on dimension 1, so every reduction over the
        classes runs over contiguous node vectors. Left unchanged.
    :param weights: ``(K,)``, positive, summing to one.
    :return: ``(probs (m, c), total_entropy, expected_entropy, mutual_information)``, entropies ``(m,)`` in nats.
    """
    work = logits.clone(memory_format=torch.contiguous_format)
    return _summarise_(work, torch.empty_like(work), torch.empty_like(work), weights)


def _summarise_(logits: Tensor, p: Tensor, scratch: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`softmax_summary` in three ``(m, c, K)`` buffers: ``logits`` (overwritten), ``p`` and ``scratch``
    (any contents). One exponential per logit, every elementwise step in place: on the CPU the fresh
    temporaries and the second exponential of ``log_softmax(...).exp()`` cost more than the arithmetic."""
    logits.sub_(logits.amax(1, keepdim=True))
    torch.exp(logits, out=p)
    total = p.sum(1, keepdim=True)
    p.div_(total)
    log_p = logits.sub_(total.log_())
    probs = p @ weights
    expected = -(torch.mul(p, log_p, out=scratch).sum(1) @ weights)
    log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    mutual_information = (log_p.sub_(log_probs.unsqueeze(-1)).mul_(p).sum(1) @ weights).clamp_min(0.0)
    return probs, expected + mutual_information, expected, mutual_information


def integrate_softmax(mean: Tensor, factor: Tensor, rule: GaussianRule) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``E softmax(μ + B u)``, ``u ~ N(0, I_d)``, and its entropy decomposition at every input, by ``rule``.

    :param mean: ``μ``, ``(m, c)``.
    :param factor: ``B``, ``(m, c, d)``.
    :param rule: nodes and weights in ``mean``'s dtype and device.
    :return: as :func:`softmax_summary`. The inputs go in chunks of about 2^17 logits (all nodes
        of a few dozen inputs), one matrix product each for ``μ + B u_k`` at every node, written
        into buffers that every chunk reuses.
    """
    m, c, d = factor.shape
    k = rule.num_nodes
    rows = max(1, min(m, _CHUNK_ELEMENTS // (c * k)))
    logits, p, scratch = (mean.new_empty(rows * c, k) for _ in range(3))
    nodes = rule.nodes.T.contiguous()
    parts = []
    for start in range(0, m, rows):
        mu, loading = mean[start:start + rows], factor[start:start + rows]
        n = mu.shape[0] * c
        torch.addmm(mu.reshape(-1, 1), loading.reshape(-1, d), nodes, out=logits[:n])
        shape = (mu.shape[0], c, k)
        parts.append(_summarise_(logits[:n].view(shape), p[:n].view(shape), scratch[:n].view(shape), rule.weights))
    return tuple(torch.cat([part[i] for part in parts]) for i in range(4))
