r"""The ``pyro-dlf demo`` job: distill a 10-MLP deep ensemble on the diabetes data.

Protocol: scikit-learn's diabetes data (442 × 10) is split at random into
train (60 %), design (20 %, held out from the teachers) and test (20 %). A deep
ensemble of MLPs is trained on the train part, each member with its own
held-out noise variance. The teachers need no labels, so the design points
are every input outside the test part (train and design) plus
``design_copies`` Gaussian perturbations of each
(:func:`pyro_dlf.design.gaussian_perturbation`, Scott's bandwidth): more design
points, and points between and slightly beyond the data, let the student
follow the ensemble's mean instead of guessing it from 88 points. The
student's body for the mean is chosen by a held-out score of the teachers'
values (``student_hidden="auto"``), its loadings come from a 1 × 50 body of
their own (``loading_hidden``, the UCI benchmark's ``DLF`` network), and they are
scaled to the teachers' spread where their values are out of sample -- the training rows each member
held out, and the design part -- (``distill(held_out=...)``,
:mod:`pyro_dlf.calibration`). All three predictives -- the teacher ensemble,
one teacher, the student -- are scored on the test part with
:mod:`pyro_dlf_bench.metrics`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

from pyro_dlf_bench import metrics
from pyro_dlf._progress import progress_disabled
from pyro_dlf.api import distill
from pyro_dlf_bench.baselines import DeepEnsembleRegressor
from pyro_dlf_bench.datasets import train_design_test_split
from pyro_dlf.design import gaussian_perturbation

__all__ = ["DemoConfig", "run_demo", "format_table"]


@dataclass
class DemoConfig:
    """Settings of the demo (the defaults are the documented run)."""

    num_teachers: int = 10
    teacher_hidden: tuple = (50, 50)
    teacher_epochs: int = 300
    num_factors: Union[int, str] = 5  # or "auto"
    student_hidden: object = "auto"
    loading_hidden: Optional[tuple] = (50,)
    design_copies: int = 4
    num_iterations: int = 150
    mmd_steps: int = 500
    num_samples: int = 1000
    seed: int = 0
    output_dir: str = "dlf_demo"
    #: progress bars (also hidden by ``TQDM_DISABLE``) and a line on standard error before each long stage
    progress: bool = True

    @classmethod
    def smoke(cls, **overrides) -> "DemoConfig":
        """A seconds-long configuration that exercises every step (for tests)."""
        settings = dict(num_teachers=4, teacher_hidden=(16,), teacher_epochs=30, num_factors=2,
                        student_hidden=(16,), loading_hidden=(8,), design_copies=1, num_iterations=5, mmd_steps=20, num_samples=100)
        settings.update(overrides)
        return cls(**settings)


def _score(name: str, means: torch.Tensor, variances: torch.Tensor, y: torch.Tensor, point: torch.Tensor,
           ratio: float, params: int, seconds: float) -> dict:
    return {
        "method": name,
        "rmse": float(metrics.rmse(point, y)),
        "nll": float(metrics.mixture_nll(means, variances, y)),
        "crps": float(metrics.mixture_crps(means, variances, y)),
        "coverage95": float(metrics.interval_coverage(means, variances, y, level=0.95)),
        "variance_ratio": ratio,
        "parameters": params,
        "predict_seconds": seconds,
    }


#: Each teacher holds out this share of the training rows (its noise variance is its error there).
_TEACHER_VALIDATION = 0.2


def run_demo(config: Optional[DemoConfig] = None) -> dict:
    """Run the demo; returns the results (also written to ``output_dir``).

    :returns: ``{"rows": [...], "config": ..., "machine": ..., "png": path, ...}``.
    """
    from sklearn.datasets import load_diabetes

    config = config or DemoConfig()
    bars = config.progress and not progress_disabled()

    def say(text: str) -> None:
        if config.progress:
            print(text, file=sys.stderr, flush=True)

    torch.manual_seed(config.seed)
    data = load_diabetes()
    x = torch.as_tensor(data.data, dtype=torch.float32)
    y = torch.as_tensor(data.target, dtype=torch.float32)
    parts = train_design_test_split(x, y, (0.6, 0.2, 0.2), seed=config.seed)
    (x_train, y_train), (x_design, _), (x_test, y_test) = parts["train"], parts["design"], parts["test"]

    say(f"Training {config.num_teachers} teachers on {len(x_train)} diabetes rows ({config.teacher_epochs} epochs each) ...")
    start = time.perf_counter()
    ensemble = DeepEnsembleRegressor(x.shape[1], num_members=config.num_teachers, hidden=config.teacher_hidden)
    ensemble.fit(x_train, y_train, epochs=config.teacher_epochs, weight_decay=1e-4, seed=config.seed,
                 progress=bars, validation_fraction=_TEACHER_VALIDATION)
    teacher_seconds = time.perf_counter() - start

    start = time.perf_counter()
    unlabeled = torch.cat([x_train, x_design])
    if config.design_copies:
        g = torch.Generator().manual_seed(config.seed)
        unlabeled = torch.cat([unlabeled, gaussian_perturbation(unlabeled, config.design_copies, generator=g)])
    teacher_design = ensemble.member_predictions(unlabeled)
    # Where each teacher's value is out of sample: the training rows it held out, and the design
    # part (no teacher trained on it); the perturbed copies are left unmarked.
    held_out = torch.zeros(teacher_design.shape, dtype=torch.bool)
    held_out[:, :len(x_train)] = ensemble.held_out_mask(len(x_train), _TEACHER_VALIDATION, config.seed)
    held_out[:, len(x_train):len(x_train) + len(x_design)] = True
    say(f"Distilling at {unlabeled.shape[0]} design points: "
        + ("first the body is chosen by held-out scores of the teachers' values (one fit per candidate), then "
           if config.student_hidden == "auto" else "")
        + f"the student ({config.mmd_steps} MMD steps, {config.num_iterations} EM iterations) ...")
    student = distill(
        unlabeled, teacher_design, num_factors=config.num_factors,
        teacher_noise_variances=ensemble.noise_variances, hidden=config.student_hidden,
        loading_hidden=config.loading_hidden, held_out=held_out,
        num_iterations=config.num_iterations, mmd_steps=config.mmd_steps, seed=config.seed, progress=bars,
    )
    student_seconds = time.perf_counter() - start

    say(f"Scoring the three predictives on {len(x_test)} test inputs and writing {config.output_dir} ...")
    # Test-set predictives, each an equal-weight Gaussian mixture.
    teacher_test = ensemble.member_predictions(x_test)
    ens_means, ens_vars = ensemble.predictive(x_test)
    prediction = student.predict(x_test, config.num_samples)
    dlf_means, dlf_vars = student.predictive_mixture(x_test)
    member_params = metrics.count_parameters(ensemble.members[0])
    rows = [
        _score("teacher ensemble", ens_means, ens_vars, y_test, teacher_test.mean(0), 1.0,
               metrics.count_parameters(ensemble.members), metrics.time_call(ensemble.predictive, x_test)),
        _score("one teacher", ens_means[:1], ens_vars[:1], y_test, teacher_test[0], 0.0, member_params,
               metrics.time_call(ensemble.members[0], x_test)),
        _score("DLF student", dlf_means, dlf_vars, y_test, prediction.mean,
               float(metrics.variance_ratio(prediction.epistemic_variance, teacher_test)),
               metrics.count_parameters(student.dlf), metrics.time_call(student.predict, x_test, config.num_samples)),
    ]
    os.makedirs(config.output_dir, exist_ok=True)
    png = os.path.join(config.output_dir, "predictive_intervals.png")
    _plot(png, y_test, teacher_test, ens_means, ens_vars, dlf_means, dlf_vars)
    result = {
        "rows": rows,
        "config": asdict(config),
        "teacher_fit_seconds": teacher_seconds,
        "distill_seconds": student_seconds,
        "design_points": int(unlabeled.shape[0]),
        "num_factors": student.dlf.num_factors,
        "student_hidden": list(student.dlf.hidden),
        "loading_hidden": None if student.dlf.loading_hidden is None else list(student.dlf.loading_hidden),
        "spread_calibration": student.spread_calibration.as_dict(),
        "body_selection": None if student.body_selection is None else student.body_selection.as_dict(),
        # Fidelity to the teachers at test inputs: how far the student's mean is from the
        # ensemble mean, against the teachers' own spread there.
        "fidelity": {
            "rms_mean_difference": float((prediction.mean - teacher_test.mean(0)).pow(2).mean().sqrt()),
            "teacher_spread_sd": float(teacher_test.std(0).pow(2).mean().sqrt()),
        },
        "nugget_variance": float(student.dlf.noise_variance.detach()),
        "noise_prior": {"concentration": student.noise_concentration, "rate": student.noise_rate},
        "em_history": student.history,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "png": png,
    }
    with open(os.path.join(config.output_dir, "results.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    return result


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the demo's rows."""
    header = f"{'method':<18}{'RMSE':>8}{'NLL':>8}{'CRPS':>8}{'cov95':>8}{'var.ratio':>10}{'params':>9}{'predict ms':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['method']:<18}{r['rmse']:>8.2f}{r['nll']:>8.3f}{r['crps']:>8.2f}{r['coverage95']:>8.3f}"
            f"{r['variance_ratio']:>10.3f}{r['parameters']:>9d}{1e3 * r['predict_seconds']:>12.2f}"
        )
    return "\n".join(lines)


def _plot(path, y, teacher_values, ens_means, ens_vars, dlf_means, dlf_vars) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = teacher_values.mean(0).argsort()
    idx = torch.arange(len(order))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (title, means, variances) in zip(axes, [("teacher ensemble", ens_means, ens_vars), ("DLF student", dlf_means, dlf_vars)]):
        lo = metrics.mixture_quantile(means, variances, 0.025)[order]
        hi = metrics.mixture_quantile(means, variances, 0.975)[order]
        ax.fill_between(idx, lo, hi, alpha=0.3, label="95 % predictive interval")
        ax.plot(idx, means.mean(0)[order], lw=1.5, label="predictive mean")
        if title == "DLF student":  # how closely the student follows its ensemble
            ax.plot(idx, ens_means.mean(0)[order], lw=1.0, ls="--", color="tab:orange", label="ensemble mean")
            ax.legend(loc="upper left")
        ax.scatter(idx, y[order], s=8, color="k", label="observed")
        ax.set_title(title)
        ax.set_xlabel("test inputs, sorted by the ensemble mean")
    axes[0].set_ylabel("disease progression")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
