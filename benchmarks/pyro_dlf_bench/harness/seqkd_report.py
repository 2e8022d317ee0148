r"""The seqkd benchmark's report: runs of several student seeds merged, students compared pairwise.

Every metric is pooled per run (perplexity :math:`\exp(\sum_i \ell_i / \sum_i n_i)` over held-out reviews,
KL per token along the held-out teacher samples, mean ROUGE-L, distinct-n) and reported as the mean over
the runs' student seeds ± its standard error (between-seed standard deviation / √S).

A student is compared with another (its start) on the same held-out examples: with per-example totals
averaged over the seeds, the difference of the pooled per-token averages and its standard error come from
:func:`pyro_dlf_bench.metrics.seed_averaged_paired_difference`: the test set's sampling error by the delta
method, plus with S ≥ 2 seeds the between-seed variance of the per-seed differences over S. A difference is *resolved* when it exceeds
twice that standard error.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch

from pyro_dlf._files import atomic_write
from pyro_dlf_bench import metrics

__all__ = ["merge_seqkd_results", "summarise_seqkd", "write_seqkd_report"]

_IGNORED_CONFIG = ("student_seed", "command", "progress", "cache_dir")
_PER_TOKEN = {"review_nll": "review_tokens", "forward_kl": "prefix_tokens", "reverse_kl": "prefix_tokens"}


def merge_seqkd_results(results: list[dict]) -> dict:
    """One result holding the runs of every input (one per student seed), which must share their protocol."""
    if not results:
        raise ValueError("inputs: give at least one seqkd result")
    first = results[0]
    protocol = {k: v for k, v in first["config"].items() if k not in _IGNORED_CONFIG}
    data = _same_data(first["data"])
    seeds: set[int] = set()
    runs = []
    for result in results:
        if result.get("benchmark") != "seqkd" or "runs" not in result:
            raise ValueError("inputs: every file must be a result of this version of 'pyro-dlf bench seqkd'")
        other = {k: v for k, v in result["config"].items() if k not in _IGNORED_CONFIG}
        if other != protocol or _same_data(result["data"]) != data:
            changed = sorted(k for k in protocol if protocol[k] != other.get(k)) or ["data"]
            raise ValueError(f"inputs: the runs differ in {', '.join(changed)}; merge runs of one protocol")
        for run in result["runs"]:
            if run["student_seed"] in seeds:
                raise ValueError(f"inputs: student seed {run['student_seed']} appears twice; give each run once")
            seeds.add(run["student_seed"])
            runs.append(run)
    runs.sort(key=lambda run: run["student_seed"])
    return {**first, "runs": runs, "command": "; ".join(run["command"] for run in runs),
            "wall_seconds": sum(run["wall_seconds"] for run in runs)}


def _same_data(data: dict) -> dict:
    """What must agree between runs: everything but the teacher file's folder (where it is installed)."""
    return {**data, "teacher": os.path.basename(data["teacher"])}


def _pooled(row: dict, data: dict) -> dict:
    values = {name: sum(row[name]) / sum(data[count]) for name, count in _PER_TOKEN.items()}
    values["perplexity"] = math.exp(values.pop("review_nll"))
    values["rouge_l"] = sum(row["rouge_l"]) / len(row["rouge_l"])
    values.update({k: row[k] for k in ("distinct_1", "distinct_2", "distinct_3")})
    return values


def _rows(runs: list[dict], *methods: str) -> list[dict]:
    """Per run that has every one of ``methods`` (the ablation's may be in some runs only): method → row."""
    by_run = [{r["method"]: r for r in run["rows"]} for run in runs]
    return [rows for rows in by_run if all(m in rows for m in methods)]


def _paired(runs: list[dict], data: dict, method: str, reference: str, metric: str) -> tuple[float, float]:
    """Difference of ``metric`` (per token; ROUGE-L per example) between two methods, seeds averaged, and its SE."""
    rows = _rows(runs, method, reference)
    counts = torch.tensor(data[_PER_TOKEN[metric]], dtype=torch.float64) if metric in _PER_TOKEN else None
    a = torch.tensor([rs[method][metric] for rs in rows], dtype=torch.float64)
    b = torch.tensor([rs[reference][metric] for rs in rows], dtype=torch.float64)
    return metrics.seed_averaged_paired_difference(a, b, counts)


