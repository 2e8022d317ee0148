r"""The distribution-shift ladder of the image benchmark (the protocol of Ovadia et al., 2019).

A fixed, seeded subset of the test images is shifted step by step, and every
method (the teachers and every student) is scored at every step:

* **rotation** by :math:`θ \in \{0°, 15°, …, 180°\}` about the image centre
  (bilinear, :func:`torch.nn.functional.grid_sample`, zero fill);
* **additive Gaussian noise** :math:`\mathrm{clip}(x + σ ε, 0, 1)`,
  :math:`ε \sim N(0, I)`, at the levels :math:`σ` of :data:`NOISE_STDS`; one
  draw of :math:`ε` serves every level (common random numbers: the curves
  differ by the level, not by the draw).

Per level: accuracy, NLL and ECE (15 bins) of the predictive
(:mod:`pyro_dlf_bench.metrics`), and the epistemic AUROC: the area under the ROC
curve of a score that should be higher on the shifted images than on the same
images unshifted. The score is the method's mutual information where it has
one (members or draws whose predictions differ at some input of the ladder), its total entropy otherwise
(a single softmax network); each row names its score. At :math:`θ = 0°` the
images are the unshifted ones and the AUROC is 1/2.

Neither shift is among the design augmentations (:mod:`pyro_dlf.design.images`),
so no student has seen them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_dlf_bench import metrics
from pyro_dlf.student import ClassificationPrediction

__all__ = ["ROTATION_DEGREES", "NOISE_STDS", "LADDER_METRICS", "rotate_images", "add_gaussian_noise", "ShiftLadder",
           "check_ladder_levels", "merge_ladder", "ladder_targets", "ladder_tables", "plot_ladder"]

#: Rotation levels in degrees: 0°, 15°, …, 180° (13 levels).
ROTATION_DEGREES = tuple(float(d) for d in range(0, 181, 15))
#: Standard deviations of the additive Gaussian noise (images in [0, 1]).
NOISE_STDS = (0.1, 0.2, 0.4, 0.6, 0.8)
#: The metrics of every ladder row: (key, label) in the order of the plots' panels.
LADDER_METRICS = (("nll", "NLL"), ("ece", "ECE"), ("accuracy", "accuracy"), ("auroc", "epistemic AUROC"))
_FAMILY_LABELS = {"rotation": "rotation (degrees)", "noise": "Gaussian noise std"}
_TEACHERS = "teacher ensemble"


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    r"""``x`` ``(N, C, H, W)`` rotated by ``degrees`` about the image centre, zero fill.

    Counter-clockwise as displayed (row 0 at the top): the output at pixel
    offset :math:`p` from the centre is the input at :math:`R(-θ) p`, in pixel
    units on both axes (so non-square images rotate without shearing).
    Multiples of 90° on square images move pixel centres onto pixel centres,
    which makes them exact (:func:`torch.rot90`); 0° returns a copy.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"x must be a floating tensor of images (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(degrees, bool) or not isinstance(degrees, Real) or not math.isfinite(degrees):
        raise ValueError(f"degrees must be a finite number, got {degrees!r}")
    if float(degrees) % 360 == 0:
        return x.clone()
    h, w = x.shape[-2:]
    angle = math.radians(float(degrees))
    cos, sin = math.cos(angle), math.sin(angle)
    # Normalized coordinates run over w/2 pixels horizontally and h/2 vertically: θ = S⁻¹ R S.
    # Image rows grow downwards, so the matrix below turns the picture counter-clockwise on screen.
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=torch.float64)
    grid = F.affine_grid(theta.to(x).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def add_gaussian_noise(x: Tensor, std: float, noise: Tensor) -> Tensor:
    """``clip(x + std · noise, 0, 1)``: the noise level ``std`` applied to standard normal ``noise`` of ``x``'s shape."""
    if isinstance(std, bool) or not isinstance(std, Real) or not 0 <= float(std) < math.inf:
        raise ValueError(f"std must be a non-negative number, got {std!r}")
    if not isinstance(noise, Tensor) or noise.shape != x.shape:
        raise ValueError(f"noise must be a tensor of the images' shape {tuple(x.shape)}")
    return (x + float(std) * noise.to(x)).clamp(0, 1)


def check_ladder_levels(rotation_degrees: Sequence[float], noise_stds: Sequence[float], test_size: int) -> None:
    """One-line errors for the ladder's settings (named by their configuration fields)."""
    if isinstance(rotation_degrees, (str, bytes)) or not isinstance(rotation_degrees, Sequence) or not rotation_degrees or any(
            isinstance(d, bool) or not isinstance(d, Real) or not 0 <= d <= 360 for d in rotation_degrees):
        raise ValueError(f"rotation_degrees must be a non-empty list of angles in [0, 360], got {rotation_degrees!r}; e.g. 0 15 30 … 180")
    if isinstance(noise_stds, (str, bytes)) or not isinstance(noise_stds, Sequence) or not noise_stds or any(
            isinstance(s, bool) or not isinstance(s, Real) or not 0 < s < math.inf for s in noise_stds):
        raise ValueError(f"noise_stds must be a non-empty list of positive noise levels, got {noise_stds!r}; e.g. 0.1 0.2 0.4 0.6 0.8")
    if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 2:
        raise ValueError(f"shift_test_size must be an int >= 2 (test images of the shift ladder), got {test_size!r}")


def _probs(prediction: ClassificationPrediction) -> Tensor:
    probs = prediction.probs.double()
    return probs / probs.sum(-1, keepdim=True)


@dataclass
class ShiftLadder:
    """The shifted test sets of one run, shared by every method (build with :meth:`build`).

    :ivar x: the unshifted images of the subset, ``(m, C, H, W)``.
    :ivar y: their labels, ``(m,)``.
    :ivar sets: ``(family, level, images)`` for every level, rotation first.
    """

    x: Tensor
    y: Tensor
    sets: list = field(default_factory=list)

    @classmethod
    def build(cls, x_test: Tensor, y_test: Tensor, size: int, rotation_degrees: Sequence[float] = ROTATION_DEGREES,
              noise_stds: Sequence[float] = NOISE_STDS, seed: int = 0) -> "ShiftLadder":
        """A seeded subset of ``min(size, len(x_test))`` test images and its rotated and noisy versions."""
        check_ladder_levels(rotation_degrees, noise_stds, size)
        g = torch.Generator().manual_seed(40_000 + seed)
        keep = torch.randperm(x_test.shape[0], generator=g)[:min(size, x_test.shape[0])]
        x, y = x_test[keep], y_test[keep]
        ladder = cls(x, y)
        for degrees in rotation_degrees:
            ladder.sets.append(("rotation", float(degrees), x if float(degrees) % 360 == 0 else rotate_images(x, degrees)))
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        for std in noise_stds:
            ladder.sets.append(("noise", float(std), add_gaussian_noise(x, std, noise)))
        return ladder

    def evaluate(self, method: str, predict: Callable[[Tensor], ClassificationPrediction]) -> list[dict]:
        """One row per level for the method whose predictive is ``predict``."""
        clean = predict(self.x)
        predictions = [(family, level, clean if images is self.x else predict(images)) for family, level, images in self.sets]
        # A method has an epistemic part where its members (or draws) disagree somewhere; a single softmax never does.
        # Rounding leaves a single network's mutual information at ~1e-16 nats, never above 1e-9.
        use_mi = any(bool((p.mutual_information > 1e-9).any()) for p in [clean] + [p for _, _, p in predictions])
        score_name = "mutual information" if use_mi else "total entropy"

        def score(p: ClassificationPrediction) -> Tensor:
            return (p.mutual_information if use_mi else p.total_entropy).double()

        rows = []
        for family, level, shifted in predictions:
            probs = _probs(shifted)
            rows.append({
                "method": method, "family": family, "level": level,
                "accuracy": float(metrics.accuracy(probs, self.y)),
                "nll": float(metrics.categorical_nll(probs.clamp_min(1e-300), self.y)),
                "ece": float(metrics.expected_calibration_error(probs, self.y, num_bins=15)),
                "auroc": metrics.auroc(score(clean), score(shifted)), "auroc_score": score_name,
                "mi": float(shifted.mutual_information.double().mean()), "entropy": float(shifted.total_entropy.double().mean()),
            })
        return rows


def merge_ladder(runs: list[list[dict]]) -> list[dict]:
    """Ladder rows of several runs (data seeds) as means over the runs with standard errors under ``"se"``.

    Rows are matched by (method, family, level), in the first run's order; every run must hold the same rows.
    """
    keys = [(r["method"], r["family"], r["level"]) for r in runs[0]]
    indexed = [{(r["method"], r["family"], r["level"]): r for r in run} for run in runs]
    if any(set(index) != set(keys) for index in indexed):
        raise ValueError("results: the runs' shift ladders differ (methods or levels); merge runs of the same settings")
    merged = []
    for key in keys:
        per_run = [index[key] for index in indexed]
        row = {"method": key[0], "family": key[1], "level": key[2], "auroc_score": per_run[0]["auroc_score"], "se": {}}
        for metric in ("accuracy", "nll", "ece", "auroc", "mi", "entropy"):
            row[metric], error = metrics.mean_and_standard_error([r[metric] for r in per_run])
            if error is not None:
                row["se"][metric] = error
        merged.append(row)
    return merged


def _nll_by_level(rows: list[dict]) -> dict:
    return {(r["method"], r["family"], r["level"]): r["nll"] for r in rows}


def ladder_targets(rows: list[dict], tolerance: float = 0.05, share: float = 0.75) -> list[str]:
    """The ladder's target lines: the DLF's NLL against the teachers' and against every other student's.

    "Within 5 %" is one-sided, as for the other benchmarks' ensemble targets: the DLF's NLL is at most 1.05 times the
    teachers' (a student below its teachers meets it). "Other students" are the default rows that are neither the
    teachers nor a DLF variant: not named "DLF…", and not the design ablation's rivals on the DLF's design points.
    """
    nll = _nll_by_level(rows)
    levels = [(r["family"], r["level"]) for r in rows if r["method"] == _TEACHERS]
    if not levels or ("DLF", *levels[0]) not in nll:
        return ["- (the shift ladder has no DLF or no teacher rows)"]
    rivals = list(dict.fromkeys(r["method"] for r in rows if r["method"] != _TEACHERS and not r["method"].startswith("DLF")
                                and not r["method"].endswith(", augmented design")))
    close = {lv: nll[("DLF", *lv)] <= (1 + tolerance) * nll[(_TEACHERS, *lv)] for lv in levels}
    best = {lv: all(nll[("DLF", *lv)] <= nll[(m, *lv)] for m in rivals if (m, *lv) in nll) for lv in levels}

    def counts(ok: dict) -> str:
        per_family = {fam: [ok[lv] for lv in levels if lv[0] == fam] for fam in dict.fromkeys(f for f, _ in levels)}
        return ", ".join(f"{fam} {sum(v)}/{len(v)}" for fam, v in per_family.items())

    n_close, n_best, n = sum(close.values()), sum(best.values()), len(levels)
    met_close, met_best = n_close == n, n_best >= share * n
    return [
        f"- DLF NLL within {100 * tolerance:g} % of the teachers' at every level (DLF ≤ {1 + tolerance:g} × teachers): "
        f"{'met' if met_close else '**missed**'} ({n_close} of {n} levels; {counts(close)})",
        f"- DLF NLL ≤ every other student's at ≥ {100 * share:g} % of levels ({len(rivals)} students not named DLF): "
        f"{'met' if met_best else '**missed**'} ({n_best} of {n} levels = {100 * n_best / n:.0f} %; {counts(best)})",
    ]


def _level_label(family: str, level: float) -> str:
    return f"{level:g}°" if family == "rotation" else f"σ = {level:g}"


def ladder_tables(rows: list[dict], metric: str = "nll") -> list[str]:
    """Markdown lines: one table per family, a row per method and a column per level (``metric``, ± SE when merged)."""
    lines: list[str] = []
    for family in dict.fromkeys(r["family"] for r in rows):
        levels = list(dict.fromkeys(r["level"] for r in rows if r["family"] == family))
        lines += [f"{_FAMILY_LABELS.get(family, family)}, {metric.upper() if metric == 'nll' else metric}:", "",
                  "| method | " + " | ".join(_level_label(family, lv) for lv in levels) + " |", "|" + "---|" * (len(levels) + 1)]
        by = {(r["method"], r["level"]): r for r in rows if r["family"] == family}
        for method in dict.fromkeys(r["method"] for r in rows if r["family"] == family):
            cells = []
            for level in levels:
                row = by.get((method, level))
                se = None if row is None else row.get("se", {}).get(metric)
                cells.append("–" if row is None else f"{row[metric]:.3f}" + ("" if se is None else f" ± {se:.3f}"))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot_ladder(rows: list[dict], output_dir: str, name: str) -> list[str]:
    """One PNG per family, ``{name}_ladder_{family}.png``: NLL, ECE, accuracy and AUROC against the level, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.get_cmap("tab20")
    for family in dict.fromkeys(r["family"] for r in rows):
        fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
        for index, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method and r["family"] == family), key=lambda r: r["level"])
            if not mine:
                continue
            # The teachers and the DLF drawn bold; other DLF variants dashed, the other students dotted.
            main = method in ("DLF", _TEACHERS)
            colour = {"DLF": "tab:red", _TEACHERS: "k"}.get(method, colours(index % 20))
            style = dict(lw=2.4, zorder=3, ls="-") if main else dict(lw=1.0, ls="--" if method.startswith("DLF") else ":")
            for ax, (key, label) in zip(axes.flat, LADDER_METRICS):
                ax.errorbar([r["level"] for r in mine], [r[key] for r in mine], yerr=[r.get("se", {}).get(key, 0.0) for r in mine],
                            color=colour, marker="o", ms=3, capsize=2, label=method, **style)
                ax.set_xlabel(_FAMILY_LABELS.get(family, family)), ax.set_ylabel(label)
        axes.flat[-1].axhline(0.5, color="grey", lw=0.8, ls="--")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.82, 0.5), fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.81, 1))
        path = os.path.join(output_dir, f"{name}_ladder_{family}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
