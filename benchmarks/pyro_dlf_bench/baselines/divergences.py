"""The f-DISTILL family of distillation losses between categorical distributions.

f-DISTILL (Wen et al., 2023, "f-Divergence Minimization for Sequence-Level
Knowledge Distillation") trains a student distribution :math:`q` to imitate a
teacher distribution :math:`p` by minimising one of four f-divergences. Over
:math:`c` classes (always the last tensor dimension here):

* forward KL, mean-seeking (the classic distillation loss of Hinton et al.):
  :math:`\\mathrm{KL}(p \\,\\|\\, q) = \\sum_k p_k (\\log p_k - \\log q_k)`;
* reverse KL, mode-seeking:
  :math:`\\mathrm{KL}(q \\,\\|\\, p) = \\sum_k q_k (\\log q_k - \\log p_k)`;
* Jensen--Shannon, symmetric and bounded by :math:`\\log 2`:
  :math:`\\mathrm{JS}(p, q) = \\tfrac12 \\mathrm{KL}(p \\,\\|\\, m) + \\tfrac12 \\mathrm{KL}(q \\,\\|\\, m)`
  with :math:`m = \\tfrac12 (p + q)`;
* total variation, symmetric and bounded by 1:
  :math:`\\mathrm{TV}(p, q) = \\tfrac12 \\sum_k |p_k - q_k|`.

All functions take *log*-probabilities and work in log space: :math:`\\log m`
is formed with a log-add (:func:`torch.logaddexp`), never as the log of a sum
of probabilities, and the convention :math:`0 \\log 0 = 0` is applied exactly, so
a teacher with exact zeros (log-probability :math:`-\\infty`) gives finite
forward-KL, JS and TV values with finite gradients. The reverse KL is
:math:`+\\infty` whenever the student puts mass where the teacher has none; that
is its true value, and it is returned as ``inf`` (never NaN).

:func:`f_divergence` computes a divergence per distribution,
:func:`distillation_loss` is the usual entry point for a student that outputs
logits, and :func:`sequence_f_divergence` is f-DISTILL's step-wise
(token-level) decomposition for autoregressive sequence models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DIVERGENCES", "REDUCTIONS", "distillation_loss", "f_divergence", "sequence_f_divergence", "skew_js_terms"]

DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "js", "tv")
"""The divergence names accepted by :func:`f_divergence` and friends."""

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
"""The reductions accepted over the batch dimensions."""

_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- validation


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_float_tensor(value: object, name: str, *, min_dim: int = 1) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__name__}; "
            "wrap it with torch.as_tensor(..., dtype=torch.float32)"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}; convert it with {name}.float()")
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s) (classes last), got shape {tuple(value.shape)}"
        )
    if value.shape[-1] == 0:
        raise ValueError(
            f"{name} has an empty class (last) dimension, shape {tuple(value.shape)}; give at least one class"
        )
    return value


def _check_same_layout(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape (batch dims..., classes), "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}; move both to the same device")


def _normalisation_tolerance(t: Tensor) -> float:
    # log_softmax output sums to one up to round-off; allow a few ulps of the
    # dtype (bfloat16 / float16 are coarse) but catch logits passed by mistake.
    return max(1e-3, 8.0 * torch.finfo(t.dtype).eps)


def _check_log_probs(t: Tensor, name: str) -> Tensor:
    """``t`` holds log-probabilities: no NaN or ``+inf``, and ``logsumexp`` over the classes is 0."""
    with torch.no_grad():
        if bool(torch.isnan(t).any()):
            raise ValueError(
                f"{name} contains NaN; log-probabilities must be finite or -inf (an exact zero probability)"
            )
        if bool((t == math.inf).any()):
            raise ValueError(
                f"{name} contains +inf; log-probabilities must be <= 0 (finite, or -inf for a zero probability)"
            )
        gap = torch.logsumexp(t, dim=-1).abs()  # inf for a row of all zeros
        tol = _normalisation_tolerance(t)
        if not bool((gap <= tol).all()):
            worst = float(gap.max())
            raise ValueError(
                f"{name} must hold normalised log-probabilities over the last dimension (logsumexp == 0), "
                f"but a row is off by {worst:.3g}; pass torch.log_softmax(logits, dim=-1) for logits, "
                "or probs.log() for probabilities"
            )
    return t


def _check_mask(mask: object, shape: torch.Size, device: torch.device) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be None or a torch.Tensor of shape {tuple(shape)}, got {type(mask).__name__}")
    if mask.shape != shape:
        raise ValueError(
            f"mask must have shape (batch, length) = {tuple(shape)} to match the log-probabilities, "
            f"got {tuple(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(
            f"mask is on {mask.device} but the log-probabilities are on {device}; move it with mask.to(...)"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"mask must be bool or hold 0/1 values, got dtype {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            "mask must be bool or hold only 0/1 values (1 = real token, 0 = padding); convert it with mask.bool()"
        )
    return mask == 1


# --------------------------------------------------------------------------- elementwise terms


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Elementwise :math:`a_k (\\log a_k - \\log b_k)` with :math:`0 \\log 0 = 0`, NaN-free in value and gradient.

    Where :math:`a_k = 0` both logs are replaced by 0 *before* the arithmetic
    (the "double where"), so the unused branch never produces ``0 * inf`` that
    would turn into NaN in the backward pass. Where :math:`a_k > 0 = b_k` the
    term is ``+inf``, the true value.
    """
    support = log_a > -math.inf
    safe_a = torch.where(support, log_a, torch.zeros_like(log_a))
    safe_b = torch.where(support, log_b, torch.zeros_like(log_b))
    return torch.where(support, safe_a.exp() * (safe_a - safe_b), torch.zeros_like(safe_a))