def summarise_seqkd(result: dict) -> dict:
    """Per method: metrics as mean ± SE over seeds; per trained student: paired differences to its start."""
    runs, data = result["runs"], result["data"]
    rows = {row["method"]: row for run in runs for row in run["rows"]}  # every method, in the order of the runs
    summary: dict = {"methods": {}, "paired": {}}
    for method in rows:
        present = [r[method] for r in _rows(runs, method)]
        pooled = [_pooled(row, data) for row in present]
        summary["methods"][method] = {k: metrics.mean_and_standard_error([p[k] for p in pooled]) for k in pooled[0]}
        summary["methods"][method]["fit_minutes"] = metrics.mean_and_standard_error([row["fit_seconds"] / 60 for row in present])
        summary["methods"][method]["seeds"] = len(present)
    for row in rows.values():
        if row.get("start"):
            summary["paired"][row["method"]] = {
                "start": row["start"],
                **{metric: _paired(runs, data, row["method"], row["start"], metric)
                   for metric in ("review_nll", "forward_kl", "reverse_kl", "rouge_l")}}
    return summary


def _fmt(value: tuple[float, Optional[float]], digits: int) -> str:
    mean, se = value
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def _verdict(delta: float, se: float, lower_is_better: bool = True) -> str:
    better = -delta if lower_is_better else delta
    if better > 2 * se:
        return "better"
    if better < -2 * se:
        return "**worse**"
    return "not resolved"


