"""Ensemble Distribution Distillation with Proxy-Dirichlet targets (Proxy-EnD²).

Ensemble Distribution Distillation (EnD²) distils a classification ensemble
of :math:`M` members, member :math:`m` giving probabilities
:math:`\\pi^{(m)}(x)` over :math:`c` classes, into one student that outputs a
Dirichlet distribution :math:`\\mathrm{Dir}(\\pi;\\, \\alpha(x))` over those
probability vectors, so the student keeps the ensemble's *spread* (knowledge
uncertainty), not only its mean. Proxy-EnD² (Ryabinin, Malinin & Gales, 2021,
"Scaling Ensemble Distribution Distillation to Many Classes with Proxy
Targets") replaces the Dirichlet likelihood of the members' outputs, whose
gradients are dominated by the low-probability tail classes when :math:`c` is
large, by a divergence to a *Proxy-Dirichlet* target built from two ensemble
statistics per input:

* the ensemble mean :math:`\\bar\\pi_k = \\frac1M \\sum_m \\pi_k^{(m)}`;
* the precision estimate of Minka's approximate maximum-likelihood fit,

  .. math::

      \\hat\\alpha_0 = \\frac{c - 1}{2 \\sum_k \\bar\\pi_k
          \\bigl(\\log \\bar\\pi_k - \\frac1M \\sum_m \\log \\pi_k^{(m)}\\bigr)},

  whose denominator is twice the mean KL divergence
  :math:`\\frac1M \\sum_m \\mathrm{KL}(\\bar\\pi \\,\\|\\, \\pi^{(m)})` of the members
  from their mean: members that agree give a sharp target, members that
  disagree a flat one.

The target is :math:`\\mathrm{Dir}(\\beta)` with :math:`\\beta_k = \\bar\\pi_k \\hat\\alpha_0 + 1`
(the ``+ 1`` keeps every :math:`\\beta_k \\ge 1`, so the target's density
stays bounded at the faces of the simplex), and the student, with concentrations
:math:`\\alpha(x) = \\exp(z(x))` from its logits :math:`z`, minimises the
**reverse** KL divergence :math:`\\mathrm{KL}(\\mathrm{Dir}(\\alpha) \\,\\|\\, \\mathrm{Dir}(\\beta))`.
The paper's abstract states the reverse direction ("minimizes the reverse
KL-divergence to a Proxy-Dirichlet target"). The authors' released training
criterion for translation and speech (``rkl_dirichlet_proxy_distillation``, run
with target offset 1) optimises the same two terms as this reverse KL, a
cross-entropy to :math:`\\bar\\pi` and the student's entropy, in the form
:math:`-\\sum_k \\bar\\pi_k \\mathbb E[\\log \\pi_k] - \\mathcal H[\\mathrm{Dir}(\\alpha)] / \\beta_0`
with :math:`\\beta_0 = \\sum_k \\beta_k`: approximately the KL divided by
:math:`\\beta_0` (the two weight the cross-entropy by 1 and by
:math:`\\hat\\alpha_0 / \\beta_0` respectively, which agree when :math:`\\hat\\alpha_0 \\gg c`).
:func:`proxy_end2_loss` offers that per-input scaling as an option.

:func:`dirichlet_uncertainty` gives the student's uncertainty decomposition
(total = expected data entropy + mutual information) in closed form.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_dlf_bench.baselines.divergences import REDUCTIONS, _check_choice, _check_float_tensor, _check_log_probs, _reduce

__all__ = [
    "DirichletUncertainty",
    "concentrations_from_logits",
    "dirichlet_kl",
    "dirichlet_uncertainty",
    "proxy_dirichlet_targets",
    "proxy_end2_loss",
]


# --------------------------------------------------------------------------- validation


def _check_real(value: object, name: str, *, minimum: float, strict: bool, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= minimum if strict else value < minimum)
    if bad:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum}, got {value}; {hint}")
    return value


def _check_concentrations(alpha: object, name: str) -> Tensor:
    alpha = _check_float_tensor(alpha, name)
    if alpha.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last dimension, got shape {tuple(alpha.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(alpha).all()) or not bool((alpha > 0).all()):
            raise ValueError(
                f"{name} must hold finite, strictly positive Dirichlet concentrations; "
                "map logits with concentrations_from_logits(logits)"
            )
    return alpha


def _check_teacher_log_probs(teacher_log_probs: object) -> Tensor:
    t = _check_float_tensor(teacher_log_probs, "teacher_log_probs", min_dim=2)
    if t.shape[0] < 2:
        raise ValueError(
            f"teacher_log_probs must stack at least 2 teachers along its first dimension (n_teachers, *batch, c), got "
            f"shape {tuple(t.shape)}; the precision is estimated from the teachers' disagreement"
        )
    if t.shape[-1] < 2:
        raise ValueError(
            f"teacher_log_probs must have at least 2 classes in its last dimension, got shape {tuple(t.shape)}"
        )
    with torch.no_grad():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                "teacher_log_probs must be finite: a teacher with an exact zero probability makes the geometric mean, "
                "hence the precision estimate, degenerate; use torch.log_softmax(teacher_logits, -1), or floor the "
                "probabilities (e.g. probs.clamp_min(1e-8)) and renormalise before taking the log"
            )
    return _check_log_probs(t, "teacher_log_probs")


# --------------------------------------------------------------------------- proxy targets


def _proxy_targets_float64(teacher_log_probs: Tensor, offset: float, min_divergence: float) -> Tensor:
    # In float64: for nearly agreeing teachers the divergence is a tiny
    # difference of O(1) log-probabilities and float32 would lose it.
    lp = teacher_log_probs.to(torch.float64)
    n_teachers, n_classes = lp.shape[0], lp.shape[-1]
    mean_log = lp.mean(0)  # (1/M) sum_m log pi^(m)
    # log pibar - mean_log = log (1/M) sum_m exp(lp_m - mean_log), centred for accuracy; >= 0 by Jensen
    log_gap = torch.logsumexp(lp - mean_log, dim=0) - math.log(n_teachers)
    log_mean = mean_log + log_gap  # log pibar
    mean_probs = log_mean.exp()
    divergence = (mean_probs * log_gap.clamp_min(0.0)).sum(-1, keepdim=True)
    precision = (n_classes - 1) / (2.0 * divergence.clamp_min(min_divergence))
    # renormalise pibar against round-off so the target mean is exactly pibar
    mean_probs = mean_probs / mean_probs.sum(-1, keepdim=True)
    beta = mean_probs * precision + offset
    if offset == 0.0:
        beta = beta.clamp_min(torch.finfo(torch.float64).tiny)  # a class whose pibar underflowed to 0
    return beta


def proxy_dirichlet_targets(
    teacher_log_probs: Tensor,
    *,
    offset: float = 1.0,
    min_divergence: float = 1e-6,
) -> Tensor:
    """The Proxy-Dirichlet target concentrations :math:`\\beta` of an ensemble.

    With :math:`\\bar\\pi_k = \\frac1M \\sum_m \\pi_k^{(m)}` and Minka's
    precision estimate

    .. math::

        \\hat\\alpha_0 = \\frac{c - 1}{2 \\max(D, \\varepsilon)}, \\qquad
        D = \\sum_k \\bar\\pi_k \\Bigl(\\log \\bar\\pi_k - \\frac1M \\sum_m \\log \\pi_k^{(m)}\\Bigr)
          = \\frac1M \\sum_m \\mathrm{KL}(\\bar\\pi \\,\\|\\, \\pi^{(m)}) \\ge 0,

    the target is :math:`\\beta_k = \\bar\\pi_k \\hat\\alpha_0 + \\text{offset}`, so
    :math:`(\\beta - \\text{offset}) / \\hat\\alpha_0 = \\bar\\pi` and
    :math:`\\beta_0 = \\sum_k \\beta_k = \\hat\\alpha_0 + c \\cdot \\text{offset}`.
    :math:`D` is zero when all teachers agree; the floor
    :math:`\\varepsilon` = ``min_divergence`` caps the precision at
    :math:`\\hat\\alpha_0 \\le (c - 1) / (2 \\varepsilon)`
    (:math:`5 \\times 10^5 (c - 1)` by default). The statistics are computed in
    float64 and returned in the input dtype.

    :param teacher_log_probs: the members' log-probabilities ``(n_teachers, *batch, c)``,
        at least 2 teachers and 2 classes, finite and normalised over the classes.
    :param offset: the constant added to every concentration, 1 in the paper
        (keeps :math:`\\beta_k \\ge 1`); must be >= 0.
    :param min_divergence: the floor :math:`\\varepsilon > 0` on :math:`D`.
    :returns: the target concentrations :math:`\\beta` ``(*batch, c)``.
    :raises TypeError: for a non-tensor or non-floating input, or non-real options.
    :raises ValueError: for fewer than 2 teachers or classes, non-finite or
        unnormalised log-probabilities, or out-of-range options.
    """
    teacher_log_probs = _check_teacher_log_probs(teacher_log_probs)
    offset = _check_real(offset, "offset", minimum=0.0, strict=False, hint="the paper uses offset=1.0")
    min_divergence = _check_real(
        min_divergence, "min_divergence", minimum=0.0, strict=True, hint="it caps the precision, e.g. 1e-6"
    )
    return _proxy_targets_float64(teacher_log_probs, offset, min_divergence).to(teacher_log_probs.dtype)


# --------------------------------------------------------------------------- Dirichlet algebra


def concentrations_from_logits(logits: Tensor, max_abs_logit: float = 20.0) -> Tensor:
    """The student's Dirichlet concentrations :math:`\\alpha = \\exp(\\operatorname{clamp}(z, -L, L))`.

    The clamp keeps every :math:`\\alpha_k` in :math:`[e^{-L}, e^{L}]`
    (about :math:`[2 \\times 10^{-9}, 5 \\times 10^{8}]` for the default
    :math:`L = 20`), where ``lgamma`` and ``digamma`` stay finite; a logit
    outside the range gets no gradient, so :math:`L` should be wide enough that
    a trained student does not reach it.

    :param logits: student outputs ``(*batch, c)``, finite.
    :param max_abs_logit: the clamp bound :math:`L > 0`.
    :returns: concentrations ``(*batch, c)``, same dtype.
    :raises TypeError: for a non-tensor or non-floating input, or a non-real bound.
    :raises ValueError: for non-finite logits or a non-positive bound.
    """
    return _concentrations(logits, max_abs_logit, "logits")


def _concentrations(logits: object, max_abs_logit: object, name: str) -> Tensor:
    logits = _check_float_tensor(logits, name)
    max_abs_logit = _check_real(
        max_abs_logit, "max_abs_logit", minimum=0.0, strict=True, hint="the default 20.0 bounds alpha to [2e-9, 5e8]"
    )
    with torch.no_grad():
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(f"{name} contains NaN or infinite values; check the student's forward pass")
    return logits.clamp(-max_abs_logit, max_abs_logit).exp()


def dirichlet_kl(alpha_p: Tensor, alpha_q: Tensor) -> Tensor:
    """:math:`\\mathrm{KL}(\\mathrm{Dir}(\\alpha_p) \\,\\|\\, \\mathrm{Dir}(\\alpha_q))` per row, in closed form.

    With :math:`a = \\alpha_p`, :math:`b = \\alpha_q`, :math:`a_0 = \\sum_k a_k`,
    :math:`b_0 = \\sum_k b_k` and the digamma function :math:`\\psi`
    (:math:`\\mathbb E_{\\mathrm{Dir}(a)}[\\log \\pi_k] = \\psi(a_k) - \\psi(a_0)`):

    .. math::

        \\log\\Gamma(a_0) - \\sum_k \\log\\Gamma(a_k) - \\log\\Gamma(b_0) + \\sum_k \\log\\Gamma(b_k)
        + \\sum_k (a_k - b_k) \\bigl(\\psi(a_k) - \\psi(a_0)\\bigr).

    It is exactly zero when the arguments are equal. Computed in the inputs'
    dtype; for large concentrations use float64, as the ``lgamma`` terms
    cancel.

    :param alpha_p: concentrations ``(*batch, c)``, finite and > 0.
    :param alpha_q: concentrations, broadcastable against ``alpha_p`` with the same ``c``.
    :returns: the divergences, shape ``broadcast(*batch)``.
    :raises TypeError: for non-tensor or non-floating inputs.
    :raises ValueError: for non-positive or non-finite concentrations, or incompatible shapes.
    """
    a = _check_concentrations(alpha_p, "alpha_p")
    b = _check_concentrations(alpha_q, "alpha_q")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"alpha_p and alpha_q must have the same number of classes, got {a.shape[-1]} and {b.shape[-1]}"
        )
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"alpha_p {tuple(a.shape)} and alpha_q {tuple(b.shape)} do not broadcast against each other"
        ) from None
    if a.device != b.device:
        raise ValueError(f"alpha_p is on {a.device} but alpha_q is on {b.device}; move both to the same device")
    return _dirichlet_kl(a, b)


def _dirichlet_kl(a: Tensor, b: Tensor) -> Tensor:
    a0 = a.sum(-1)
    b0 = b.sum(-1)
    # grouped as differences of like terms, so equal arguments give exactly 0
    log_norm = (torch.lgamma(a0) - torch.lgamma(b0)) + (torch.lgamma(b).sum(-1) - torch.lgamma(a).sum(-1))
    expected_log = torch.digamma(a) - torch.digamma(a0).unsqueeze(-1)
    return log_norm + ((a - b) * expected_log).sum(-1)


def proxy_end2_loss(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    reduction: str = "mean",
    *,
    max_abs_logit: float = 20.0,
    scale_by_target_precision: bool = False,
) -> Tensor:
    """The Proxy-EnD² objective: reverse KL from the student's Dirichlet to the proxy target.

    Per input,

    .. math::

        L = \\mathrm{KL}\\bigl(\\mathrm{Dir}(\\alpha) \\,\\big\\|\\, \\mathrm{Dir}(\\beta)\\bigr), \\qquad
        \\alpha = \\exp(\\operatorname{clamp}(z, -L, L)),

    with :math:`\\beta` = :func:`proxy_dirichlet_targets` ``(teacher_log_probs)``
    (offset 1, so :math:`\\beta_k - 1 = \\hat\\alpha_0 \\bar\\pi_k`). Expanding,
    :math:`L = -\\hat\\alpha_0 \\sum_k \\bar\\pi_k \\mathbb E_{\\mathrm{Dir}(\\alpha)}[\\log \\pi_k]
    - \\mathcal H[\\mathrm{Dir}(\\alpha)] + \\text{const}`: a cross-entropy to
    the ensemble mean weighted by the ensemble's precision, plus an entropy
    regulariser. It is zero iff :math:`\\alpha = \\beta`. With
    ``scale_by_target_precision=True`` each input's KL is divided by
    :math:`\\beta_0 = \\sum_k \\beta_k`, close to the weighting of the authors'
    released training criterion (same minimiser per input, inputs weighted by
    :math:`1/\\beta_0`).

    Everything is computed in float64 (at high concentrations the closed form
    subtracts large, nearly equal ``lgamma`` values) and returned in the
    logits' dtype. For other targets compose
    :func:`dirichlet_kl` with :func:`concentrations_from_logits` and
    :func:`proxy_dirichlet_targets` directly.

    :param student_logits: student outputs :math:`z` ``(*batch, c)``.
    :param teacher_log_probs: the members' log-probabilities ``(n_teachers, *batch, c)``.
    :param reduction: ``"mean"`` or ``"sum"`` over the batch dimensions, or ``"none"``.
    :param max_abs_logit: the clamp bound :math:`L` of :func:`concentrations_from_logits`.
    :param scale_by_target_precision: divide each input's KL by :math:`\\beta_0`.
    :returns: the loss, 0-d or ``(*batch,)``.
    :raises TypeError: for non-tensor or non-floating inputs or wrongly typed options.
    :raises ValueError: for mismatched shapes and the invalid values listed in
        :func:`proxy_dirichlet_targets` and :func:`concentrations_from_logits`.
    """
    _check_choice(reduction, "reduction", REDUCTIONS)
    if not isinstance(scale_by_target_precision, bool):
        raise TypeError(f"scale_by_target_precision must be a bool, got {type(scale_by_target_precision).__name__}")
    student_logits = _check_float_tensor(student_logits, "student_logits")
    teacher_log_probs = _check_teacher_log_probs(teacher_log_probs)
    if teacher_log_probs.shape[1:] != student_logits.shape:
        raise ValueError(
            f"teacher_log_probs must have shape (n_teachers, *student_logits.shape) = (n_teachers, "
            f"{', '.join(map(str, student_logits.shape))}), got {tuple(teacher_log_probs.shape)}"
        )
    if teacher_log_probs.device != student_logits.device:
        raise ValueError(
            f"teacher_log_probs is on {teacher_log_probs.device} but student_logits is on {student_logits.device}; "
            "move both to the same device"
        )
    beta = _proxy_targets_float64(teacher_log_probs, offset=1.0, min_divergence=1e-6)
    alpha = _concentrations(student_logits.to(torch.float64), max_abs_logit, "student_logits")
    loss = _dirichlet_kl(alpha, beta)
    if scale_by_target_precision:
        loss = loss / beta.sum(-1)
    return _reduce(loss, reduction).to(student_logits.dtype)


# --------------------------------------------------------------------------- uncertainty


class DirichletUncertainty(NamedTuple):
    """The closed-form uncertainty decomposition of :math:`\\mathrm{Dir}(\\alpha)`, per row."""

    mean_probs: Tensor
    """Predictive probabilities :math:`\\mathbb E[\\pi] = \\alpha / \\alpha_0`, ``(*batch, c)``."""
    total_entropy: Tensor
    """:math:`\\mathcal H[\\mathbb E \\pi]`, total uncertainty, ``(*batch,)``."""
    expected_entropy: Tensor
    """:math:`\\mathbb E[\\mathcal H(\\pi)]`, data (aleatoric) uncertainty, ``(*batch,)``."""
    mutual_information: Tensor
    """Their difference, knowledge (epistemic) uncertainty, ``(*batch,)``."""


def dirichlet_uncertainty(alpha: Tensor) -> DirichletUncertainty:
    """Predictive probabilities and the entropy decomposition of :math:`\\mathrm{Dir}(\\alpha)`.

    With :math:`\\alpha_0 = \\sum_k \\alpha_k` and :math:`\\bar p_k = \\alpha_k / \\alpha_0`:

    * total entropy :math:`\\mathcal H[\\mathbb E \\pi] = -\\sum_k \\bar p_k \\log \\bar p_k`;
    * expected entropy
      :math:`\\mathbb E[\\mathcal H(\\pi)]
      = -\\sum_k \\bar p_k \\bigl(\\psi(\\alpha_k + 1) - \\psi(\\alpha_0 + 1)\\bigr)`,
      from :math:`\\mathbb E[\\pi_k \\log \\pi_k] = \\bar p_k (\\psi(\\alpha_k + 1) - \\psi(\\alpha_0 + 1))`;
    * mutual information between the label and :math:`\\pi`, their difference,
      :math:`\\ge 0` by concavity of the entropy. For very concentrated
      Dirichlets the difference of two nearly equal terms can round below
      zero; it is clamped at 0.

    :param alpha: concentrations ``(*batch, c)``, finite and > 0.
    :returns: a :class:`DirichletUncertainty` ``(mean_probs, total_entropy,
        expected_entropy, mutual_information)``; it unpacks like a tuple.
    :raises TypeError: for a non-tensor or non-floating input.
    :raises ValueError: for non-positive or non-finite concentrations, or fewer than 2 classes.
    """
    alpha = _check_concentrations(alpha, "alpha")
    alpha0 = alpha.sum(-1, keepdim=True)
    mean_probs = alpha / alpha0
    total = -torch.special.xlogy(mean_probs, mean_probs).sum(-1)  # xlogy: 0 log 0 = 0 if a class underflows
    expected = -(mean_probs * (torch.digamma(alpha + 1.0) - torch.digamma(alpha0 + 1.0))).sum(-1)
    mutual_information = (total - expected).clamp_min(0.0)
    return DirichletUncertainty(mean_probs, total, expected, mutual_information)