def _divergence_terms(log_p: Tensor, log_q: Tensor, divergence: str) -> Tensor:
    """Per-class contributions whose sum over the last dimension is the divergence."""
    if divergence == "forward_kl":
        return _kl_terms(log_p, log_q)
    if divergence == "reverse_kl":
        return _kl_terms(log_q, log_p)
    if divergence == "js":
        # log m = log((p + q) / 2) by a log-add. Classes where both are zero
        # contribute nothing; feed them 0 so logaddexp's gradient stays finite.
        both_zero = (log_p == -math.inf) & (log_q == -math.inf)
        safe_p = torch.where(both_zero, torch.zeros_like(log_p), log_p)
        safe_q = torch.where(both_zero, torch.zeros_like(log_q), log_q)
        log_m = torch.logaddexp(safe_p, safe_q) - _LOG2
        return 0.5 * (_kl_terms(log_p, log_m) + _kl_terms(log_q, log_m))
    # total variation: probabilities are bounded, nothing to stabilise
    return 0.5 * (log_p.exp() - log_q.exp()).abs()


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# --------------------------------------------------------------------------- public API


def f_divergence(
    teacher_log_probs: Tensor,
    student_log_probs: Tensor,
    divergence: str,
    reduction: str = "mean",
) -> Tensor:
    """A divergence between teacher and student categorical distributions (classes last).

    With :math:`p = \\exp(\\text{teacher\\_log\\_probs})` and
    :math:`q = \\exp(\\text{student\\_log\\_probs})`, for each distribution in the
    batch:

    * ``"forward_kl"``: :math:`\\sum_k p_k (\\log p_k - \\log q_k)`;
    * ``"reverse_kl"``: :math:`\\sum_k q_k (\\log q_k - \\log p_k)`;
    * ``"js"``: :math:`\\tfrac12 \\sum_k p_k (\\log p_k - \\log m_k) + \\tfrac12 \\sum_k q_k (\\log q_k - \\log m_k)`,
      :math:`\\log m_k = \\operatorname{logaddexp}(\\log p_k, \\log q_k) - \\log 2`;
    * ``"tv"``: :math:`\\tfrac12 \\sum_k |p_k - q_k|`.

    :math:`0 \\log 0 = 0`: teacher zeros give finite forward-KL/JS/TV values with
    finite gradients; the reverse KL is ``+inf`` where :math:`q_k > 0 = p_k`
    (its true value). Every divergence is zero exactly when :math:`p = q`.

    :param teacher_log_probs: teacher log-probabilities ``(*batch, c)``; each row
        must be normalised (``logsumexp == 0``); ``-inf`` marks a zero probability.
    :param student_log_probs: student log-probabilities, same shape and device.
    :param divergence: one of :data:`DIVERGENCES`.
    :param reduction: ``"mean"`` or ``"sum"`` over all batch dimensions, or
        ``"none"`` for the per-distribution values ``(*batch,)``.
    :returns: a 0-d tensor (``"mean"``/``"sum"``) or a ``(*batch,)`` tensor.
    :raises TypeError: for non-tensor, non-floating inputs or non-str options.
    :raises ValueError: for unknown options, mismatched shapes, NaN/``+inf``
        or unnormalised log-probabilities.
    """
    _check_choice(divergence, "divergence", DIVERGENCES)
    _check_choice(reduction, "reduction", REDUCTIONS)
    teacher_log_probs = _check_float_tensor(teacher_log_probs, "teacher_log_probs")
    student_log_probs = _check_float_tensor(student_log_probs, "student_log_probs")
    _check_same_layout(teacher_log_probs, "teacher_log_probs", student_log_probs, "student_log_probs")
    _check_log_probs(teacher_log_probs, "teacher_log_probs")
    _check_log_probs(student_log_probs, "student_log_probs")
    values = _divergence_terms(teacher_log_probs, student_log_probs, divergence).sum(-1)
    return _reduce(values, reduction)


