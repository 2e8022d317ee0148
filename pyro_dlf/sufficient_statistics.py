r"""Closed-form algebra of the (noisy) deep latent factor model.

Everything exact in the DLF model -- the E-step, the marginal likelihood and the
closed-form noise update -- depends on the design points only through a few
small sums, so it can be computed by streaming over minibatches of design
points with memory independent of their number ``m``.

Notation (mathematics §3–4). ``n`` teachers, ``m`` design points, ``q`` factors,
``c`` classes (multivariate models only). For teacher ``i`` the residual is
``r_i = f_i - μ`` (univariate, ``R^m``) or ``R_i = F_i - M`` (multivariate,
``R^{m×c}``), and ``Φ ∈ R^{m×q}`` stacks the loadings. The sufficient
statistics are

.. math::

    G = Φ^T Φ \in R^{q×q},\qquad
    A_i = Φ^T r_i \in R^q \ \ (\text{multivariate: } A_i = R_i^T Φ \in R^{c×q}),
    \qquad s_i = \|r_i\|^2 .

Univariate posterior (``C = I_q + G/σ^2``):
``S = C^{-1}``, ``E[z_i] = S A_i / σ^2``.

Full multivariate model (``Φ(x) ∈ R^{c×q}``, one ``z_i ∈ R^q``): the ``m·c``
(point, class) pairs are the rows of one design matrix, so it *is* the
univariate algebra with ``G = Σ_j Φ(x_j)^T Φ(x_j)``, ``A_i = Σ_j Φ(x_j)^T
r_i(x_j)`` and ``m·c`` observed scalars per teacher (mathematics §1, "full").

Multivariate posterior: with ``G = U D U^T`` and ``L^T L = V E V^T`` the
posterior precision ``Z ↦ Z + L^T L Z G / σ^2`` is diagonal in the basis
``\tilde Z = V^T Z U`` with entries ``1 + e_a d_b / σ^2``; the right-hand side
is ``L^T A_i / σ^2``.

Teachers observed on different design points (mathematics §4; e.g. out-of-fold
values): with ``O_i`` the points where teacher ``i`` is observed (a boolean
mask), every sum above runs over ``O_i`` only, so each teacher has its own
Gram ``G_i = Σ_{j∈O_i} Φ_j^T Φ_j``, posterior ``C_i^{-1}`` and ``|O_i|``
observed scalars (univariate and full models).

A nugget that varies over the design points, ``σ_f^2 w_j`` (mathematics §9.4), is
whitened away: dividing ``μ``, ``Φ`` and ``f`` at point ``j`` by ``\sqrt{w_j}`` gives the
model above with the nugget ``σ_f^2``, and the log-density gains ``-\tfrac12 \sum_j \log w_j``
(per observed scalar), kept in :attr:`FactorStatistics.log_weight`.

Marginal likelihood (determinant lemma and Woodbury, never an ``m×m`` matrix):

.. math::

    \log p(f_i) = -\tfrac12\Big[N \log 2π + N \log σ^2 + \log|C|
        + \big(s_i - \langle W^T r_i, E[z_i]\rangle\big)/σ^2\Big],

with ``N = m`` (``mc``), ``W^T r_i = A_i`` (``L^T A_i``) and
``\log|C| = -\sum \log(\text{posterior variances in the eigenbasis})``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "FactorStatistics",
    "FactorPosterior",
    "batch_statistics",
    "factor_posterior",
    "log_marginal_likelihood",
    "combine",
    "expected_squared_error",
    "expected_squared_error_from_statistics",
    "observed_count",
    "whiten",
    "log_weight_sum",
]


@dataclass
class FactorStatistics:
    """Sufficient statistics of teacher residuals at fixed network parameters.

    :ivar gram: ``Φ^T Φ``, shape ``(q, q)``; with an observation mask one Gram
        per teacher over its observed points, ``(n, q, q)``.
    :ivar cross: ``Φ^T r_i`` stacked, ``(n, q)``; multivariate ``R_i^T Φ``, ``(n, c, q)``.
    :ivar residual_sq: ``\\|r_i\\|^2``, shape ``(n,)``.
    :ivar num_points: the number of design points ``m`` summed over.
    :ivar outputs_per_point: scalar rows per design point in the univariate-form
        statistics: 1 (univariate model) or ``c`` (the full multivariate model,
        whose ``(point, class)`` pairs are the rows); the separable model keeps
        its classes in ``cross`` instead.
    :ivar log_weight: ``Σ log w_j`` over the observed scalars of a nugget that varies
        over the points (:func:`whiten`); 0 for a constant nugget, ``(n,)`` with a mask.
    """

    gram: Tensor
    cross: Tensor
    residual_sq: Tensor
    num_points: int
    outputs_per_point: int = 1
    observed_counts: Optional[Tensor] = None
    log_weight: object = 0.0

    @property
    def masked(self) -> bool:
        """Teachers observed on different design points (per-teacher Grams)."""
        return self.observed_counts is not None

    def entries(self):
        """Observed scalars per teacher: an int, or ``(n,)`` counts with an observation mask."""
        return self.num_entries if self.observed_counts is None else self.observed_counts * self.outputs_per_point

    @property
    def multivariate(self) -> bool:
        return self.cross.dim() == 3

    @property
    def num_members(self) -> int:
        return self.cross.shape[0]

    @property
    def num_entries(self) -> int:
        """Observed scalars per teacher, ``m`` or ``m·c``."""
        return self.num_points * (self.cross.shape[1] if self.multivariate else self.outputs_per_point)

    def __add__(self, other: "FactorStatistics") -> "FactorStatistics":
        # Sums over disjoint sets of design points add: this is what lets the
        # E-step stream over minibatches (and all-reduce across workers).
        return FactorStatistics(
            self.gram + other.gram,
            self.cross + other.cross,
            self.residual_sq + other.residual_sq,
            self.num_points + other.num_points,
            self.outputs_per_point,
            None if self.observed_counts is None else self.observed_counts + other.observed_counts,
            self.log_weight + other.log_weight,
        )


@dataclass
class FactorPosterior:
    r"""Gaussian posterior of the latent factors given the teachers.

    Univariate: ``z_i ~ N(mean[i], covariance)``, ``covariance = (I + G/σ^2)^{-1}``
    shared by all teachers; with an observation mask one per teacher,
    ``covariance`` ``(n, q, q)`` and ``variances`` ``(n, q)``.

    Multivariate: ``Z_i = V \tilde Z_i U^T`` with independent
    ``\tilde Z_{i,ab} ~ N(\tilde m_{i,ab}, variances[a, b])``.
    ``covariance`` is then ``None`` and ``class_basis = V`` (``c×c``),
    ``factor_basis = U`` (``q×q``) carry the eigenbases.
    """

    mean: Tensor
    variances: Tensor
    covariance: Optional[Tensor] = None
    class_basis: Optional[Tensor] = None
    factor_basis: Optional[Tensor] = None

    @property
    def multivariate(self) -> bool:
        return self.mean.dim() == 3

    def dense_covariance(self) -> Tensor:
        """The posterior covariance of ``vec(z_i)`` (row-major for ``Z_i``), shared by all i."""
        if not self.multivariate:
            return self.covariance
        basis = torch.kron(self.class_basis, self.factor_basis)
        return (basis * self.variances.reshape(-1)) @ basis.T

    def to(self, dtype: torch.dtype) -> "FactorPosterior":
        conv = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return FactorPosterior(
            conv(self.mean), conv(self.variances), conv(self.covariance),
            conv(self.class_basis), conv(self.factor_basis),
        )


def whiten(mean: Tensor, loading: Tensor, f: Tensor, weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    r"""``μ``, ``Φ`` and ``f`` divided by ``\sqrt{w_j}`` at each design point ``j``.

    A nugget ``σ_f^2 w_j`` becomes ``σ_f^2`` (mathematics §9.4); ``weight`` ``(b,)`` or ``None``
    (a constant nugget: the inputs come back unchanged).
    """
    if weight is None:
        return mean, loading, f
    scale = weight.rsqrt()
    per = lambda t, lead: scale.reshape((1,) * lead + (-1,) + (1,) * (t.dim() - lead - 1))  # noqa: E731
    return mean * per(mean, 0), loading * per(loading, 0), f * per(f, 1)


def log_weight_sum(weight: Optional[Tensor], f: Tensor, observed: Optional[Tensor] = None):
    """``Σ log w_j`` over the observed scalars of ``f`` (``(n, b)`` or ``(n, b, c)``): a float-typed
    scalar, ``(n,)`` with an ``observed`` mask, or 0 without ``weight``."""
    if weight is None:
        return 0.0
    log_w = weight.log() * (f.shape[-1] if f.dim() == 3 else 1)  # every class of a point shares w_j
    if observed is None:
        return log_w.sum()  # the same for every teacher
    return observed.to(log_w.dtype) @ log_w


def batch_statistics(mean: Tensor, loading: Tensor, f: Tensor, dtype: Optional[torch.dtype] = torch.float64,
                     observed: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> FactorStatistics:
    """Sufficient statistics of one minibatch of ``b`` design points.

    :param mean: ``μ`` at the batch, ``(b,)`` or ``(b, c)``.
    :param loading: ``Φ`` at the batch, ``(b, q)``, or ``(b, c, q)`` for the
        full multivariate model (then the statistics are the univariate ones of
        the ``b·c`` stacked (point, class) rows).
    :param f: teacher values at the batch, ``(n, b)`` or ``(n, b, c)``.
    :param dtype: accumulation dtype; float64 by default because the marginal
        likelihood subtracts two nearly equal sums when ``σ_f^2`` is small.
    :param observed: optional boolean mask ``(n, b)``: teacher ``i`` is observed
        at point ``j`` (univariate and full models); values at unobserved
        entries are ignored (they may be NaN).
    :param weight: the nugget's relative size ``w_j`` at each point, ``(b,)`` (mathematics §9.4), or ``None``.
    """
    if dtype is not None:
        mean, loading, f = mean.to(dtype), loading.to(dtype), f.to(dtype)
        weight = None if weight is None else weight.to(dtype)
    stats = _batch_statistics(*whiten(mean, loading, f, weight), observed)
    stats.log_weight = log_weight_sum(weight, f, observed)
    return stats


def _batch_statistics(mean: Tensor, loading: Tensor, f: Tensor, observed: Optional[Tensor]) -> FactorStatistics:
    residual = f - mean
    if observed is not None:
        if loading.dim() == 2 and residual.dim() == 3:
            raise NotImplementedError("observed: teachers observed on different points are supported by the univariate and full models, not the separable one")
        weight = observed.to(residual.dtype)
        if residual.dim() == 3:
            weight = weight.unsqueeze(-1).expand_as(residual)
        residual = torch.where(weight > 0, residual, torch.zeros_like(residual))
        rows = loading.reshape(-1, loading.shape[-1])
        w = weight.reshape(weight.shape[0], -1)
        flat = residual.reshape(residual.shape[0], -1)
        gram = torch.einsum("nr,rq,rk->nqk", w, rows, rows)
        per_point = loading.shape[1] if loading.dim() == 3 else 1
        return FactorStatistics(gram, flat @ rows, flat.pow(2).sum(1), loading.shape[0], per_point,
                                observed.to(residual.dtype).sum(1))
    if loading.dim() == 3:
        b, c, q = loading.shape
        rows = loading.reshape(b * c, q)
        flat = residual.reshape(residual.shape[0], b * c)
        return FactorStatistics(rows.T @ rows, flat @ rows, flat.pow(2).sum(1), b, c)
    gram = loading.T @ loading
    if residual.dim() == 3:
        cross = torch.einsum("nbc,bq->ncq", residual, loading)
        residual_sq = residual.pow(2).sum((1, 2))
    else:
        cross = residual @ loading
        residual_sq = residual.pow(2).sum(1)
    return FactorStatistics(gram, cross, residual_sq, loading.shape[0])


def factor_posterior(stats: FactorStatistics, noise_variance: Tensor, class_factor: Optional[Tensor] = None) -> FactorPosterior:
    """Closed-form E-step (mathematics §4) from sufficient statistics.

    :param noise_variance: ``σ_f^2`` (scalar tensor).
    :param class_factor: ``L`` (``c×c`` lower-triangular), multivariate only.
    """
    dtype = stats.cross.dtype
    noise = torch.as_tensor(noise_variance, dtype=dtype)
    q = stats.gram.shape[-1]
    eye = torch.eye(q, dtype=dtype, device=stats.gram.device)
    if stats.masked:
        # One posterior per teacher: C_i = I + G_i / σ².
        chol = torch.linalg.cholesky(eye + stats.gram / noise)
        covariance = torch.cholesky_inverse(chol)
        mean = torch.einsum("nqk,nk->nq", covariance, stats.cross) / noise
        variances = 1.0 / (1.0 + torch.linalg.eigvalsh(stats.gram).clamp_min(0) / noise)
        return FactorPosterior(mean, variances, covariance=covariance)
    if not stats.multivariate:
        precision = eye + stats.gram / noise
        chol = torch.linalg.cholesky(precision)
        covariance = torch.cholesky_inverse(chol)
        mean = stats.cross @ covariance / noise  # S symmetric: (S A_i)^T = A_i^T S
        # Posterior variances in the eigenbasis of G carry log|C| for the likelihood.
        variances = 1.0 / (1.0 + torch.linalg.eigvalsh(stats.gram).clamp_min(0) / noise)
        return FactorPosterior(mean, variances, covariance=covariance)
    if class_factor is None:
        raise ValueError("class_factor: the multivariate posterior needs the class factor L")
    L = class_factor.to(dtype)
    d, U = torch.linalg.eigh(stats.gram)
    e, V = torch.linalg.eigh(L.T @ L)
    d, e = d.clamp_min(0), e.clamp_min(0)
    variances = 1.0 / (1.0 + e[:, None] * d[None, :] / noise)  # (c, q)
    rhs = torch.einsum("ka,nkq->naq", L, stats.cross) / noise  # L^T A_i / σ^2
    rotated = torch.einsum("ka,nkq,qb->nab", V, rhs, U) * variances
    mean = torch.einsum("ak,nkl,bl->nab", V, rotated, U)  # V Z~ U^T
    return FactorPosterior(mean, variances, class_basis=V, factor_basis=U)


def log_marginal_likelihood(stats: FactorStatistics, posterior: FactorPosterior, noise_variance: Tensor, class_factor: Optional[Tensor] = None) -> Tensor:
    """Exact per-teacher log marginal likelihood (mathematics §3), shape ``(n,)``.

    ``posterior`` must be the one computed from the same ``stats``.
    """
    dtype = stats.cross.dtype
    noise = torch.as_tensor(noise_variance, dtype=dtype)
    N = stats.entries()
    post = posterior.to(dtype)
    if stats.multivariate:
        projected = torch.einsum("ka,nkq->naq", class_factor.to(dtype), stats.cross)  # L^T A_i
        explained = (projected * post.mean).sum((1, 2))
    else:
        explained = (stats.cross * post.mean).sum(1)
    quad = (stats.residual_sq - explained) / noise
    # log|C|: one per teacher with an observation mask (variances (n, q), N (n,)), else shared.
    log_variances = post.variances.log()
    logdet = -(log_variances.sum(-1) if stats.masked else log_variances.sum()) + N * noise.log() + stats.log_weight
    return -0.5 * (N * math.log(2 * math.pi) + logdet + quad)


def observed_count(f: Tensor, observed: Optional[Tensor] = None) -> int:
    """Observed scalars in ``f``: all of them, or those of the ``(n, m)`` mask times the outputs per point."""
    return f.numel() if observed is None else int(observed.sum()) * (f.numel() // observed.numel())


def combine(mean: Tensor, loading: Tensor, z: Tensor, class_factor: Optional[Tensor] = None) -> Tensor:
    r"""Function values ``μ(x) + Φ(x)^T z`` (separable ``μ(x) + L Z Φ(x)``, full ``μ(x) + Φ(x) z``).

    ``z`` is either unbatched (``(q,)`` / ``(c, q)``) or has batch dimensions
    whose last one is a singleton aligned with the design-point dimension, as
    Pyro plates produce (``(..., 1, q)`` / ``(..., 1, c, q)``). The result is
    ``(..., m)`` or ``(..., m, c)``. A loading of shape ``(m, c, q)`` marks the
    full multivariate model (``z`` is then a ``q``-vector per draw).
    """
    # Contract over q without materializing a (..., m, q) product: drawing
    # S functions then costs one (S×q)·(q×m) matrix product.
    if loading.dim() == 3:
        if z.dim() > 1:
            z = z.squeeze(-2)
        return mean + torch.einsum("...q,mcq->...mc", z, loading)
    if class_factor is None:
        if z.dim() == 1:
            return mean + loading @ z
        return mean + (z @ loading.mT).squeeze(-2)
    if z.dim() > 2:
        z = z.squeeze(-3)
    return mean + torch.einsum("...cq,mq->...mc", z, loading) @ class_factor.mT


def expected_squared_error(mean: Tensor, loading: Tensor, f: Tensor, posterior: FactorPosterior, class_factor: Optional[Tensor] = None,
                           observed: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tensor:
    r"""``Σ_i E‖f_i − μ − Φ z_i‖²`` over one batch, under a fixed posterior.

    This is the data term of the expected complete-data log-likelihood ``Q``
    (mathematics §4), differentiable in ``μ``, ``Φ`` and ``L`` with the posterior held
    fixed. It is computed from residuals directly (no cancellation):

    * univariate and full: ``Σ_i ‖r_i − Φ E z_i‖² + n · tr(S Φ^T Φ)`` (full:
      ``Φ`` the stacked ``(point, class)`` rows);
    * multivariate: ``Σ_i ‖R_i − Φ E Z_i^T L^T‖² +
      n Σ_a (V^T L^T L V)_{aa} Σ_b s_{ab} (U^T Φ^T Φ U)_{bb}``;
    * with an ``observed`` mask (univariate, full): both sums over each
      teacher's observed entries only, ``Σ_i Σ_{j∈O_i} [(r_ij − Φ_j E z_i)² + Φ_j S_i Φ_j^T]``.

    With ``weight`` (``(b,)``, a nugget ``σ_f^2 w_j``) every term is divided by ``w_j`` (:func:`whiten`).
    """
    mean, loading, f = whiten(mean, loading, f, weight)
    post = posterior.to(loading.dtype)
    n = f.shape[0]
    if observed is not None:
        fitted = combine(mean, loading, post.mean.unsqueeze(-2))
        rows = loading.reshape(loading.shape[0], -1, loading.shape[-1])  # (b, c or 1, q)
        covariance = post.covariance if post.covariance.dim() == 3 else post.covariance.expand(n, -1, -1)
        per_entry = torch.einsum("bcq,nqk,bck->nbc", rows, covariance, rows)
        keep = observed.unsqueeze(-1) if f.dim() == 3 else observed
        # The inner where keeps unobserved values (possibly NaN) out of the graph: a NaN there would
        # turn the masked-out gradient 0 · NaN into NaN.
        residual = torch.where(keep, torch.where(keep, f, torch.zeros_like(f)) - fitted, torch.zeros_like(fitted))
        return residual.pow(2).sum() + (per_entry * observed.unsqueeze(-1).to(per_entry.dtype)).sum()
    if class_factor is None:
        fitted = combine(mean, loading, post.mean.unsqueeze(-2))
        trace = (loading @ post.covariance * loading).sum()
    else:
        fitted = combine(mean, loading, post.mean.unsqueeze(-3), class_factor)
        lv = class_factor @ post.class_basis
        rotated = loading @ post.factor_basis  # (b, q): U^T Φ_j
        trace = (lv.pow(2).sum(0) @ post.variances @ rotated.pow(2).sum(0))
    return (f - fitted).pow(2).sum() + n * trace


def expected_squared_error_from_statistics(stats: FactorStatistics, posterior: FactorPosterior,
                                           class_factor: Optional[Tensor] = None) -> Tensor:
    r""":func:`expected_squared_error` summed over the design points, from their statistics alone.

    The statistics at θ and a posterior held fixed determine it (mathematics §4.3), so the
    ``σ_f^2`` update needs no pass over the data beyond the one that sums the statistics:

    * univariate and full (per-teacher ``G_i``, ``S_i`` with a mask):
      ``Σ_i [‖r_i‖² − 2 m_i^T Φ^T r_i + m_i^T G_i m_i + tr(G_i S_i)]``;
    * separable, with ``A_i = L M_i`` (``c×q``) and ``G = Φ^T Φ``:
      ``Σ_i [‖R_i‖² − 2 ⟨R_i^T Φ, A_i⟩ + ⟨A_i G, A_i⟩] +
      n Σ_a (V^T L^T L V)_{aa} Σ_b s_{ab} (U^T G U)_{bb}``.

    Computed in the statistics' dtype (float64 by default): the sums cancel where the factors
    explain most of the residual, ``‖r‖²`` against a small remainder, and float64 keeps
    ``10^{-16}`` of ``‖r‖²``.
    """
    post = posterior.to(stats.gram.dtype)
    gram, cross, mean = stats.gram, stats.cross, post.mean
    if class_factor is None:
        fitted = mean.unsqueeze(-2) @ gram @ mean.unsqueeze(-1) if gram.dim() == 3 else (mean @ gram * mean).sum(-1)
        trace = (gram * post.covariance.mT).sum((-2, -1))  # tr(G S), per teacher with a mask
        return (stats.residual_sq - 2 * (mean * cross).sum(-1) + fitted.reshape(-1)).sum() + trace.expand(mean.shape[0]).sum()
    loaded = class_factor.to(gram.dtype) @ mean  # (n, c, q): L M_i
    trace = (class_factor.to(gram.dtype) @ post.class_basis).pow(2).sum(0) @ post.variances @ (
        post.factor_basis.mT @ gram @ post.factor_basis).diagonal()
    return (stats.residual_sq - 2 * (cross * loaded).sum((-2, -1)) + (loaded @ gram * loaded).sum((-2, -1))).sum() + mean.shape[0] * trace
