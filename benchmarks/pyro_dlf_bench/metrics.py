"""Evaluation metrics shared by every benchmark in :mod:`pyro_dlf`.

This is the single metrics implementation used throughout the project, so every
number in a results table is computed the same way.  Everything is pure torch:
it works on any device, keeps the dtype of its inputs (float64 in, float64 out),
and needs no numpy.

Conventions
-----------
* A regression predictive distribution is a **Gaussian mixture** per input:
  ``means`` and ``variances`` of shape ``(K, m)`` (``K`` components, ``m``
  inputs) with optional mixture ``weights`` of shape ``(K,)`` that default to
  ``1/K``.  Where noted, 1-D ``(m,)`` means/variances are accepted and treated
  as a single Gaussian (``K = 1``).
* Classification predictions are probabilities ``probs`` of shape ``(m, c)``
  with integer ``labels`` of shape ``(m,)``.
* ``reduction="none"`` returns one value per input; ``reduction="mean"`` (the
  default) returns the mean over inputs as a 0-d tensor.
* Bad inputs raise :class:`ValueError` or :class:`TypeError` with a message
  that names the offending argument and says how to fix it.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "rmse",
    "gaussian_nll",
    "gaussian_crps",
    "mixture_nll",
    "mixture_crps",
    "sample_crps",
    "mixture_quantile",
    "interval_coverage",
    "variance_ratio",
    "accuracy",
    "categorical_nll",
    "brier_score",
    "expected_calibration_error",
    "reliability_bins",
    "calibrated_ece_floor",
    "overconfidence",
    "mean_and_standard_error",
    "paired_difference",
    "paired_ratio_difference",
    "seed_averaged_paired_difference",
    "rouge_l",
    "entropy_decomposition",
    "auroc",
    "count_parameters",
    "time_call",
]

_REDUCTIONS = ("mean", "none")

# Upper bound on the number of elements of one pairwise (rows, K, inputs)
# temporary in mixture_crps; a handful of such temporaries live at once, so this
# keeps peak memory to a few hundred MB in float64 regardless of K and m.
_MAX_CHUNK_ELEMENTS = 2**23

# Fixed bisection budget for mixture_quantile: each step halves the bracket, so
# 60 steps shrink it by 2**-60 (~1e-18), below float64 resolution.
_BISECTION_STEPS = 60

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- #
# Input validation helpers
# --------------------------------------------------------------------------- #
def _check_tensor(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor, got {type(x).__name__}; "
            f"convert it with torch.as_tensor({name})."
        )
    return x


def _check_nonempty(name: str, x: Tensor) -> None:
    if x.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(x.shape)}); pass at least one value.")


def _to_float(named: Sequence[Tuple[str, Any]]) -> list[Tensor]:
    """Type-check tensors, require one device, and cast to a common float dtype."""
    tensors = [_check_tensor(name, x) for name, x in named]
    device = tensors[0].device
    for (name, _), t in zip(named, tensors):
        if t.device != device:
            raise ValueError(
                f"`{name}` is on {t.device} but `{named[0][0]}` is on {device}; "
                f"move all inputs to the same device with .to(device)."
            )
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"`{name}` must be a real floating-point tensor, got dtype {t.dtype}.")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        # Integer targets/means are legal; compute in the default float dtype.
        dtype = torch.get_default_dtype()
    return [t.to(dtype) for t in tensors]


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    return values.mean() if reduction == "mean" else values


def _sum_tolerance(dtype: torch.dtype) -> float:
    # 1e-6 in float64; a little looser for float32 (softmax / uniform weights
    # accumulate a few ulps); capped so half precision is not absurdly loose.
    return max(1e-6, min(100.0 * torch.finfo(dtype).eps, 1e-2))


def _check_positive(name: str, x: Tensor) -> None:
    # `x > 0` is False for NaN, so this also rejects NaN; isfinite rejects inf.
    if not bool(torch.all((x > 0) & torch.isfinite(x))):
        bad = x[~((x > 0) & torch.isfinite(x))]
        raise ValueError(
            f"`{name}` must be strictly positive and finite; found {bad.numel()} bad value(s) "
            f"(e.g. {bad.flatten()[0].item()!r}). Clamp it, e.g. {name}.clamp_min(1e-12), "
            f"or check how it was computed."
        )


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` has shape {tuple(a.shape)} but `{name_b}` has shape {tuple(b.shape)}; "
            f"they must match exactly (no implicit broadcasting, to avoid silent (m,1) vs (m,) bugs)."
        )


def _check_gaussian(mean: Any, variance: Any, y: Any) -> Tuple[Tensor, Tensor, Tensor]:
    mean, variance, y = _to_float((("mean", mean), ("variance", variance), ("y", y)))
    _check_nonempty("y", y)
    _check_same_shape("mean", mean, "y", y)
    _check_same_shape("variance", variance, "mean", mean)
    _check_positive("variance", variance)
    return mean, variance, y


def _check_weights(weights: Optional[Any], K: int, like: Tensor) -> Tensor:
    """Return mixture weights of shape (K,), validated or defaulted to uniform."""
    if weights is None:
        return torch.full((K,), 1.0 / K, dtype=like.dtype, device=like.device)
    weights = _check_tensor("weights", weights)
    if weights.device != like.device:
        raise ValueError(
            f"`weights` is on {weights.device} but `means` is on {like.device}; "
            f"move it with weights.to(means.device)."
        )
    if weights.dtype == torch.bool or weights.is_complex():
        raise TypeError(f"`weights` must be a real floating-point tensor, got dtype {weights.dtype}.")
    weights = weights.to(like.dtype)
    if weights.shape != (K,):
        raise ValueError(
            f"`weights` must have shape ({K},) (one weight per mixture component, K={K}), "
            f"got {tuple(weights.shape)}."
        )
    if not bool(torch.all((weights >= 0) & torch.isfinite(weights))):
        raise ValueError("`weights` must be non-negative and finite.")
    total = float(weights.sum())
    if abs(total - 1.0) > _sum_tolerance(weights.dtype):
        raise ValueError(
            f"`weights` must sum to 1, got sum {total!r}; normalise with weights / weights.sum()."
        )
    return weights


def _check_mixture(
    means: Any, variances: Any, y: Optional[Any], weights: Optional[Any]
) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """Validate a (K, m) Gaussian mixture (or a 1-D (m,) Gaussian) and targets y (m,)."""
    named = [("means", means), ("variances", variances)]
    if y is not None:
        named.append(("y", y))
    converted = _to_float(named)
    means, variances = converted[0], converted[1]
    y_t = converted[2] if y is not None else None
    if means.dim() not in (1, 2):
        raise ValueError(
            f"`means` must have shape (K, m) or (m,), got {tuple(means.shape)}."
        )
    _check_same_shape("variances", variances, "means", means)
    if means.dim() == 1:
        # A single Gaussian is a one-component mixture.
        means, variances = means.unsqueeze(0), variances.unsqueeze(0)
    K, m = means.shape
    if K == 0:
        raise ValueError("`means` has zero mixture components (K=0); pass at least one.")
    if m == 0:
        raise ValueError("`means` has zero inputs (m=0); pass at least one input.")
    if y_t is not None:
        if y_t.shape != (m,):
            raise ValueError(
                f"`y` must have shape ({m},) to match `means` of shape {tuple(means.shape)}, "
                f"got {tuple(y_t.shape)}."
            )
    _check_positive("variances", variances)
    w = _check_weights(weights, K, means)
    return means, variances, y_t, w


def _check_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, Tensor)):
        raise TypeError(f"`level` must be a float in (0, 1), got {type(level).__name__}.")
    if isinstance(level, Tensor):
        if level.numel() != 1:
            raise ValueError(f"`level` must be a scalar, got a tensor of shape {tuple(level.shape)}.")
        level = level.item()
    level = float(level)
    if not (0.0 < level < 1.0):
        raise ValueError(f"`level` must lie strictly inside (0, 1), got {level!r}; e.g. level=0.95.")
    return level


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return value


def _check_probs(name: str, probs: Any, event_dims: int) -> Tensor:
    """Validate probability vectors on the last axis of a tensor with ``event_dims`` dims."""
    (probs,) = _to_float(((name, probs),))
    if probs.dim() != event_dims:
        expected = "(m, c)" if event_dims == 2 else "(S, m, c)"
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(probs.shape)}.")
    _check_nonempty(name, probs)
    if not bool(torch.all((probs >= 0) & torch.isfinite(probs))):
        raise ValueError(f"`{name}` must be finite and non-negative; pass probabilities, not logits.")
    err = float((probs.sum(-1) - 1.0).abs().max())
    if err > _sum_tolerance(probs.dtype):
        raise ValueError(
            f"`{name}` rows must sum to 1 over classes (max deviation {err:.3g}); "
            f"pass probabilities, e.g. logits.softmax(-1), not logits."
        )
    return probs


def _check_classification(probs: Any, labels: Any) -> Tuple[Tensor, Tensor]:
    probs = _check_probs("probs", probs, event_dims=2)
    labels = _check_tensor("labels", labels)
    if labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"`labels` must be an integer tensor of class indices, got dtype {labels.dtype}; "
            f"use labels.long()."
        )
    if labels.device != probs.device:
        raise ValueError(
            f"`labels` is on {labels.device} but `probs` is on {probs.device}; "
            f"move it with labels.to(probs.device)."
        )
    m, c = probs.shape
    if labels.shape != (m,):
        raise ValueError(
            f"`labels` must have shape ({m},) to match `probs` of shape {(m, c)}, "
            f"got {tuple(labels.shape)}."
        )
    labels = labels.long()
    if bool(torch.any((labels < 0) | (labels >= c))):
        raise ValueError(f"`labels` must be class indices in [0, {c - 1}] for c={c} classes.")
    return probs, labels


# --------------------------------------------------------------------------- #
# Gaussian helpers
# --------------------------------------------------------------------------- #
def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _abs_moment(mu: Tensor, var: Tensor) -> Tensor:
    """``E|X|`` for ``X ~ N(mu, var)``: ``s*2*phi(mu/s) + mu*(2*Phi(mu/s) - 1)``.

    This is the "A" function of Grimit et al. (2006).  ``2*Phi(z) - 1`` is
    written as ``erf(z/sqrt 2)`` because that is accurate near ``z = 0``.
    """
    s = var.sqrt()
    z = mu / s
    return s * _SQRT_2_OVER_PI * torch.exp(-0.5 * z * z) + mu * torch.erf(z / _SQRT_2)


# --------------------------------------------------------------------------- #
# Regression metrics
# --------------------------------------------------------------------------- #
def rmse(pred_mean: Tensor, y: Tensor) -> Tensor:
    r"""Root mean squared error.

    .. math:: \mathrm{RMSE} = \sqrt{\tfrac{1}{m}\sum_x (\hat\mu(x) - y(x))^2}

    :param pred_mean: predicted means, any shape.
    :param y: targets, same shape as ``pred_mean``.
    :return: 0-d tensor.
    :raises ValueError: on shape mismatch or empty input.
    """
    pred_mean, y = _to_float((("pred_mean", pred_mean), ("y", y)))
    _check_nonempty("y", y)
    _check_same_shape("pred_mean", pred_mean, "y", y)
    return (pred_mean - y).pow(2).mean().sqrt()


def gaussian_nll(mean: Tensor, variance: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""Negative log density of ``y`` under :math:`\mathcal N(\mu, \sigma^2)`.

    .. math:: -\log p(y) = \tfrac12\left[\log(2\pi\sigma^2) + (y-\mu)^2/\sigma^2\right]

    :param mean: predictive means, any shape.
    :param variance: predictive variances (> 0), same shape as ``mean``.
    :param y: targets, same shape as ``mean``.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (same shape as ``y``).
    """
    _check_reduction(reduction)
    mean, variance, y = _check_gaussian(mean, variance, y)
    nll = 0.5 * (_LOG_2PI + variance.log() + (y - mean).pow(2) / variance)
    return _reduce(nll, reduction)


