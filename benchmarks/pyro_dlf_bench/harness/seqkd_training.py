r"""The two training stages of ``pyro-dlf bench seqkd``: pre-distillation, then one f-divergence objective.

Both follow f-DISTILL (Wen et al., 2023, §2.3 and the authors' code): AdamW with a linear warm-up, the
gradient norm clipped at 1, every loss a mean over the real (unmasked) tokens of the minibatch, every
divergence word-level -- between the teacher's and the student's next-token distributions given the
same prefix, coarse-grained onto the teacher's top-k tokens of that step plus one bin for the rest
(:func:`~pyro_dlf_bench.language_model.coarse_grain`).

* :func:`pre_distill` -- on whole training reviews, :math:`w_{\mathrm{KL}}\, \mathrm{KL}(p_t \| q_t) +
  w_{\mathrm{NLL}}\, (-\log q_t(y_t))` per token: word-level distillation plus the likelihood of the data.
* :func:`train_objective` -- from the pre-distilled student, one of :data:`OBJECTIVES` along prefixes
  drawn once from the teacher (*offline*, cached) or afresh from the student at every step (*online*,
  nucleus sampling), as the authors place them:

  - ``likelihood`` (SeqKD): :math:`-\log q_t(y_t)` on teacher samples;
  - ``forward KL``: :math:`\mathrm{KL}(p_t \| q_t)` on teacher samples (by the chain rule, unbiased
    for the sequence-level forward KL);
  - ``reverse KL``: :math:`\mathrm{KL}(q_t \| p_t)` on student samples, the teacher evaluated on them;
  - ``JS``: :math:`\beta\, \mathrm{KL}(q_t \| m_t)` on student samples plus
    :math:`(1 - \beta)\, \mathrm{KL}(p_t \| m_t)` on teacher samples, :math:`m_t = \beta q_t + (1-\beta) p_t`
    (:func:`~pyro_dlf_bench.baselines.divergences.skew_js_terms`);
  - ``TV``: :math:`\tfrac12 \mathrm{TV}(p_t, q_t)` on student samples plus the same on teacher samples.

  JS and TV take the student's samples for half of each minibatch's prompts and the teacher's for the
  other half (the authors use both for every prompt): the same objective in expectation, at the cost of
  one reverse-KL step.

The loop is this module's own, not :func:`pyro_dlf.training.fit_networks`: the online objectives need
targets computed on the student's fresh samples at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from pyro_dlf._progress import progress_bar
from pyro_dlf_bench.baselines.divergences import f_divergence, skew_js_terms
from pyro_dlf_bench.language_model import coarse_grain, continuation_mask, next_token_log_probs, sample_continuations

__all__ = ["OBJECTIVES", "ONLINE_OBJECTIVES", "StageSettings", "pre_distill", "train_objective"]

#: The sequence-level objectives, in the order of the report.
OBJECTIVES: tuple[str, ...] = ("likelihood", "forward KL", "reverse KL", "JS", "TV")
#: Those that learn along the student's own samples.
ONLINE_OBJECTIVES: frozenset[str] = frozenset({"reverse KL", "JS", "TV"})


@dataclass(frozen=True)
class StageSettings:
    """The optimiser of one stage: ``epochs`` passes in minibatches of ``batch_size``, AdamW at ``lr`` after
    ``warmup_steps`` steps of linear warm-up, gradient norm clipped at ``clip``; ``seed`` orders the
    minibatches and draws the student's samples."""

    epochs: int
    lr: float
    warmup_steps: int
    batch_size: int
    seed: int
    clip: float = 1.0
    progress: bool = True