def _lines(result: dict, summary: dict, name: str) -> list[str]:
    config, data, machine, runs = result["config"], result["data"], result["machine"], result["runs"]
    seeds = ", ".join(str(run["student_seed"]) for run in runs)
    lines = [
        f"# Sequence-level distillation ({name})", "",
        f"Command{'s' if len(runs) > 1 else ''}: " + "; ".join(f"`{run['command']}`" for run in runs) + "  ",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}, torch "
        f"{result['versions']['torch']} ({machine['torch_threads']} threads), pyro_dlf {result['versions']['pyro_dlf']}; "
        f"wall time {result['wall_seconds'] / 60:.1f} min (all runs).  ",
        f"Teacher: {data['teacher']} ({data['teacher_layers']} layers). Student: its layers {data['student_layers']} "
        f"(embeddings tied and frozen). " + (
            f"Pre-distillation: {data['pre_distill_reviews']} training reviews (≤ {config['review_tokens']} tokens), "
            f"{config['kl_weight']:g}·KL(teacher‖student) + {config['nll_weight']:g}·NLL per token, "
            f"{config['pre_distill_epochs']} passes, AdamW {config['pre_distill_lr']:g}. Objectives: from the pre-distilled "
            f"student, " if config["start"] == "pre-distilled" else
            "Objectives: from the layer-copied student without pre-distillation (cold start), ")
        + f"{config['epochs']} passes over {data['train_prefixes']} training-review prefixes of "
        f"{config['prefix_tokens']} tokens (batch {config['batch_size']}, AdamW {config['lr']:g}, warm-up "
        f"{config['warmup_steps']} steps, clip 1); teacher samples of {config['continuation_tokens']} tokens drawn once at "
        f"temperature 1; the student's samples drawn at every step with top-p {config['student_top_p']:g}; JS with β = "
        f"{config['js_beta']:g}; divergences on the teacher's top {config['top_k']} tokens plus the rest.  ",
        f"Held out: {data['eval_reviews']} test reviews ({sum(data['review_tokens'])} predicted tokens) for perplexity; "
        f"{data['eval_prefixes']} test-review prefixes for the KL per token along one teacher sample each (full "
        f"vocabulary, {sum(data['prefix_tokens'])} tokens) and for ROUGE-L of one top-p {config['student_top_p']:g} "
        f"continuation against the review's true next {config['continuation_tokens']} tokens, and its distinct-n.", "",
        f"Student seeds: {seeds}; " + ("mean ± standard error over the seeds." if len(runs) > 1 else "one seed."), "",
    ]
    paired = summary["paired"]
    f_divs = [m for m in ("forward KL", "reverse KL", "JS", "TV") if paired.get(m, {}).get("start") == "pre-distilled"]
    if f_divs:
        lines += ["## Target", "",
                  "Every sequence-level f-divergence student improves on the pre-distilled start in KL(teacher‖student) "
                  "per token and in perplexity (a difference resolved at 2 paired SEs):", ""]
        for m in f_divs:
            kl, nll = paired[m]["forward_kl"], paired[m]["review_nll"]
            ok = kl[0] + 2 * kl[1] < 0 and nll[0] + 2 * nll[1] < 0
            lines.append(f"- {m}: KL {kl[0]:+.4f} ± {kl[1]:.4f}, log-perplexity {nll[0]:+.4f} ± {nll[1]:.4f} — "
                         f"{'met' if ok else '**not met**'}")
        lines.append("")
    lines += ["## Results", "",
              "| method | perplexity | KL(teacher‖student) / token | KL(student‖teacher) / token | ROUGE-L | distinct-1 "
              "| distinct-2 | distinct-3 | params | fit (min) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    params = {row["method"]: row["parameters"] for run in runs for row in run["rows"]}
    for method, values in summary["methods"].items():
        lines.append(f"| {method} | {_fmt(values['perplexity'], 1)} | {_fmt(values['forward_kl'], 3)} | "
                     f"{_fmt(values['reverse_kl'], 3)} | {_fmt(values['rouge_l'], 4)} | {_fmt(values['distinct_1'], 3)} | "
                     f"{_fmt(values['distinct_2'], 3)} | {_fmt(values['distinct_3'], 3)} | {params[method]:,} | "
                     f"{_fmt(values['fit_minutes'], 1)} |")
    partial = [m for m, v in summary["methods"].items() if v["seeds"] < len(runs)]
    lines += ["", "The teacher row: its own perplexity, ROUGE-L and distinct-n (the reference); its fit time is the time "
              "to draw and cache its samples and distributions."
              + (f" Rows run for some seeds only ({'; '.join(partial)}): over those seeds." if partial else ""), ""]
    if paired:
        lines += ["## Paired differences to each student's start", "",
                  "Student minus its start on the same held-out examples (seeds averaged), ± the paired standard error; "
                  "'better' / 'worse' when the difference exceeds 2 SE.", "",
                  "| student | start | Δ log-perplexity / token | Δ KL(teacher‖student) / token | Δ KL(student‖teacher) / token "
                  "| Δ ROUGE-L |", "|---|---|---|---|---|---|"]
        for method, p in paired.items():
            cells = [f"{p[k][0]:+.4f} ± {p[k][1]:.4f} ({_verdict(*p[k], lower_is_better=k != 'rouge_l')})"
                     for k in ("review_nll", "forward_kl", "reverse_kl", "rouge_l")]
            lines.append(f"| {method} | {p['start']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![training curves]({name}_curves.png)", ""]
    return lines


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = result["runs"][0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for objective, curve in run["curves"].items():
        ax.plot(curve, label=objective, lw=1, ls="--" if "cold start" in objective else "-")
    ax.set(xlabel="AdamW step", ylabel="objective (per token)", yscale="log",
           title=f"Student objectives (student seed {run['student_seed']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120), binary=True)
    plt.close(fig)


def write_seqkd_report(result: dict, output_dir: str, name: str = "seqkd") -> tuple[str, str]:
    """Write ``{name}.json`` (with the summary), ``{name}.md`` and the training curves ``{name}_curves.png``."""
    os.makedirs(output_dir, exist_ok=True)
    summary = summarise_seqkd(result)
    json_path, md_path = os.path.join(output_dir, f"{name}.json"), os.path.join(output_dir, f"{name}.md")
    atomic_write(json_path, lambda fh: json.dump({**result, "summary": summary}, fh, indent=1))
    atomic_write(md_path, lambda fh: fh.write("\n".join(_lines(result, summary, name))))
    _plot(result, os.path.join(output_dir, f"{name}_curves.png"))
    return json_path, md_path