def gaussian_crps(mean: Tensor, variance: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""Closed-form continuous ranked probability score of a Gaussian.

    .. math::
        \mathrm{CRPS}(\mathcal N(\mu,\sigma^2), y)
        = \sigma\left[z\,(2\Phi(z)-1) + 2\varphi(z) - 1/\sqrt{\pi}\right],
        \qquad z = (y-\mu)/\sigma

    (Gneiting et al., 2005).  Lower is better; same units as ``y``.

    :param mean: predictive means, any shape.
    :param variance: predictive variances (> 0), same shape as ``mean``.
    :param y: targets, same shape as ``mean``.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (same shape as ``y``).
    """
    _check_reduction(reduction)
    mean, variance, y = _check_gaussian(mean, variance, y)
    sigma = variance.sqrt()
    z = (y - mean) / sigma
    crps = sigma * (z * torch.erf(z / _SQRT_2) + 2.0 * _std_normal_pdf(z) - _INV_SQRT_PI)
    return _reduce(crps, reduction)


def mixture_nll(
    means: Tensor,
    variances: Tensor,
    y: Tensor,
    weights: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Negative log density of ``y`` under a Gaussian mixture.

    .. math::
        -\log p(y) = -\operatorname{logsumexp}_k\left[\log w_k
        + \log\mathcal N(y;\mu_k,\sigma_k^2)\right]

    Computed with ``logsumexp`` so it stays finite far in the tails, where the
    component densities underflow to zero.

    :param means: component means, shape ``(K, m)`` (or ``(m,)`` for one Gaussian).
    :param variances: component variances (> 0), same shape as ``means``.
    :param y: targets, shape ``(m,)``.
    :param weights: mixture weights, shape ``(K,)``, non-negative, summing to 1;
        default uniform ``1/K``.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (shape ``(m,)``).
    """
    _check_reduction(reduction)
    means, variances, y, w = _check_mixture(means, variances, y, weights)
    log_comp = -0.5 * (_LOG_2PI + variances.log() + (y - means).pow(2) / variances)
    # log(0) = -inf for zero-weight components is fine inside logsumexp.
    nll = -torch.logsumexp(w.log().unsqueeze(-1) + log_comp, dim=0)
    return _reduce(nll, reduction)


def mixture_crps(
    means: Tensor,
    variances: Tensor,
    y: Tensor,
    weights: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Exact closed-form CRPS of a Gaussian mixture (Grimit et al., 2006).

    Uses the energy form :math:`\mathrm{CRPS}(F,y) = E|X-y| - \tfrac12 E|X-X'|`:

    .. math::
        \mathrm{CRPS} = \sum_i w_i\,A(\mu_i - y,\ \sigma_i^2)
        - \tfrac12\sum_i\sum_j w_i w_j\,A(\mu_i-\mu_j,\ \sigma_i^2+\sigma_j^2),

    with :math:`A(\mu, s^2) = E|\mathcal N(\mu, s^2)|
    = s\,2\varphi(\mu/s) + \mu\,(2\Phi(\mu/s) - 1)`.

    The pairwise term costs :math:`O(K^2 m)`; it is evaluated in chunks over
    inputs (and, for very large ``K``, over components) so that no temporary
    exceeds ``_MAX_CHUNK_ELEMENTS`` elements.  Differentiable in ``means`` and
    ``variances``.  With ``K = 1`` this equals :func:`gaussian_crps`.

    :param means: component means, shape ``(K, m)`` (or ``(m,)`` for one Gaussian).
    :param variances: component variances (> 0), same shape as ``means``.
    :param y: targets, shape ``(m,)``.
    :param weights: mixture weights, shape ``(K,)``, summing to 1; default uniform.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (shape ``(m,)``).
    """
    _check_reduction(reduction)
    means, variances, y, w = _check_mixture(means, variances, y, weights)
    K, m = means.shape

    # First term: sum_i w_i E|X_i - y|, only O(K m).
    term_y = (w.unsqueeze(-1) * _abs_moment(means - y, variances)).sum(0)

    # Second term: pairwise, chunked.  Choose a row block (components i) and an
    # input chunk so that rows * K * inputs <= budget (always >= 1 of each).
    budget = _MAX_CHUNK_ELEMENTS
    rows = min(K, max(1, budget // K))
    cols = max(1, budget // (rows * K))
    pair_chunks = []
    for start in range(0, m, cols):
        stop = min(start + cols, m)
        mu_c, var_c = means[:, start:stop], variances[:, start:stop]
        acc = torch.zeros(stop - start, dtype=means.dtype, device=means.device)
        for r0 in range(0, K, rows):
            r1 = min(r0 + rows, K)
            diff = mu_c[r0:r1, None, :] - mu_c[None, :, :]  # (rows, K, chunk)
            var_sum = var_c[r0:r1, None, :] + var_c[None, :, :]
            ww = (w[r0:r1, None] * w[None, :]).unsqueeze(-1)  # (rows, K, 1)
            acc = acc + (ww * _abs_moment(diff, var_sum)).sum(dim=(0, 1))
        pair_chunks.append(acc)
    term_pair = torch.cat(pair_chunks)

    crps = term_y - 0.5 * term_pair
    return _reduce(crps, reduction)


def sample_crps(samples: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""CRPS of the empirical distribution of samples, exactly, in ``O(S log S)``.

    Energy form with the empirical distribution of the ``S`` samples
    (this is the convention of ``properscoring.crps_ensemble``; it is *not*
    the "fair"/unbiased variant with ``1/(S(S-1))``):

    .. math::
        \mathrm{CRPS} = \frac1S\sum_i |x_i - y| - \frac{1}{2S^2}\sum_{i,j}|x_i - x_j|,
        \qquad
        \sum_{i,j}|x_i - x_j| = 2\sum_{k=1}^{S}(2k - S - 1)\,x_{(k)},

    where :math:`x_{(k)}` are the samples sorted in ascending order, so the
    pairwise sum needs one sort instead of :math:`O(S^2)` work.

    :param samples: predictive samples, shape ``(S, m)``.
    :param y: targets, shape ``(m,)``.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (shape ``(m,)``).
    """
    _check_reduction(reduction)
    samples, y = _to_float((("samples", samples), ("y", y)))
    if samples.dim() != 2:
        raise ValueError(f"`samples` must have shape (S, m), got {tuple(samples.shape)}.")
    _check_nonempty("samples", samples)
    S, m = samples.shape
    if y.shape != (m,):
        raise ValueError(
            f"`y` must have shape ({m},) to match `samples` of shape {(S, m)}, got {tuple(y.shape)}."
        )
    term_y = (samples - y).abs().mean(0)
    sorted_x, _ = torch.sort(samples, dim=0)
    k = torch.arange(1, S + 1, dtype=samples.dtype, device=samples.device)
    coef = (2.0 * k - S - 1.0).unsqueeze(-1)  # (S, 1)
    # 0.5 * (1/S^2) * 2 * sum_k coef_k x_(k)
    half_pair = (coef * sorted_x).sum(0) / (S * S)
    crps = term_y - half_pair
    return _reduce(crps, reduction)


def mixture_quantile(
    means: Tensor,
    variances: Tensor,
    level: float,
    weights: Optional[Tensor] = None,
) -> Tensor:
    r"""The ``level`` quantile of a Gaussian mixture, per input.

    Solves :math:`F(q) = \sum_k w_k\,\Phi\big((q-\mu_k)/\sigma_k\big) = \text{level}`
    by vectorised bisection.  The bracket is
    :math:`[\min_k q_k, \max_k q_k]` with :math:`q_k = \mu_k + \sigma_k\Phi^{-1}(\text{level})`
    over components with positive weight: every component CDF is at most
    ``level`` at the lower end and at least ``level`` at the upper end, so the
    mixture CDF is too.  ``_BISECTION_STEPS`` (60) halvings shrink the bracket
    by :math:`2^{-60}`, well below 1e-6 relative accuracy.  For ``K = 1`` the
    closed form :math:`\mu + \sigma\Phi^{-1}(\text{level})` is returned.

    The result is not differentiable (computed under ``torch.no_grad()``).

    :param means: component means, shape ``(K, m)`` (or ``(m,)`` for one Gaussian).
    :param variances: component variances (> 0), same shape as ``means``.
    :param level: probability in the open interval (0, 1).
    :param weights: mixture weights, shape ``(K,)``, summing to 1; default uniform.
    :return: tensor of shape ``(m,)``.
    """
    level = _check_level(level)
    means, variances, _, w = _check_mixture(means, variances, None, weights)
    with torch.no_grad():
        means, variances, w = means.detach(), variances.detach(), w.detach()
        stds = variances.sqrt()
        z = torch.special.ndtri(torch.tensor(level, dtype=means.dtype, device=means.device))
        comp_q = means + stds * z  # (K, m)
        if means.shape[0] == 1:
            return comp_q[0]
        active = (w > 0).unsqueeze(-1)  # zero-weight components must not widen the bracket
        lo = torch.where(active, comp_q, torch.full_like(comp_q, math.inf)).amin(0)
        hi = torch.where(active, comp_q, torch.full_like(comp_q, -math.inf)).amax(0)
        # F(t) = sum_k w_k Phi((t - mu_k)/s_k) = sum_k (w_k/2) erfc(mu_k/(s_k sqrt2) - t/(s_k sqrt2));
        # precomputing the affine coefficients keeps each step to ~4 elementwise ops.
        half_w = 0.5 * w.unsqueeze(-1)
        slope = 1.0 / (stds * _SQRT_2)
        offset = means * slope
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            cdf = (half_w * torch.erfc(offset - mid * slope)).sum(0)
            below = cdf < level
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)


def interval_coverage(
    means: Tensor,
    variances: Tensor,
    y: Tensor,
    level: float = 0.95,
    weights: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Empirical coverage of the central ``level`` predictive interval.

    .. math::
        \text{coverage} = \frac1m\sum_x \mathbf 1\{q_{(1-\text{level})/2}(x)
        \le y(x) \le q_{(1+\text{level})/2}(x)\}

    where :math:`q_p` are quantiles of the Gaussian mixture (see
    :func:`mixture_quantile`); 1-D ``means``/``variances`` mean a single
    Gaussian.  A calibrated model gives coverage close to ``level``.

    :param means: component means, shape ``(K, m)`` or ``(m,)``.
    :param variances: component variances (> 0), same shape as ``means``.
    :param y: targets, shape ``(m,)``.
    :param level: nominal coverage in (0, 1), default 0.95.
    :param weights: mixture weights, shape ``(K,)``, summing to 1; default uniform.
    :param reduction: ``"mean"`` (fraction covered, 0-d tensor) or ``"none"``
        (0/1 indicator per input, shape ``(m,)``, in the float dtype of the inputs).
    """
    _check_reduction(reduction)
    level = _check_level(level)
    means, variances, y, w = _check_mixture(means, variances, y, weights)
    lower = mixture_quantile(means, variances, 0.5 * (1.0 - level), weights=w)
    upper = mixture_quantile(means, variances, 0.5 * (1.0 + level), weights=w)
    inside = ((y >= lower) & (y <= upper)).to(means.dtype)
    return _reduce(inside, reduction)


def variance_ratio(student_variance: Tensor, teacher_values: Tensor) -> Tensor:
    r"""Ratio of student epistemic variance to the teachers' sample variance.

    This is the "variation reduction" measure:

    .. math::
        \rho = \frac{\operatorname{tr}\,\Sigma_{\text{student}}}
                    {\operatorname{tr}\,\widehat\Sigma_{\text{teacher}}}
             = \frac{\sum_x \sigma^2_{\text{student}}(x)}
                    {\sum_x \frac{1}{n-1}\sum_{i=1}^n \big(f_i(x) - \bar f(x)\big)^2}

    with the unbiased (``n - 1``) sample variance across the ``n`` teachers.
    The ideal value is 1.0; below 1 the student under-represents the ensemble's
    spread, above 1 it over-represents it.  For multi-output teachers
    ``(n, m, c)`` the sums run over inputs and outputs/classes.

    :param student_variance: student epistemic variance, shape ``teacher_values.shape[1:]``,
        i.e. ``(m,)`` or ``(m, c)``; non-negative (zero is allowed: it is a legitimate,
        if bad, student).
    :param teacher_values: teacher predictions, shape ``(n, m)`` or ``(n, m, c)``, ``n >= 2``.
    :return: 0-d tensor.
    """
    student_variance, teacher_values = _to_float(
        (("student_variance", student_variance), ("teacher_values", teacher_values))
    )
    if teacher_values.dim() not in (2, 3):
        raise ValueError(
            f"`teacher_values` must have shape (n, m) or (n, m, c), got {tuple(teacher_values.shape)}."
        )
    _check_nonempty("teacher_values", teacher_values)
    if teacher_values.shape[0] < 2:
        raise ValueError(
            f"`teacher_values` needs at least n=2 teachers for a sample variance, "
            f"got n={teacher_values.shape[0]}."
        )
    if student_variance.shape != teacher_values.shape[1:]:
        raise ValueError(
            f"`student_variance` must have shape {tuple(teacher_values.shape[1:])} "
            f"(teacher_values.shape[1:]), got {tuple(student_variance.shape)}."
        )
    if not bool(torch.all((student_variance >= 0) & torch.isfinite(student_variance))):
        raise ValueError("`student_variance` must be non-negative and finite.")
    teacher_total = teacher_values.var(dim=0, correction=1).sum()
    if not bool(teacher_total > 0):
        raise ValueError(
            "`teacher_values` have zero variance across teachers, so the ratio is undefined; "
            "check that the ensemble members differ."
        )
    return student_variance.sum() / teacher_total


# --------------------------------------------------------------------------- #
# Classification metrics
# --------------------------------------------------------------------------- #
def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    r"""Top-1 accuracy, :math:`\frac1m\sum_x \mathbf 1\{\arg\max_c p(x)_c = y(x)\}`.

    Ties in ``argmax`` go to the lowest class index (``torch.argmax``).

    :param probs: class probabilities, shape ``(m, c)``, rows summing to 1.
    :param labels: integer class labels, shape ``(m,)``.
    :return: 0-d tensor in the dtype of ``probs``.
    """
    probs, labels = _check_classification(probs, labels)
    return (probs.argmax(-1) == labels).to(probs.dtype).mean()


def categorical_nll(probs: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    r"""Negative log-likelihood of the labels, :math:`-\log \max(p_{y}, \epsilon)`.

    Probabilities are clamped at :math:`\epsilon` = ``torch.finfo(dtype).tiny``
    before the log so a confidently wrong prediction gives a large but finite value.

    :param probs: class probabilities, shape ``(m, c)``, rows summing to 1.
    :param labels: integer class labels, shape ``(m,)``.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (shape ``(m,)``).
    """
    _check_reduction(reduction)
    probs, labels = _check_classification(probs, labels)
    p_true = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    nll = -p_true.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return _reduce(nll, reduction)


def brier_score(probs: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    r"""Multi-class Brier score, :math:`\sum_{k=1}^{c} (p_k - \mathbf 1\{y = k\})^2`.

    Summed over classes (range [0, 2]), averaged over inputs for ``"mean"``.

    :param probs: class probabilities, shape ``(m, c)``, rows summing to 1.
    :param labels: integer class labels, shape ``(m,)``.
    :param reduction: ``"mean"`` (0-d tensor) or ``"none"`` (shape ``(m,)``).
    """
    _check_reduction(reduction)
    probs, labels = _check_classification(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    score = (probs - one_hot).pow(2).sum(-1)
    return _reduce(score, reduction)


def _top_label_bins(probs: Tensor, labels: Tensor, num_bins: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Bin index, top-label confidence and correctness (as ``probs.dtype``) per input.

    Bin ``b`` (0-based) holds confidences in ``(b/B, (b+1)/B]``; the clamp keeps
    a confidence of 0 in bin 0.
    """
    conf, pred = probs.max(-1)
    correct = (pred == labels).to(probs.dtype)
    idx = (torch.ceil(conf * num_bins).long() - 1).clamp(0, num_bins - 1)
    return idx, conf, correct


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> Tensor:
    r"""Expected calibration error of the top-label confidence (Guo et al., 2017).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{m}\,
        \big|\operatorname{acc}(b) - \operatorname{conf}(b)\big|

    with ``B = num_bins`` equal-width bins :math:`((b-1)/B,\ b/B]` on the
    confidence :math:`\max_c p_c`; ``acc(b)`` and ``conf(b)`` are the mean
    correctness and mean confidence in bin ``b``.  Empty bins contribute 0.

    :param probs: class probabilities, shape ``(m, c)``, rows summing to 1.
    :param labels: integer class labels, shape ``(m,)``.
    :param num_bins: number of bins, ``>= 1``.
    :return: 0-d tensor in [0, 1].
    """
    num_bins = _check_int("num_bins", num_bins, 1)
    probs, labels = _check_classification(probs, labels)
    idx, conf, correct = _top_label_bins(probs, labels, num_bins)
    zeros = torch.zeros(num_bins, dtype=probs.dtype, device=probs.device)
    sum_conf = zeros.index_add(0, idx, conf)
    sum_acc = zeros.index_add(0, idx, correct)
    # (n_b / m) * |acc_b - conf_b| == |sum_acc_b - sum_conf_b| / m; no 0/0 for empty bins.
    return (sum_acc - sum_conf).abs().sum() / probs.shape[0]


def reliability_bins(probs: Tensor, labels: Tensor, num_bins: int = 15) -> dict:
    """The reliability diagram behind :func:`expected_calibration_error`: per bin, the mean
    top-label confidence, the accuracy and the number of inputs (same bins).

    :param probs: class probabilities ``(m, c)``.
    :param labels: integer labels ``(m,)``.
    :param num_bins: number of equal-width bins.
    :return: ``{"confidence": [...], "accuracy": [...], "count": [...]}``, lists of
        ``num_bins`` floats; empty bins report 0 for confidence and accuracy.
    """
    num_bins = _check_int("num_bins", num_bins, 1)
    probs, labels = _check_classification(probs, labels)
    idx, conf, correct = _top_label_bins(probs, labels, num_bins)
    count = torch.bincount(idx, minlength=num_bins).double()
    safe = count.clamp_min(1)
    accuracy = torch.bincount(idx, weights=correct.double(), minlength=num_bins) / safe
    confidence = torch.bincount(idx, weights=conf.double(), minlength=num_bins) / safe
    return {"confidence": confidence.tolist(), "accuracy": accuracy.tolist(), "count": count.tolist()}


def calibrated_ece_floor(bins: dict) -> float:
    r"""The ECE a perfectly calibrated classifier would show on the same bins, from sampling alone.

    With :math:`n_b` inputs in bin ``b``, all of confidence :math:`c_b` (the
    bin's mean) and each correct with probability :math:`c_b`, the bin's
    accuracy is :math:`X_b / n_b` with :math:`X_b \sim \mathrm{Binomial}(n_b, c_b)`, so

    .. math::
        E[\mathrm{ECE}] = \sum_b \frac{n_b}{m}\, E\left|\frac{X_b}{n_b} - c_b\right|,

    computed exactly from the binomial probabilities. It is the scale below
    which ECE differences on this test set are sampling noise (about
    :math:`\sqrt{2 c (1 - c) / (\pi n_b)}` per bin).

    :param bins: :func:`reliability_bins` output (``confidence`` and ``count`` per bin).
    :return: the expected ECE, a float.
    """
    if not isinstance(bins, dict) or "confidence" not in bins or "count" not in bins:
        raise ValueError("bins: expected the dictionary of reliability_bins (with 'confidence' and 'count')")
    confidence = torch.as_tensor(bins["confidence"], dtype=torch.float64)
    count = torch.as_tensor(bins["count"], dtype=torch.float64)
    if confidence.shape != count.shape or bool((count < 0).any()) or bool(((confidence < 0) | (confidence > 1)).any()):
        raise ValueError("bins: 'confidence' must lie in [0, 1] and 'count' be non-negative, one of each per bin")
    total = float(count.sum())
    if total <= 0:
        raise ValueError("bins: every bin is empty; pass the bins of at least one input")
    expected = 0.0
    for c, n in zip(confidence.tolist(), count.tolist()):
        n = int(round(n))
        if n == 0 or c in (0.0, 1.0):
            continue
        k = torch.arange(n + 1, dtype=torch.float64)
        log_pmf = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
                   + k * math.log(c) + (n - k) * math.log1p(-c))
        expected += n / total * float((log_pmf.exp() * (k / n - c).abs()).sum())
    return expected


def overconfidence(bins: dict) -> float:
    r"""Mean top-label confidence minus accuracy: the signed part of the miscalibration.

    .. math::
        \frac{1}{m} \sum_{i=1}^{m} \big(\max_c p_{ic} - [\hat y_i = y_i]\big)
        = \sum_b \frac{n_b}{m} \big(\operatorname{conf}(b) - \operatorname{acc}(b)\big),

    exact from the bins of :func:`reliability_bins` (they partition the inputs). It is bounded by
    the ECE in absolute value; positive means over-confident on average, and when it is close to
    the ECE the miscalibration is one-signed (a predictive too sharp everywhere) rather than noise.

    :param bins: :func:`reliability_bins` output (``confidence``, ``accuracy`` and ``count`` per bin).
    :return: a float in [-1, 1].
    """
    if not isinstance(bins, dict) or not {"confidence", "accuracy", "count"} <= set(bins):
        raise ValueError("bins: expected the dictionary of reliability_bins (with 'confidence', 'accuracy' and 'count')")
    confidence, accuracy, count = (torch.as_tensor(bins[k], dtype=torch.float64) for k in ("confidence", "accuracy", "count"))
    if not (confidence.shape == accuracy.shape == count.shape) or bool((count < 0).any()):
        raise ValueError("bins: 'confidence', 'accuracy' and 'count' need one value per bin, counts non-negative")
    total = float(count.sum())
    if total <= 0:
        raise ValueError("bins: every bin is empty; pass the bins of at least one input")
    return float((count * (confidence - accuracy)).sum()) / total


def mean_and_standard_error(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    r"""The mean of ``values`` (e.g. one figure per seed) and its standard error :math:`s / \sqrt n`
    (``n - 1`` in the variance), ``None`` for a single value.

    :param values: at least one number.
    """
    if len(values) == 0:
        raise ValueError("values: give at least one number")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return float(t.mean()), (float(t.std() / math.sqrt(len(values))) if len(values) > 1 else None)


def paired_difference(a: Tensor, b: Tensor) -> Tuple[float, float]:
    r"""Mean of the per-input differences of two methods' scores and its standard error.

    With :math:`d_i = a_i - b_i` on the same ``m`` inputs, returns
    :math:`\bar d` and :math:`s_d / \sqrt m` (:math:`s_d` the sample standard
    deviation, ``m - 1`` in the denominator): the central-limit scale of
    :math:`\bar d` over test sets drawn from the same distribution. Pairing
    removes the between-input variance both methods share (hard inputs are hard
    for both), which is why a gap far below either score's own standard error
    can still be resolved.

    :param a: per-input scores of one method, shape ``(m,)``, ``m >= 2``.
    :param b: per-input scores of the other, same shape.
    :return: ``(mean difference, standard error)`` as floats.
    """
    a, b = _to_float([("a", a), ("b", b)])
    _check_same_shape("a", a, "b", b)
    if a.dim() != 1 or a.shape[0] < 2:
        raise ValueError(f"a, b: expected 1-D per-input scores of at least 2 inputs, got shape {tuple(a.shape)}")
    d = (a - b).double()
    return float(d.mean()), float(d.std() / math.sqrt(d.shape[0]))


def paired_ratio_difference(a: Tensor, b: Tensor, counts: Tensor) -> Tuple[float, float]:
    r"""Difference of two per-unit averages pooled over inputs of unequal size, and its paired standard error.

    With per-input totals :math:`a_i, b_i` over :math:`n_i` units (e.g. the summed
    negative log-likelihood of review :math:`i`'s :math:`n_i` tokens), the pooled
    averages are :math:`\sum_i a_i / \sum_i n_i` (a log-perplexity) and their
    difference is the ratio estimator :math:`\hat\Delta = \sum_i d_i / \sum_i n_i`
    with :math:`d_i = a_i - b_i`. Its standard error by the delta method is
    :math:`s_e / (\bar n \sqrt m)` with :math:`e_i = d_i - \hat\Delta n_i` and
    :math:`s_e` their sample standard deviation: :func:`paired_difference` for a
    ratio of means.

    :param a: per-input totals of one method, shape ``(m,)``, ``m >= 2``.
    :param b: per-input totals of the other, same shape.
    :param counts: units per input, same shape, positive.
    :return: ``(difference of the pooled averages, standard error)`` as floats.
    """
    a, b, counts = _to_float([("a", a), ("b", b), ("counts", counts)])
    _check_same_shape("a", a, "b", b)
    _check_same_shape("a", a, "counts", counts)
    if a.dim() != 1 or a.shape[0] < 2:
        raise ValueError(f"a, b: expected 1-D per-input totals of at least 2 inputs, got shape {tuple(a.shape)}")
    if not bool((counts > 0).all()):
        raise ValueError("counts: every input needs at least one unit (counts > 0)")
    d, n = (a - b).double(), counts.double()
    delta = d.sum() / n.sum()
    residual = d - delta * n
    return float(delta), float(residual.std() / (n.mean() * math.sqrt(d.shape[0])))


def seed_averaged_paired_difference(a: Tensor, b: Tensor, counts: Optional[Tensor] = None) -> Tuple[float, float]:
    r"""Two methods compared on the same inputs over ``S`` training seeds, and the difference's standard error.

    ``a`` and ``b`` are ``(S, m)`` per-input totals (rows: seeds; ``counts`` ``(m,)`` units per input, default
    one). The per-input totals are averaged over the seeds and compared by :func:`paired_ratio_difference`
    (the inputs' sampling error); with ``S ≥ 2`` the between-seed variance of the per-seed differences, over
    ``S``, is added (training randomness: the inputs are the same for every seed, so the two are independent).

    :return: ``(difference of the pooled per-unit averages, standard error)``.
    """
    a, b = _to_float([("a", a), ("b", b)])
    _check_same_shape("a", a, "b", b)
    if a.dim() != 2:
        raise ValueError(f"a, b: expected (seeds, inputs) totals, got shape {tuple(a.shape)}")
    counts = torch.ones(a.shape[1], dtype=torch.float64) if counts is None else counts.double()
    delta, se = paired_ratio_difference(a.double().mean(0), b.double().mean(0), counts)
    if a.shape[0] > 1:
        per_seed = (a - b).double().sum(1) / counts.sum()
        se = math.sqrt(se ** 2 + float(per_seed.var()) / a.shape[0])
    return delta, se


def rouge_l(candidates: Sequence[str], references: Sequence[str]) -> Tensor:
    r"""ROUGE-L F-measure of each candidate text against its reference (Lin, 2004), shape ``(m,)``.

    The longest common subsequence of the two token sequences gives recall
    :math:`\mathrm{LCS}/|r|` and precision :math:`\mathrm{LCS}/|c|`; the score is their
    harmonic mean. Computed by Google's ``rouge_score`` package with its default
    tokenizer (lower case, alphanumeric tokens) and the Porter stemmer, as
    summarisation papers report it. An empty candidate or reference scores 0.

    :param candidates: generated texts.
    :param references: reference texts, one per candidate.
    :raises ImportError: without ``rouge_score`` (the lab's ``text`` extra installs it).
    """
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError("candidates, references: give sequences of texts, not one str")
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"candidates and references must be non-empty and of equal length, got {len(candidates)} "
                         f"and {len(references)}")
    try:
        from rouge_score import rouge_scorer
    except ImportError as error:
        raise ImportError(f"rouge_l needs rouge_score: pip install rouge-score (the lab's text extra) ({error})") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return torch.tensor([scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)],
                        dtype=torch.float64)