def _token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the ``True`` entries of ``mask`` (padding contributes nothing)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def _run(student: nn.Module, settings: StageSettings, n: int, desc: str, loss_of) -> list[float]:
    """The shared loop: shuffled minibatches of ``range(n)``, ``loss_of(indices, generator)`` per step."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    warmup = max(settings.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    order = torch.Generator().manual_seed(settings.seed)
    samples = torch.Generator().manual_seed(settings.seed + 1)
    losses: list[float] = []
    bar = progress_bar(total=settings.epochs * math.ceil(n / settings.batch_size), desc=desc, enabled=settings.progress)
    student.train()
    for _ in range(settings.epochs):
        for idx in torch.randperm(n, generator=order).split(settings.batch_size):
            loss = loss_of(idx, samples)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.clip)
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"{desc}: the loss became {value}; lower the learning rate (now {settings.lr:g})")
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    return losses


def pre_distill(student: nn.Module, reviews: dict, settings: StageSettings, kl_weight: float,
                nll_weight: float) -> list[float]:
    """Word-level KL to the teacher plus the likelihood of the data, on whole reviews; returns the loss per step.

    :param reviews: ``ids`` ``(N, L)`` right-padded token ids, ``mask`` ``(N, L)`` their real tokens, and the
        teacher's coarse-grained next-token distributions ``coarse`` ``(N, L − 1, k + 1)`` on its top-k
        tokens ``indices`` ``(N, L − 1, k)``, for positions 1, ..., L − 1.
    """
    def loss_of(idx: Tensor, _generator: torch.Generator) -> Tensor:
        ids, mask = reviews["ids"][idx], reviews["mask"][idx][:, 1:]
        log_q = next_token_log_probs(student, ids, 1)
        kl = f_divergence(reviews["coarse"][idx], coarse_grain(log_q, reviews["indices"][idx]), "forward_kl",
                          reduction="none")
        nll = -log_q.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return kl_weight * _token_mean(kl, mask) + nll_weight * _token_mean(nll, mask)

    return _run(student, settings, reviews["ids"].shape[0], "pre-distillation", loss_of)


def _student_samples(teacher: nn.Module, student: nn.Module, prefix: Tensor, continuation_tokens: int, top_k: int,
                     top_p: Optional[float], eos: Optional[int], generator: torch.Generator) -> dict:
    """Fresh student continuations of ``prefix`` and the teacher's coarse-grained distributions along them."""
    P = prefix.shape[1]
    sequences = torch.cat([prefix, sample_continuations(student, prefix, continuation_tokens, generator, top_p)], 1)
    with torch.no_grad():
        log_p = next_token_log_probs(teacher, sequences, P)
    indices = log_p.topk(top_k, -1).indices
    return {"sequences": sequences, "coarse": coarse_grain(log_p, indices), "indices": indices,
            "mask": continuation_mask(sequences[:, P:], eos)}


def train_objective(objective: str, teacher: nn.Module, student: nn.Module, samples: dict, settings: StageSettings,
                    prefix_tokens: int, top_p: Optional[float], js_beta: float, eos: Optional[int]) -> list[float]:
    """Train ``student`` on one of :data:`OBJECTIVES`; returns the loss per step.

    :param samples: the teacher's offline samples: ``sequences`` ``(N, P + T)`` (prefix and continuation),
        ``mask`` ``(N, T)``, ``coarse`` ``(N, T, k + 1)`` and ``indices`` ``(N, T, k)``.
    :param top_p: the nucleus of the student's online samples (``None``: its whole distribution).
    :param js_beta: the student's weight :math:`\\beta` in the JS mixture.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    P = prefix_tokens
    T, top_k = samples["sequences"].shape[1] - P, samples["indices"].shape[-1]

    def loss_of(idx: Tensor, generator: torch.Generator) -> Tensor:
        seq, mask = samples["sequences"][idx], samples["mask"][idx]
        coarse, indices = samples["coarse"][idx], samples["indices"][idx]
        if objective == "likelihood":
            log_q = next_token_log_probs(student, seq, P)
            return _token_mean(-log_q.gather(-1, seq[:, P:].unsqueeze(-1)).squeeze(-1), mask)
        if objective == "forward KL":
            log_q = coarse_grain(next_token_log_probs(student, seq, P), indices)
            return _token_mean(f_divergence(coarse, log_q, "forward_kl", reduction="none"), mask)
        if objective == "reverse KL":
            own = _student_samples(teacher, student, seq[:, :P], T, top_k, top_p, eos, generator)
            student.train()
            log_q = coarse_grain(next_token_log_probs(student, own["sequences"], P), own["indices"])
            return _token_mean(f_divergence(own["coarse"], log_q, "reverse_kl", reduction="none"), own["mask"])
        # JS and TV: the student's own samples for the first half of the prompts, the teacher's for the rest (an
        # unbiased estimate of the two-term objective at the cost of one reverse-KL step), one student forward.
        half = (len(idx) + 1) // 2
        own = _student_samples(teacher, student, seq[:half, :P], T, top_k, top_p, eos, generator)
        student.train()
        log_q = next_token_log_probs(student, torch.cat([own["sequences"], seq[half:]]), P)
        q_own, q_teacher = coarse_grain(log_q[:half], own["indices"]), coarse_grain(log_q[half:], indices[half:])
        coarse, mask = coarse[half:], mask[half:]
        if objective == "JS":
            on_teacher = skew_js_terms(coarse, q_teacher, js_beta)[0]
            on_student = skew_js_terms(own["coarse"], q_own, js_beta)[1]
            return js_beta * _token_mean(on_student, own["mask"]) + (1 - js_beta) * _token_mean(on_teacher, mask)
        tv_student = f_divergence(own["coarse"], q_own, "tv", reduction="none")
        tv_teacher = f_divergence(coarse, q_teacher, "tv", reduction="none")
        return 0.5 * _token_mean(tv_student, own["mask"]) + 0.5 * _token_mean(tv_teacher, mask)

    return _run(student, settings, samples["sequences"].shape[0], objective, loss_of)
