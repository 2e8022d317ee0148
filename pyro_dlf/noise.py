r"""The regression teachers' noise variances as inverse-gamma draws (mathematics §2, §6).

:func:`fit_inverse_gamma` is the i.i.d. law: the variances are i.i.d. ``IG(a, b)``
draws, independent of the teachers' functions. :func:`fit_factor_inverse_gamma`
lets the scale follow the size of a teacher's deviation from the mean function
(its factors): on some data a teacher that strays further from the others is
also noisier, and an i.i.d. law pairs a far-out function draw with a typical
noise variance. The i.i.d. law is its ``β = 0`` case; ``distill`` uses the larger
law only when a likelihood-ratio test on the teachers rejects ``β = 0``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from pyro_dlf._validation import check_int, check_noise_variances, check_real
from pyro_dlf.sufficient_statistics import factor_posterior

__all__ = ["HeavyTailWarning", "FACTOR_NOISE_TEST_LEVEL", "FactorNoiseFit", "fit_factor_inverse_gamma", "fit_inverse_gamma", "fit_noise_given_factors",
           "inverse_gamma_quantiles"]

#: Concentration used when all variances are equal (the MLE is a point mass).
POINT_MASS_CONCENTRATION = 1e6


class HeavyTailWarning(UserWarning):
    """An inverse-gamma noise law with shape ``a ≤ 1``: it has no mean, so the predictive's
    aleatoric variance ``E[σ²] = b/(a − 1)`` is infinite (its draws and densities stay proper)."""


def fit_inverse_gamma(variances: Tensor, max_iter: int = 100, tol: float = 1e-12) -> tuple[float, float]:
    r"""Maximum-likelihood inverse-gamma ``IG(a, b)`` for i.i.d. variances ``σ²_1..σ²_n``.

    ``σ² ~ IG(a, b)`` iff the precision ``τ = 1/σ²`` is ``Gamma(a, rate=b)``, and the
    Jacobian does not involve ``(a, b)``, so the MLE is the gamma MLE on the
    precisions: with ``s = \log \bar τ − \overline{\log τ} ≥ 0``, ``a`` solves
    ``\log a − ψ(a) = s`` (Newton's method in ``1/a`` from Minka's starting
    value, Minka 2002) and ``b = a / \bar τ``.

    When all variances are equal, ``s = 0`` and the MLE degenerates to a point
    mass: ``a`` is then set to a large value (``1e6``) with a warning.

    :param variances: positive, finite, at least two values.
    :returns: ``(concentration a, rate b)`` as floats.
    """
    # One positive finite variance per teacher (a tensor, array or list): refuses None, text, booleans, complex values.
    if isinstance(variances, (str, bytes)) or variances is None or np.ndim(variances) == 0:
        raise TypeError(f"variances must be one noise variance per teacher (a tensor, array or list of at least 2 positive "
                        f"numbers), got {variances!r}")
    v = check_noise_variances(variances, int(np.shape(variances)[0]), "variances")
    max_iter = check_int(max_iter, "max_iter", 1, fix="Newton steps, e.g. max_iter=100")
    tol = check_real(tol, "tol", 0, fix="a relative tolerance, e.g. tol=1e-12")
    if v.numel() < 2:
        raise ValueError(f"variances: at least 2 teacher noise variances are needed to fit an inverse gamma, got {v.numel()}")
    if not torch.isfinite(v).all() or (v <= 0).any():
        raise ValueError("variances must be positive and finite; check the teachers' noise variance estimates")
    tau = 1.0 / v
    s = float(tau.mean().log() - tau.log().mean())
    if s < 1e-12:
        warnings.warn("variances are all equal: the inverse-gamma MLE is a point mass; using concentration 1e6", UserWarning, stacklevel=2)
        a = POINT_MASS_CONCENTRATION
    else:
        a = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
        for _ in range(max_iter):
            at = torch.tensor(a, dtype=torch.float64)
            g = math.log(a) - float(torch.digamma(at)) - s
            dg = 1 / a - float(torch.polygamma(1, at))
            new = 1 / (1 / a + g / (a * a * dg))
            if not math.isfinite(new) or new <= 0:
                new = a / 2
            done = abs(new - a) < tol * a
            a = new
            if done:
                break
    if a <= 1:
        warnings.warn(
            f"teacher_noise_variances: the fitted inverse gamma has shape a = {a:.3g} <= 1, so its mean -- the predictive's "
            "aleatoric variance -- is infinite (a heavy tail: a few teachers' noise variances are far larger than the rest); "
            "check those teachers", HeavyTailWarning, stacklevel=2)
    return a, a / float(tau.mean())


def inverse_gamma_quantiles(concentration: float, rate: float, num: int) -> Tensor:
    r"""``num`` equal-probability nodes of ``IG(a, b)``: the quantiles at ``(k − ½)/num``.

    A deterministic quadrature of the noise mixture (lower variance than random
    draws) used for the student's predictive density and its metrics.
    """
    from scipy.stats import invgamma

    probs = (torch.arange(num, dtype=torch.float64) + 0.5) / num
    return torch.as_tensor(invgamma.ppf(probs.numpy(), concentration, scale=rate), dtype=torch.float64)


#: The likelihood-ratio test level at which the factor-dependent law replaces the i.i.d. one.
FACTOR_NOISE_TEST_LEVEL = 0.01


@dataclass(frozen=True)
class FactorNoiseFit:
    r"""The teachers' noise variances as inverse-gamma draws whose scale follows their factors.

    ``σ²_i | z_i ~ IG(a, b · u(z_i)^β)`` with ``u(z) = z^T \hat G z``, where
    ``\hat G = Φ^T Φ / tr(Φ^T Φ)`` over the design points: ``u`` is the mean squared
    size of the function deviation ``Φ z`` across the design points, relative to its
    prior mean (``E[u] = 1`` under ``z ~ N(0, I)``). ``β = 0`` is the i.i.d. law of
    :func:`fit_inverse_gamma`.

    :ivar concentration: ``a``.
    :ivar rate: ``b`` (the rate at ``u = 1``, a typical draw).
    :ivar exponent: ``β``.
    :ivar gram: ``\hat G`` (``q×q``, trace 1).
    :ivar statistic: the likelihood-ratio statistic ``2(ℓ_β − ℓ_0)`` against ``β = 0``
        (``χ²_1`` under the i.i.d. law).
    :ivar p_value: its ``χ²_1`` tail probability.
    """

    concentration: float
    rate: float
    exponent: float
    gram: Tensor
    statistic: float
    p_value: float

    def as_dict(self) -> dict:
        return {"concentration": self.concentration, "rate": self.rate, "exponent": self.exponent,
                "statistic": self.statistic, "p_value": self.p_value}


def _inverse_gamma_loglik(a: float, scales: Tensor, tau: Tensor) -> tuple[float, float]:
    """``(log-likelihood, b)`` of precisions ``τ_i ~ Gamma(a, rate=b s_i)`` at the profile MLE of ``b``."""
    n = tau.numel()
    b = n * a / float((scales * tau).sum())
    rates = b * scales
    ll = float((a * rates.log() - math.lgamma(a) + (a - 1) * tau.log() - rates * tau).sum())
    return ll, b


def fit_factor_inverse_gamma(variances: Tensor, deviations: Tensor, gram: Tensor) -> FactorNoiseFit:
    r"""Maximum-likelihood ``IG(a, b · u_i^β)`` for teacher noise variances ``σ²_i`` given ``u_i``.

    ``u_i = E[z_i^T \hat G z_i | f_i]``, teacher ``i``'s expected deviation size under its
    factor posterior (the caller computes it). As in :func:`fit_inverse_gamma` the fit
    is on the precisions ``τ_i = 1/σ²_i ~ Gamma(a, rate = b u_i^β)``; ``b`` has the closed
    form ``n a / Σ_i u_i^β τ_i`` at fixed ``(a, β)``, and ``(log a, β)`` are found by
    Nelder--Mead from the i.i.d. fit (``β = 0``).

    :param variances: ``(n,)`` positive teacher noise variances.
    :param deviations: ``(n,)`` positive ``u_i``.
    :param gram: ``\hat G`` to store with the fit (``q×q``).
    """
    from scipy.optimize import minimize
    from scipy.stats import chi2

    tau = 1.0 / variances.detach().double().reshape(-1)
    u = deviations.detach().double().reshape(-1)
    if u.numel() != tau.numel() or not torch.isfinite(u).all() or (u <= 0).any():
        raise ValueError(f"deviations: need {tau.numel()} positive finite values, one per teacher")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the shape warning belongs to the caller's own fit
        a0, _ = fit_inverse_gamma(1.0 / tau)
    log_u = u.log()
    base, _ = _inverse_gamma_loglik(a0, torch.ones_like(u), tau)

    def negative(p):
        a = math.exp(min(float(p[0]), 30.0))
        return -_inverse_gamma_loglik(a, (float(p[1]) * log_u).exp(), tau)[0]

    best = minimize(negative, [math.log(a0), 0.0], method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    a, beta = math.exp(min(float(best.x[0]), 30.0)), float(best.x[1])
    ll, b = _inverse_gamma_loglik(a, (beta * log_u).exp(), tau)
    statistic = max(2.0 * (ll - base), 0.0)
    return FactorNoiseFit(a, b, beta, gram.detach().double().cpu(), statistic, float(chi2.sf(statistic, 1)))


def fit_noise_given_factors(model, x: Tensor, f: Tensor, variances: Tensor, observed: Optional[Tensor] = None,
                            batch_size: Optional[int] = None) -> FactorNoiseFit:
    r"""The teachers' noise variances against their factors under a fitted one-output
    :class:`~pyro_dlf.models.DeepLatentFactor`: ``u_i = E[z_i^T \hat G z_i | f_i]`` under the exact
    factor posterior (mean ``m_i``, covariance ``C_i``: ``u_i = m_i^T \hat G m_i + tr(\hat G C_i)``),
    ``\hat G = Φ^T Φ / tr(Φ^T Φ)`` over all design points, then :func:`fit_factor_inverse_gamma`.

    :param model: the fitted model (``student.dlf``).
    :param x: its design points; ``f``: the teachers' values there ``(n, m)``;
        ``observed``: their observation mask, as in the fit.
    :param variances: the ``n`` teacher noise variances.
    """
    stats = model.statistics(x, f, batch_size, observed)
    posterior = factor_posterior(stats, model.noise_variance.detach())
    gram = (stats.gram.sum(0) if stats.masked else stats.gram).double()  # the loadings over all design points
    gram = gram / gram.trace().clamp_min(torch.finfo(torch.float64).tiny)
    mean, covariance = posterior.mean.double(), posterior.covariance.double()
    deviations = ((mean @ gram) * mean).sum(-1) + (gram * covariance).sum((-2, -1))
    return fit_factor_inverse_gamma(torch.as_tensor(variances, dtype=torch.float64), deviations, gram)
