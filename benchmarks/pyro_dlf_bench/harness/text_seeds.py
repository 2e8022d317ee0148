r"""Runs of the text benchmark with different student seeds, merged by ``pyro-dlf bench report``.

The runs share the split and the teachers (``seed``) and differ in ``student_seed`` (every student's
adapters, heads and minibatch order). Every metric is reported as the mean over the seeds ± its
standard error (between-seed standard deviation / √S).

A method is compared with the DLF on the same test reviews. For the NLL, with per-review differences
averaged over the seeds, the paired standard error over reviews
(:func:`pyro_dlf_bench.metrics.paired_difference`, the test set's sampling error) is combined with the
between-seed variance of the per-seed mean differences over S (training randomness; the reviews are the
same for every seed, so the two are independent). For the ECE, a statistic of the whole test set, the
per-seed differences give the mean and its standard error over seeds. The column "conf − acc" is the mean
top-label confidence minus the accuracy (:func:`pyro_dlf_bench.metrics.overconfidence`, from each run's
reliability bins): the signed part of the ECE.
"""

from __future__ import annotations

import json
import os

import torch

from pyro_dlf._files import atomic_write
from pyro_dlf_bench import metrics
from pyro_dlf_bench.harness.text import ood_auroc_plot

__all__ = ["merge_text_results", "summarise_text_seeds", "write_text_seeds_report"]

_IGNORED_CONFIG = ("student_seed", "command", "progress", "cache_dir", "jobs")
_COLUMNS = (("accuracy", "acc", 4), ("nll", "NLL", 4), ("ece", "ECE", 4), ("overconfidence", "conf − acc", 4),
            ("brier", "Brier", 4), ("auroc_entropy", "AUROC H", 4), ("auroc_mi", "AUROC MI", 4),
            ("logit_variance_ratio", "var. ratio", 2))


def merge_text_results(results: list[dict]) -> dict:
    """One result holding the runs of every input (one per student seed, same split, teachers and protocol)."""
    if not results:
        raise ValueError("inputs: give at least one text result")
    first = results[0]
    protocol = {k: v for k, v in first["config"].items() if k not in _IGNORED_CONFIG}
    methods = [row["method"] for row in first["rows"]]
    seeds: set[int] = set()
    for result in results:
        if "per_review_nll" not in result:
            raise ValueError("inputs: a text result without per-review NLLs (written by an older version); rerun it")
        other = {k: v for k, v in result["config"].items() if k not in _IGNORED_CONFIG}
        if other != protocol:
            changed = sorted(k for k in protocol if protocol[k] != other.get(k))
            raise ValueError(f"inputs: the runs differ in {', '.join(changed)}; merge runs of one protocol and seed")
        if [row["method"] for row in result["rows"]] != methods:
            raise ValueError("inputs: the runs fitted different methods; give runs with the same --methods")
        seed = result["config"]["seed"] if result["config"].get("student_seed") is None else result["config"]["student_seed"]
        if seed in seeds:
            raise ValueError(f"inputs: student seed {seed} appears twice; give each run once")
        seeds.add(seed)
    runs = sorted(results, key=lambda r: r["config"]["seed"] if r["config"].get("student_seed") is None
                  else r["config"]["student_seed"])
    return {"benchmark": "text_seeds", "runs": runs, "seeds": sorted(seeds),
            "wall_seconds": sum(r["wall_seconds"] for r in runs)}


def _mean_se(values: list) -> tuple:
    """Mean ± SE over the seeds of a column some methods leave empty (``None``: e.g. no mutual information)."""
    values = [v for v in values if v is not None]
    return metrics.mean_and_standard_error(values) if values else (None, None)


