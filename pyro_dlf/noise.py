r"""The regression teachers' noise variances as inverse-gamma draws (SPEC §2, §6)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["fit_inverse_gamma", "inverse_gamma_quantiles"]

#: Concentration used when all variances are equal (the MLE is a point mass).
POINT_MASS_CONCENTRATION = 1e6


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
    if not isinstance(variances, Tensor):
        variances = torch.as_tensor(variances, dtype=torch.float64)
    v = variances.detach().double().reshape(-1)
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
            "check those teachers", UserWarning, stacklevel=2)
    return a, a / float(tau.mean())


def inverse_gamma_quantiles(concentration: float, rate: float, num: int) -> Tensor:
    r"""``num`` equal-probability nodes of ``IG(a, b)``: the quantiles at ``(k − ½)/num``.

    A deterministic quadrature of the noise mixture (lower variance than random
    draws) used for the student's predictive density and its metrics.
    """
    from scipy.stats import invgamma

    probs = (torch.arange(num, dtype=torch.float64) + 0.5) / num
    return torch.as_tensor(invgamma.ppf(probs.numpy(), concentration, scale=rate), dtype=torch.float64)