def distillation_loss(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    divergence: str = "forward_kl",
    reduction: str = "mean",
) -> Tensor:
    """The f-DISTILL loss of a student that outputs logits.

    The student's log-probabilities are :math:`\\log q = \\operatorname{log\\_softmax}(z)`
    over the last dimension of the logits :math:`z`; the loss is
    :func:`f_divergence` ``(teacher_log_probs, log q, divergence, reduction)``.
    With the default forward KL this is the classic distillation loss, the
    cross-entropy to the teacher's soft labels minus the teacher's (constant)
    entropy.

    :param student_logits: unnormalised student scores ``(*batch, c)``; ``-inf``
        masks a class out (zero probability), but every row needs a finite entry.
    :param teacher_log_probs: teacher log-probabilities ``(*batch, c)``, e.g.
        ``torch.log_softmax(teacher_logits, -1)``, or for a deep ensemble the log
        of its mean probabilities ``torch.logsumexp(member_log_probs, 0) - log M``.
    :param divergence: one of :data:`DIVERGENCES`.
    :param reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch dimensions.
    :returns: the loss, 0-d or ``(*batch,)``.
    :raises TypeError: for non-tensor or non-floating logits (and see :func:`f_divergence`).
    :raises ValueError: for NaN or ``+inf`` logits, or a row of only ``-inf``
        (and see :func:`f_divergence`).
    """
    student_logits = _check_float_tensor(student_logits, "student_logits")
    with torch.no_grad():
        # -inf is allowed: it masks a class out (probability exactly 0)
        if bool(torch.isnan(student_logits).any()) or bool((student_logits == math.inf).any()):
            raise ValueError("student_logits contains NaN or +inf values; check the student's forward pass")
        if bool((student_logits == -math.inf).all(-1).any()):
            raise ValueError("a row of student_logits is entirely -inf; at least one class needs a finite logit")
    return f_divergence(teacher_log_probs, torch.log_softmax(student_logits, dim=-1), divergence, reduction)