def entropy_decomposition(sample_probs: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Split predictive entropy into aleatoric and epistemic parts.

    With ``S`` sampled predictive distributions :math:`p_s(x)`:

    .. math::
        \underbrace{H\Big[\tfrac1S\sum_s p_s\Big]}_{\text{total}}
        = \underbrace{\tfrac1S\sum_s H[p_s]}_{\text{expected (aleatoric)}}
        + \underbrace{\mathrm{MI}}_{\text{mutual information (epistemic)}},
        \qquad H[p] = -\sum_c p_c \log p_c

    with :math:`0\log 0 = 0`.  MI is clamped at 0 to remove negative round-off.

    :param sample_probs: probabilities, shape ``(S, m, c)``, summing to 1 over ``c``.
    :return: ``(total_entropy, expected_entropy, mutual_information)``, each of shape ``(m,)``, in nats.
    """
    sample_probs = _check_probs("sample_probs", sample_probs, event_dims=3)

    def _entropy(p: Tensor) -> Tensor:
        return -torch.special.xlogy(p, p).sum(-1)  # xlogy gives 0*log 0 = 0

    total = _entropy(sample_probs.mean(0))
    expected = _entropy(sample_probs).mean(0)
    mutual_information = (total - expected).clamp_min(0.0)
    return total, expected, mutual_information


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    r"""Area under the ROC curve for separating out-of-distribution inputs.

    Out-of-distribution points should score *higher*.  Computed from ranks
    (Mann–Whitney U), with tied scores given their average rank, which counts
    each in/out tie as 1/2:

    .. math::
        \mathrm{AUROC} = \frac{R_{\text{out}} - n_{\text{out}}(n_{\text{out}}+1)/2}
                              {n_{\text{in}}\,n_{\text{out}}}
        = P(s_{\text{out}} > s_{\text{in}}) + \tfrac12 P(s_{\text{out}} = s_{\text{in}})

    where :math:`R_{\text{out}}` is the sum of the ranks of the out-of-distribution
    scores in the pooled sample.  ``O(N log N)``.

    :param scores_in: 1-D scores of in-distribution inputs (non-empty, finite).
    :param scores_out: 1-D scores of out-of-distribution inputs (non-empty, finite).
    :return: Python float in [0, 1]; 0.5 is chance.
    """
    scores_in, scores_out = _to_float((("scores_in", scores_in), ("scores_out", scores_out)))
    for name, s in (("scores_in", scores_in), ("scores_out", scores_out)):
        if s.dim() != 1:
            raise ValueError(f"`{name}` must be 1-D, got shape {tuple(s.shape)}; flatten it first.")
        _check_nonempty(name, s)
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"`{name}` contains NaN or inf; ranks are undefined.")
    # float64 so rank sums stay exact for large N.
    pooled = torch.cat([scores_in, scores_out]).to(torch.float64)
    _, inverse, counts = torch.unique(pooled, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    start = torch.cumsum(counts, 0) - counts  # number of strictly smaller scores
    midrank = start + (counts + 1.0) / 2.0  # average 1-based rank of each tie group
    ranks = midrank[inverse]
    n_in, n_out = scores_in.numel(), scores_out.numel()
    rank_sum_out = ranks[n_in:].sum()
    u = rank_sum_out - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


# --------------------------------------------------------------------------- #
# Cost metrics
# --------------------------------------------------------------------------- #
def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameter elements of a module, trainable and frozen alike.

    Counts ``sum(p.numel() for p in module.parameters())``; parameters shared
    between submodules are counted once (``parameters()`` deduplicates) and
    buffers (e.g. BatchNorm running statistics) are not counted.

    :param module: a :class:`torch.nn.Module` (including ``PyroModule``).
    :return: Python int.
    :raises ValueError: if the module has uninitialised (lazy) parameters.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
    total = 0
    for p in module.parameters():
        if isinstance(p, torch.nn.parameter.UninitializedParameter):
            raise ValueError(
                "`module` has uninitialised (lazy) parameters; run one forward pass before counting."
            )
        total += p.numel()
    return int(total)


def time_call(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 5,
    warmup: int = 1,
    **kwargs: Any,
) -> float:
    """Median wall-clock seconds of ``fn(*args, **kwargs)``.

    Runs ``warmup`` untimed calls, then ``repeats`` timed calls, all under
    :func:`torch.no_grad` (prediction cost, not training cost).  When CUDA is
    available, :func:`torch.cuda.synchronize` is called before starting and
    after finishing each timed call so that asynchronous kernels are counted.
    The median is robust to one-off stalls.  Note that ``repeats`` and
    ``warmup`` are consumed here and never forwarded to ``fn``.

    :param fn: the callable to time.
    :param repeats: number of timed calls, ``>= 1``.
    :param warmup: number of untimed calls first, ``>= 0``.
    :return: median seconds per call, a Python float.
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    repeats = _check_int("repeats", repeats, 1)
    warmup = _check_int("warmup", warmup, 0)
    use_cuda = torch.cuda.is_available()

    def _sync() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    times: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args, **kwargs)
        for _ in range(repeats):
            _sync()
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            _sync()
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))