def _against_dlf(runs: list[dict], method: str) -> dict:
    """``method`` minus the DLF: NLL (paired over reviews, seeds averaged) and ECE (paired over seeds)."""
    a = torch.tensor([run["per_review_nll"][method] for run in runs], dtype=torch.float64)
    b = torch.tensor([run["per_review_nll"]["DLF"] for run in runs], dtype=torch.float64)
    delta, se = metrics.seed_averaged_paired_difference(a, b)
    ece = [next(r["ece"] for r in run["rows"] if r["method"] == method)
           - next(r["ece"] for r in run["rows"] if r["method"] == "DLF") for run in runs]
    ece_mean, ece_se = _mean_se(ece)
    return {"nll": (delta, se), "ece": (ece_mean, ece_se)}


def _value(run: dict, method: str, key: str):
    """One run's figure: a column of its rows, or the over-confidence from its reliability bins."""
    if key == "overconfidence":
        bins = run.get("reliability", {}).get(method)
        return None if bins is None else metrics.overconfidence(bins)
    return next(r for r in run["rows"] if r["method"] == method).get(key)


def summarise_text_seeds(merged: dict) -> dict:
    """Per method: every column per seed and as mean ± SE over seeds; per student other than the DLF: its gaps
    to the DLF."""
    runs = merged["runs"]
    methods = [row["method"] for row in runs[0]["rows"]]
    per_seed = {m: {key: [_value(run, m, key) for run in runs] for key, _, _ in _COLUMNS} for m in methods}
    table = {m: {key: _mean_se(values) for key, values in columns.items()} for m, columns in per_seed.items()}
    paired = {m: _against_dlf(runs, m) for m in methods if m not in ("DLF", "teacher ensemble")}
    return {"methods": table, "per_seed": per_seed, "against_dlf": paired}


def _targets(summary: dict, seeds: int) -> list[str]:
    paired = {m: p for m, p in summary["against_dlf"].items() if not m.startswith("DLF")}
    if not paired:
        return ["(no student besides the DLF)"]
    lines = []
    for key, label in (("nll", "NLL"), ("ece", "ECE")):
        best = min(paired, key=lambda m: summary["methods"][m][key][0])
        gap, se = paired[best][key]  # best other minus the DLF
        ok = se is not None and -gap <= se
        lines.append(f"- DLF {label} ≤ the best other student's + one paired SE ({seeds} seeds): "
                     f"{'met' if ok else '**not met**'} (DLF {summary['methods']['DLF'][key][0]:.4f}, best other {best} "
                     f"{summary['methods'][best][key][0]:.4f}; DLF − {best} {-gap:+.4f}, SE "
                     f"{'–' if se is None else f'{se:.4f}'})")
    signed = summary["per_seed"]["DLF"]["overconfidence"]
    if None not in signed:
        lines.append(f"  - the DLF's mean confidence − accuracy per seed: {', '.join(f'{v:+.4f}' for v in signed)} against "
                     f"its ECE {', '.join(f'{v:.4f}' for v in summary['per_seed']['DLF']['ece'])} (equal when every "
                     "confidence bin errs the same way)")
    return lines