def skew_js_terms(teacher_log_probs: Tensor, student_log_probs: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """The two halves of the skewed Jensen--Shannon divergence f-DISTILL trains with.

    With the mixture :math:`m = \\beta q + (1 - \\beta) p`,

    .. math::

        \\mathrm{JS}_\\beta(p, q) = \\beta\\, \\mathrm{KL}(q \\,\\|\\, m) + (1 - \\beta)\\, \\mathrm{KL}(p \\,\\|\\, m),

    which is :func:`f_divergence`'s ``"js"`` at :math:`\\beta = \\tfrac12`. The two terms are returned
    apart, unweighted, because f-DISTILL evaluates them along different prefixes: :math:`\\mathrm{KL}(q \\| m)`
    along the student's own samples and :math:`\\mathrm{KL}(p \\| m)` along the teacher's.
    Gradients flow through :math:`q` in both terms (the mixture depends on the student).

    :param teacher_log_probs: teacher log-probabilities ``(*batch, c)``, normalised.
    :param student_log_probs: student log-probabilities, same shape and device.
    :param beta: the student's weight in the mixture, in ``(0, 1)``.
    :returns: ``(KL(p ‖ m), KL(q ‖ m))``, each ``(*batch,)``.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be a number in (0, 1), got {beta!r}")
    teacher_log_probs = _check_float_tensor(teacher_log_probs, "teacher_log_probs")
    student_log_probs = _check_float_tensor(student_log_probs, "student_log_probs")
    _check_same_layout(teacher_log_probs, "teacher_log_probs", student_log_probs, "student_log_probs")
    _check_log_probs(teacher_log_probs, "teacher_log_probs")
    _check_log_probs(student_log_probs, "student_log_probs")
    both_zero = (teacher_log_probs == -math.inf) & (student_log_probs == -math.inf)
    safe_p = torch.where(both_zero, torch.zeros_like(teacher_log_probs), teacher_log_probs)
    safe_q = torch.where(both_zero, torch.zeros_like(student_log_probs), student_log_probs)
    log_m = torch.logaddexp(safe_q + math.log(beta), safe_p + math.log1p(-beta))
    return (_kl_terms(teacher_log_probs, log_m).sum(-1), _kl_terms(student_log_probs, log_m).sum(-1))


def sequence_f_divergence(
    teacher_log_probs: Tensor,
    student_log_probs: Tensor,
    divergence: str,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """f-DISTILL's step-wise (token-level) decomposition for autoregressive sequences.

    For a sequence :math:`y = (y_1, \\dots, y_T)` let
    :math:`p_t = p(\\cdot \\mid y_{<t})` and :math:`q_t = q(\\cdot \\mid y_{<t})` be
    the teacher's and the student's next-token distributions given the *same*
    prefix. The sequence-level divergence :math:`D(P, Q)` between the two
    distributions over whole sequences is approximated by the sum of the
    per-step divergences along the given prefixes,

    .. math::

        \\widehat D(y) = \\sum_{t=1}^{T} \\mathrm{mask}_t \\, D(p_t, q_t),

    one value per sequence. How this relates to :math:`D(P, Q)`:

    * **Forward KL** -- by the chain rule of KL divergence the decomposition is
      exact *in expectation over the teacher's prefixes*:
      :math:`\\mathrm{KL}(P \\| Q) = \\mathbb E_{y \\sim P}
      \\sum_t \\mathrm{KL}(p_t \\| q_t)`. With prefixes from a fixed sample
      (teacher-forced data, or one draw per source) the sum is f-DISTILL's
      step-wise estimate of it, unbiased when the prefixes are drawn from the
      teacher.
    * **Reverse KL** -- likewise exact in expectation over the *student's*
      prefixes, :math:`\\mathrm{KL}(Q \\| P) = \\mathbb E_{y \\sim Q}
      \\sum_t \\mathrm{KL}(q_t \\| p_t)`; on other prefixes it is the step-wise
      estimate.
    * **JS and TV** -- no chain rule holds; the step-wise sums are the paper's
      tractable surrogates. For TV the surrogate is an upper bound:
      :math:`\\mathrm{TV}(P, Q) \\le \\mathbb E_{y \\sim P}
      \\sum_t \\mathrm{TV}(p_t, q_t)` (replace the distributions one step at a
      time and apply the triangle inequality); the same holds with prefixes from
      :math:`Q`.

    Which prefixes to feed (teacher samples, student samples, data) is the
    caller's choice; this function only evaluates the sum along them.

    :param teacher_log_probs: teacher next-token log-probabilities ``(batch, length, vocab)``.
    :param student_log_probs: student next-token log-probabilities, same shape,
        computed on the same prefixes.
    :param divergence: one of :data:`DIVERGENCES`.
    :param mask: optional ``(batch, length)`` bool or 0/1 tensor, ``True``/1 for
        real tokens and ``False``/0 for padding. Masked steps contribute nothing:
        their log-probabilities are never read (they may hold anything, even
        NaN), so a padded sequence gives the same value and gradients as the
        unpadded one. ``None`` keeps every step.
    :param reduction: ``"mean"`` -- the mean over sequences of the per-sequence
        sums; ``"sum"`` -- their total; ``"none"`` -- the per-sequence sums ``(batch,)``.
    :returns: a 0-d tensor or a ``(batch,)`` tensor.
    :raises TypeError: for non-tensor inputs or a mask of the wrong kind.
    :raises ValueError: for inputs that are not 3-D, mismatched shapes, a
        non-0/1 mask or invalid log-probabilities at unmasked steps.
    """
    _check_choice(divergence, "divergence", DIVERGENCES)
    _check_choice(reduction, "reduction", REDUCTIONS)
    teacher_log_probs = _check_float_tensor(teacher_log_probs, "teacher_log_probs")
    student_log_probs = _check_float_tensor(student_log_probs, "student_log_probs")
    for t, name in ((teacher_log_probs, "teacher_log_probs"), (student_log_probs, "student_log_probs")):
        if t.dim() != 3:
            raise ValueError(
                f"{name} must have shape (batch, length, vocab), got {tuple(t.shape)}; "
                "use f_divergence for unstructured batches"
            )
    _check_same_layout(teacher_log_probs, "teacher_log_probs", student_log_probs, "student_log_probs")
    if mask is None:
        values = f_divergence(teacher_log_probs, student_log_probs, divergence, reduction="none")
        return _reduce(values.sum(-1), reduction)
    keep = _check_mask(mask, teacher_log_probs.shape[:2], teacher_log_probs.device).unsqueeze(-1)
    # Replace padded steps by a valid distribution (uniform) before any
    # arithmetic: their contents never reach the values or the gradients.
    uniform = torch.full_like(teacher_log_probs, -math.log(teacher_log_probs.shape[-1]))
    teacher = torch.where(keep, teacher_log_probs, uniform)
    student = torch.where(keep, student_log_probs, uniform.to(student_log_probs.dtype))
    steps = f_divergence(teacher, student, divergence, reduction="none")
    steps = torch.where(keep.squeeze(-1), steps, torch.zeros_like(steps))
    return _reduce(steps.sum(-1), reduction)