def _cell(value: tuple, digits: int) -> str:
    mean, se = value
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def write_text_seeds_report(merged: dict, output_dir: str, name: str = "text") -> tuple[str, str]:
    """Write ``{name}.json`` (the runs and the summary), ``{name}.md`` and two plots (PNG): every student's
    NLL and ECE minus the DLF's with one SE (``{name}_against_dlf.png``) and the OOD AUROCs over the seeds
    (``{name}_ood.png``)."""
    os.makedirs(output_dir, exist_ok=True)
    summary = summarise_text_seeds(merged)
    runs, first = merged["runs"], merged["runs"][0]
    config, data, machine = first["config"], first["data"], first["machine"]
    json_path, md_path = os.path.join(output_dir, f"{name}.json"), os.path.join(output_dir, f"{name}.md")
    atomic_write(json_path, lambda fh: json.dump({**merged, "summary": summary}, fh, indent=1))
    sizes = data["sizes"]
    lines = [
        f"# Language-model benchmark over student seeds ({name})", "",
        "Commands: " + "; ".join(f"`{run['command']}` ({run['wall_seconds'] / 60:.1f} min, "
                                 f"torch threads: {run['machine']['torch_threads']})" for run in runs) + "  ",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}, torch "
        f"{first['versions']['torch']}, pyro_dlf {first['versions']['pyro_dlf']}; "
        f"wall time {merged['wall_seconds'] / 60:.1f} min (all runs; the teachers' logits cached).  ",
        f"Data: Rotten Tomatoes reviews: {sizes['train']} to train the teachers, {sizes['design']} design texts, "
        f"{sizes['test']} test reviews; OOD: {sizes['ood']} plot synopses. Teachers: {config['teachers']} × all-MiniLM-L6-v2 "
        f"(seed {config['seed']}, the same for every run). Students: the first {config['student_layers']} layers, "
        f"{config['student_epochs']} passes over the design texts.", "",
        f"Student seeds {', '.join(str(s) for s in merged['seeds'])}: mean ± standard error over the seeds; each run's own "
        "report has its per-seed figures.", "",
        "## Targets", "", *_targets(summary, len(runs)), "",
        "## Results", "",
        "| method | " + " | ".join(label for _, label, _ in _COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|",
    ]
    for method, values in summary["methods"].items():
        lines.append(f"| {method} | " + " | ".join(_cell(values[key], digits) for key, _, digits in _COLUMNS) + " |")
    lines += ["", "## Against the DLF", "",
              f"Method minus the DLF on the same {sizes['test']:,} test reviews. NLL: per-review differences averaged over "
              "the seeds, SE combining the reviews' sampling error and the between-seed variance; ECE: per-seed "
              "differences, SE over seeds. |z| < 2 is not resolved.", "",
              "| method | NLL − DLF's | SE | z | ECE − DLF's | SE |", "|---|---|---|---|---|---|"]
    for method, p in summary["against_dlf"].items():
        (nll, nll_se), (ece, ece_se) = p["nll"], p["ece"]
        z = nll / nll_se if nll_se else float("nan")
        lines.append(f"| {method} | {nll:+.4f} | {nll_se:.4f} | {z:+.1f} | {ece:+.4f} | "
                     f"{'–' if ece_se is None else f'{ece_se:.4f}'} |")
    lines += ["", f"![against the DLF]({name}_against_dlf.png)", "", f"![OOD]({name}_ood.png)", ""]
    atomic_write(md_path, lambda fh: fh.write("\n".join(lines)))
    _plots(output_dir, name, summary, len(runs))
    return json_path, md_path


def _plots(output_dir: str, name: str, summary: dict, seeds: int) -> None:
    """The gaps to the DLF (one SE as error bars; left of zero: better than the DLF) and the OOD AUROC bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = summary["against_dlf"]
    methods = list(paired)
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.45 * len(methods) + 1.5), sharey=True)
    for ax, (key, label) in zip(axes, (("nll", "NLL"), ("ece", "ECE"))):
        means = [paired[m][key][0] for m in methods]
        errors = [paired[m][key][1] or 0.0 for m in methods]
        ax.errorbar(means, range(len(methods)), xerr=errors, fmt="o", capsize=3)
        ax.axvline(0.0, color="grey", lw=1, ls="--")
        ax.locator_params(axis="x", nbins=5)
        ax.set(xlabel=f"{label} − DLF's (± 1 SE, {seeds} seeds)")
    axes[0].set_yticks(list(range(len(methods))), methods, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Every student against the DLF on the same test reviews (> 0: worse than the DLF)", fontsize=9)
    fig.tight_layout()
    atomic_write(os.path.join(output_dir, f"{name}_against_dlf.png"),
                 lambda fh: fig.savefig(fh, format="png", dpi=120), binary=True)
    plt.close(fig)

    table = summary["methods"]
    ood_auroc_plot(os.path.join(output_dir, f"{name}_ood.png"), list(table),
                   {key: [table[m][key] for m in table] for key in ("auroc_entropy", "auroc_mi")},
                   f"AUROC (mean ± SE, {seeds} seeds)")
