r"""The UCI regression benchmark (the paper's Table 1 protocol), run by ``pyro-dlf bench uci``.

Protocol, per data set and split seed (:meth:`pyro_dlf.data.UCIData.split`):
random 90/10 train/test split, inputs and target standardized with training
statistics, metrics reported in the target's original units.

* **Teachers**: a deep ensemble of ``teachers`` MLPs (2 × 100) trained on squared
  error from different initializations; member ``i``'s noise variance
  ``σ²_{ε,i}`` is its mean squared error on its own random 10 % of the training
  data, held out from its fit. Fitted teachers are cached per split.
* **Design points** (the same for every student of a run): the training
  inputs (``design="train"``, the paper's UCI choice; all of them unless
  ``max_design`` caps them at a random subset), optionally with one
  unlabeled copy of each moved off the data: ``"jitter"``
  (:func:`pyro_dlf.design.neighbour_jitter`), ``"gaussian"``
  (:func:`pyro_dlf.design.gaussian_perturbation`, Scott's bandwidth),
  ``"mixup"`` (:func:`pyro_dlf.design.mixup`) or ``"outward"``
  (:func:`pyro_dlf.design.outward_probes`: beyond the data); the teachers are
  evaluated there.
  The ``augment`` ablation adds DLF variants on the Gaussian, mixup and outward designs,
  each with the DLF row's body rule (``dlf_hidden``; with ``"auto"`` the body
  is chosen on that design's own points), so that the design-selection row
  chooses body and design together: the body per design by the
  ensemble-predictive log score, the design by the teachers' out-of-sample
  values (in range, and in range and beyond the data: :func:`design_selection`).
  The ``oof`` ablation adds "DLF out-of-fold values": design points the
  training inputs, each teacher observed only on the 10 % of them it held out
  from its own fit (:meth:`~pyro_dlf_bench.baselines.DeepEnsembleRegressor.held_out_mask`),
  fitted by the masked exact EM (mathematics §4): every value it distils is out of
  sample, as the teachers' values at test inputs are.
  The ``design`` ablation adds two DLF variants:
  a random 20 % of the training data that the teachers do not see (the teachers
  are then trained on the other 80 %; "DLF held-out design"), and the training
  inputs together with one neighbour-distance jitter of each
  (:func:`pyro_dlf.design.neighbour_jitter`; "DLF jittered design").
* **Students**, all distilled from the same teacher values and noise variances:
  small-Ens, Hydra, BatchEnsemble (``student_hidden``, 1 × 50, one member per
  teacher, each member predicting ``N(g_i(x), σ²_{ε,i})``; full-batch on up to 2,000
  design points, 256-point minibatches above, see :func:`_student_schedule`) and the DLF
  (``q = 10``, MMD initialization then exact EM; its noise is the inverse gamma
  fitted to the same ``σ²_{ε,i}``). So every method uses exactly the teachers'
  noise information. The row ``DLF`` has the body ``dlf_hidden``: by default
  ``"auto"``, chosen per split from :data:`pyro_dlf.selection.BODY_FAMILY` by
  the ensemble-predictive log score on a validation part of the
  design points (never the test data); when that differs from
  ``student_hidden``, the paper-protocol DLF runs beside it as
  ``DLF 1×50`` (the widths of ``student_hidden``).
  The ``nugget`` ablation scores the same DLF fit predicting new teachers
  (``include_nugget=True``).
  The row ``DLF, out-of-sample spread`` is the same fit as ``DLF`` with its
  loadings rescaled once so that its epistemic variance at the training inputs
  equals the teachers' pooled spread among the values each teacher produced on
  the 10 % of rows it held out from its own fit
  (:func:`pyro_dlf.calibration.calibrate_spread`): the teachers agree at the
  inputs they all trained on far more than at new inputs, and the held-out
  values show by how much. No refit, no labels, no test data. Where the nugget's
  growth that the predictive keeps already exceeds that spread no scale matches it:
  the split then has no such row, its ``DLF`` row says why and the report names it.
  The rows ``DLF, noise given factors`` and ``DLF, noise law by held-out check``
  are the same fit as ``DLF`` with the noise law that follows the factors,
  ``σ² | z ~ IG(a, b u(z)^β)`` (:func:`pyro_dlf.noise.fit_noise_given_factors`),
  adopted per split by one of two label-free rules: the likelihood-ratio test
  of ``β = 0`` on the teachers' noise variances at 1 % (``distill``'s
  ``noise_given_factors="auto"``), or a predictive check -- the law raises the
  expected log density of each teacher's noisy outputs on the rows it held
  out (:func:`pyro_dlf.selection.predictive_log_score`) by more than one
  standard error over teachers. Otherwise the i.i.d. law, as ``DLF``.
  The ``length`` ablation adds ``DLF, training length chosen``: body and
  training length chosen together (``distill(hidden=dlf_hidden,
  training_length="auto")``) on the same validation part of the design points
  -- early stopping on held-out teacher values, no labels.
  The row ``DLF``'s loadings have a body of their own, ``dlf_loading_hidden``
  (default ``(50,)``, the paper-protocol widths of ``student_hidden``; ``distill(hidden=dlf_hidden,
  loading_hidden=dlf_loading_hidden)``), and the mean head reads both bodies.
  Why by default: the validation score that chooses the body (the
  ensemble-predictive log score on held-out design points, no labels)
  preferred a loading body on most standard splits of the UCI sets, and
  separate features let ‖Φ(x)‖² grow beyond the data as the teachers' spread
  does rather than as the mean's wider body does
  (``benchmarks/results/uci_loading_body.md``). The ``loadings`` ablation adds the
  other network: ``DLF, shared body`` (one body for the mean and the loadings,
  chosen by the same rule; the earlier default), or, with
  ``dlf_loading_hidden=None``, ``DLF, loading body 1×50``.

Metrics (:mod:`pyro_dlf_bench.metrics`): RMSE of the predictive mean, NLL and CRPS of
the predictive mixture, 95 % interval coverage, the variance ratio (student
epistemic variance over the teachers' sample variance at the test inputs),
parameter count and the median time to predict 1,000 inputs.

**Extrapolation** (``extrapolation=True``, :meth:`pyro_dlf.data.UCIData.extrapolation_split`):
the 10 % of rows with the largest projection on the first principal component
of the standardized inputs are out-of-range test points; a random 10 % of the
rest are in-range test points; the teachers train on the others. Every metric
is reported on each part (``*_in``, ``*_out``), and ``auroc_epistemic`` is the
AUROC of each method's epistemic variance for telling out-of-range from
in-range test inputs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from pyro_dlf import __version__
from pyro_dlf_bench import metrics
from pyro_dlf._files import atomic_write
from pyro_dlf._progress import progress_bar
from pyro_dlf.api import distill_with
from pyro_dlf.fitting import TeacherInputs
from pyro_dlf.calibration import InfeasibleCalibration, calibrate_spread
from pyro_dlf_bench.baselines import BatchEnsembleStudent, DeepEnsembleRegressor, HydraStudent, SmallEnsembleStudent
from pyro_dlf_bench.datasets import UCIData, load_uci
from pyro_dlf.design import gaussian_perturbation, mixup, neighbour_jitter, outward_probes
from pyro_dlf.design.sets import DESIGNS as DLF_DESIGNS
from pyro_dlf.noise import FACTOR_NOISE_TEST_LEVEL, fit_noise_given_factors
from pyro_dlf.selection import predictive_log_score

__all__ = ["UCIBenchConfig", "run_uci_benchmark", "write_report", "merge_results", "target_summary", "variance_decomposition",
           "design_selection", "design_check", "ABLATIONS", "DESIGN_CANDIDATES", "DESIGN_SELECTED",
           "DESIGN_SELECTED_BEYOND", "CALIBRATED", "FACTOR_NOISE", "NOISE_CHECKED", "LENGTH_CHOSEN", "LOADING_BODY", "SHARED_BODY", "noise_law_summary",
           "targets_on_own_splits"]


def _distill(x, teachers, *, teacher_noise_variances=None, observed=None, held_out=None, **options):
    """:func:`pyro_dlf.distill`, with the ablation switches of the library's options (``estep``, ``init``) reachable."""
    return distill_with(x, teachers, options, TeacherInputs(teacher_noise_variances, observed, held_out))


#: Ablation groups: each adds DLF variants beside the default DLF.
ABLATIONS = ("estep", "init", "q", "design", "nugget", "augment", "oof", "length", "loadings", "same-design")

#: The ``same-design`` ablation's rows, on the splits where the row DLF's design reaches off the rows: the rivals on
#: the DLF's design points (suffix), the DLF on the data rows alone (its body and distance feature kept), and, where
#: the DLF has the distance feature, the DLF on its design without it.
SAME_DESIGN = ", DLF's design"
GIVEN_DESIGN = "DLF, data rows only"
NO_DISTANCE = "DLF, no distance feature"

#: Each teacher holds out this share of the training rows from its fit (its noise variance is its MSE there).
_TEACHER_VALIDATION = 0.1

#: Design sets every student of a run is distilled on (see the module docstring).
DESIGNS = ("train", "jitter", "gaussian", "mixup", "outward")


@dataclass
class UCIBenchConfig:
    """Settings of one benchmark run (the defaults are the documented protocol)."""

    data_dir: Optional[str] = None
    data_path: Optional[str] = None
    datasets: tuple = ()
    splits: int = 10
    first_split: int = 0
    teachers: int = 50
    teacher_hidden: tuple = (100, 100)
    student_hidden: tuple = (50,)
    num_factors: int = 10
    dlf_iterations: int = 150
    mmd_steps: int = 500
    student_epochs: int = 1000
    ablations: tuple = ()
    output_dir: str = "benchmarks/results"
    cache_dir: Optional[str] = "benchmarks/cache"
    name: str = "uci"
    seed: int = 0
    progress: bool = True
    teacher_epochs: Optional[int] = None
    max_design: Optional[int] = None
    baselines: bool = True
    dlf_hidden: object = "auto"
    dlf_loading_hidden: Optional[tuple] = (50,)
    design: str = "train"
    dlf_design: str = "auto"
    extrapolation: bool = False
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


def _teacher_schedule(n_train: int, override: Optional[int]) -> tuple[int, Optional[int]]:
    """Epochs and batch size for the teachers: full batch on small sets, else 256-minibatches.

    About 400 full-batch steps, or about 4,000 minibatch steps (at least 20 epochs).
    """
    if n_train <= 2000:
        return (override or 400), None
    return (override or max(20, math.ceil(4000 / math.ceil(n_train / 256)))), 256


def _student_schedule(n_design: int, epochs: int) -> tuple[int, Optional[int]]:
    """Epochs and batch size for the baseline students (small-Ens, Hydra, BE).

    Up to 2,000 design points: ``epochs`` full-batch steps (1,000 by default). Above that, as the
    teachers: 256-point minibatches for about ``4 × epochs`` steps (at least 20 epochs), so that
    a pass over 10⁴–10⁵ design points costs what the teachers' own fit costs rather than
    ``epochs`` passes over every point.
    """
    if n_design <= 2000:
        return epochs, None
    return max(20, math.ceil(4 * epochs / math.ceil(n_design / 256))), 256


def _teacher_seed(config: UCIBenchConfig, split) -> int:
    return 1000 * split.seed + config.seed


def _teachers(config: UCIBenchConfig, data: UCIData, split, x, y, tag: str) -> DeepEnsembleRegressor:
    """Train (or load from the cache) the teacher ensemble of one split."""
    path = None
    if config.cache_dir:
        key = f"{data.name}_s{split.seed}_{tag}_n{config.teachers}_{'x'.join(map(str, config.teacher_hidden))}.pt"
        path = os.path.join(config.cache_dir, key)
    ensemble = DeepEnsembleRegressor(x.shape[1], num_members=config.teachers, hidden=config.teacher_hidden)
    if path and os.path.exists(path):
        ensemble.load_state_dict(torch.load(path, weights_only=True))
        return ensemble
    epochs, batch = _teacher_schedule(x.shape[0], config.teacher_epochs)
    ensemble.fit(x, y, epochs=epochs, batch_size=batch, seed=_teacher_seed(config, split),
                 validation_fraction=_TEACHER_VALIDATION, progress=False)
    if path:
        os.makedirs(config.cache_dir, exist_ok=True)
        torch.save(ensemble.state_dict(), path)
    return ensemble


def _accuracy(means_o, vars_o, y, epistemic, teacher_test, suffix: str = "") -> dict:
    point = means_o.mean(0)
    return {
        f"rmse{suffix}": float(metrics.rmse(point, y)),
        f"nll{suffix}": float(metrics.mixture_nll(means_o, vars_o, y)),
        f"crps{suffix}": float(metrics.mixture_crps(means_o, vars_o, y)),
        f"coverage95{suffix}": float(metrics.interval_coverage(means_o, vars_o, y, level=0.95)),
        f"variance_ratio{suffix}": float(metrics.variance_ratio(epistemic, teacher_test)),
    }


def _score(split, means, variances, epistemic, teacher_test, params, predict: Callable, x1000) -> dict:
    """All metrics in the target's original units (NLL shifts by log scale, CRPS scales).

    On an extrapolation split also each metric on the in-range (``_in``) and
    out-of-range (``_out``) test points and the AUROC of the epistemic variance
    for telling them apart.
    """
    ys = split.y_standardizer
    y = split.y_test_original
    means_o, vars_o = ys.inverse(means), ys.inverse_variance(variances)
    row = _accuracy(means_o, vars_o, y, epistemic, teacher_test)
    out = split.test_out_of_range
    if out is not None:
        for suffix, mask in (("_in", ~out), ("_out", out)):
            row.update(_accuracy(means_o[:, mask], vars_o[:, mask], y[mask], epistemic[mask], teacher_test[:, mask], suffix))
        row["auroc_epistemic"] = metrics.auroc(epistemic[~out].double(), epistemic[out].double())
    row.update({"parameters": int(params), "predict_1000_seconds": metrics.time_call(predict, x1000, repeats=3)})
    return row


def _widths_name(hidden) -> str:
    """``DLF 1×50`` for one layer of 50, ``DLF 2×100`` for two of 100, else the widths joined by ``-``."""
    hidden = tuple(hidden)
    return f"DLF {len(hidden)}×{hidden[0]}" if hidden and len(set(hidden)) == 1 else "DLF " + "-".join(map(str, hidden))


def _augmented(x: torch.Tensor, design: str, generator: torch.Generator) -> torch.Tensor:
    """The design inputs ``x`` plus one unlabeled copy of each moved off the data by ``design``."""
    if design == "train":
        return x
    move = {"jitter": neighbour_jitter, "gaussian": gaussian_perturbation, "mixup": mixup, "outward": outward_probes}[design]
    return torch.cat([x, move(x, generator=generator)])


def _dlf_rule(config: UCIBenchConfig) -> dict:
    """The ``DLF`` row's network: ``distill(hidden=dlf_hidden, loading_hidden=dlf_loading_hidden)``."""
    return {"hidden": config.dlf_hidden, "loading_hidden": None if config.dlf_loading_hidden is None else tuple(config.dlf_loading_hidden)}


def _dlf_variants(config: UCIBenchConfig) -> list[tuple[str, dict]]:
    """(method name, distill overrides) for the default DLF and the requested ablations.

    The estep, init and q ablations keep the students' widths (``student_hidden``), so
    they compare with the paper-protocol DLF; the design variants (``augment``) take
    the DLF row's network (:func:`_dlf_rule`), set in :func:`_run_split`.
    """
    rule = _dlf_rule(config)
    variants = [("DLF", dict(rule, design=config.dlf_design))]
    if rule != {"hidden": tuple(config.student_hidden), "loading_hidden": None}:
        variants.append((_widths_name(config.student_hidden), {}))
    # The length and loadings rows change one thing against the DLF row, so they keep its design rule.
    if "length" in config.ablations:
        variants.append((LENGTH_CHOSEN, dict(rule, training_length="auto", design=config.dlf_design)))
    if "loadings" in config.ablations:
        # The other network: one shared body when the DLF row has a loading body, and vice versa.
        if config.dlf_loading_hidden is not None:
            variants.append((SHARED_BODY, {"hidden": config.dlf_hidden, "design": config.dlf_design}))
        else:
            variants.append((loading_body_name(config.student_hidden), {"hidden": config.dlf_hidden, "loading_hidden": tuple(config.student_hidden),
                                                                        "design": config.dlf_design}))
    if "estep" in config.ablations:
        variants.append(("DLF minibatch E-step", {"estep": "minibatch"}))
    if "init" in config.ablations:
        variants.append(("DLF random init", {"init": "random"}))
    if "q" in config.ablations:
        variants += [(f"DLF q={q}", {"num_factors": q}) for q in (2, 5, 20) if q != config.num_factors]
    return variants


def _run_split(config: UCIBenchConfig, data: UCIData, seed: int) -> list[dict]:
    split = data.extrapolation_split(seed) if config.extrapolation else data.split(seed)
    x_test = split.x_test
    x1000 = x_test.repeat(math.ceil(1000 / len(x_test)), 1)[:1000]
    rows = []

    def record(method, design, means, variances, epistemic, teacher_test, params, predict, seconds, **extra):
        row = {"dataset": data.name, "split": seed, "method": method, "design": design, "fit_seconds": seconds}
        row.update(_score(split, means, variances, epistemic, teacher_test, params, predict, x1000))
        row.update(extra)
        rows.append(row)

    def fit_baselines(x_d: torch.Tensor, f_d: torch.Tensor, noise: torch.Tensor, teacher_test: torch.Tensor, design: str,
                      suffix: str) -> None:
        """small-Ens, Hydra and BE distilled from the teachers' values ``f_d`` at ``x_d``."""
        for name, cls in (("small-Ens", SmallEnsembleStudent), ("Hydra", HydraStudent), ("BE", BatchEnsembleStudent)):
            start = time.perf_counter()
            student = cls(x_d.shape[1], config.teachers, hidden=config.student_hidden)
            epochs, batch = _student_schedule(len(x_d), config.student_epochs)
            student.fit(x_d, f_d, noise, epochs=epochs, batch_size=batch, seed=seed, progress=False)
            seconds = time.perf_counter() - start
            means, variances = student.predictive(x_test)
            record(name + suffix, design, means, variances, student.member_predictions(x_test).var(0), teacher_test,
                   metrics.count_parameters(student), student.predictive, seconds)

    def cap(x_design: torch.Tensor, salt: int) -> torch.Tensor:
        """At most ``max_design`` rows, drawn at random (the same for every student)."""
        if config.max_design is None or len(x_design) <= config.max_design:
            return x_design
        g = torch.Generator().manual_seed(salt + seed)
        return x_design[torch.randperm(len(x_design), generator=g)[: config.max_design]]

    designs = ["train"] + (["heldout"] if "design" in config.ablations else [])
    for design in designs:
        if design == "train":
            x_fit, y_fit = split.x_train, split.y_train
            x_design = _augmented(cap(split.x_train, 20_000), config.design, torch.Generator().manual_seed(50_000 + seed))
        else:
            g = torch.Generator().manual_seed(10_000 + seed)
            perm = torch.randperm(len(split.x_train), generator=g)
            cut = int(round(0.2 * len(perm)))
            x_design, x_fit, y_fit = cap(split.x_train[perm[:cut]], 30_000), split.x_train[perm[cut:]], split.y_train[perm[cut:]]
        start = time.perf_counter()
        teachers = _teachers(config, data, split, x_fit, y_fit, design + ("_extrapolation" if config.extrapolation else ""))
        teacher_seconds = time.perf_counter() - start
        f_design = teachers.member_predictions(x_design)
        noise = teachers.noise_variances
        teacher_test = teachers.member_predictions(x_test)
        if design == "train":
            means, variances = teachers.predictive(x_test)
            record("teacher ensemble", design, means, variances, teacher_test.var(0), teacher_test,
                   metrics.count_parameters(teachers.members), teachers.predictive, teacher_seconds)
            if config.baselines:
                fit_baselines(x_design, f_design, noise, teacher_test, design, "")
        # The label-free check of every DLF fit: the teachers' values on the rows each did not train on.
        oof_mask = teachers.held_out_mask(len(x_fit), _TEACHER_VALIDATION, _teacher_seed(config, split))
        x_oof = x_fit
        f_oof = f_design if x_design is x_fit else teachers.member_predictions(x_fit)  # one pass where they coincide
        # ... and beyond the data: the teachers at outward probes (a draw no fit sees).
        x_probe = outward_probes(x_fit, generator=torch.Generator().manual_seed(80_000 + seed))
        f_probe = teachers.member_predictions(x_probe)
        if design == "train":
            variants = [(name, overrides, x_design) for name, overrides in _dlf_variants(config)]
            if "design" in config.ablations:
                g = torch.Generator().manual_seed(40_000 + seed)
                x_jitter = torch.cat([x_design, neighbour_jitter(x_design, generator=g)])
                variants.append(("DLF jittered design", {}, x_jitter))
            if "oof" in config.ablations:
                variants.append(("DLF out-of-fold values", {"observed": oof_mask}, split.x_train))
            if "augment" in config.ablations:
                for label, kind, salt in (("Gaussian", "gaussian", 60_000), ("mixup", "mixup", 70_000), ("outward", "outward", 90_000)):
                    # The DLF row's body rule: body and design are chosen together (design_selection).
                    variants.append((f"DLF {label} design", _dlf_rule(config),
                                     _augmented(x_design, kind, torch.Generator().manual_seed(salt + seed))))
        else:
            variants = [("DLF held-out design", {}, x_design)]
        for name, overrides, x_dlf in variants:
            f_dlf = f_design if x_dlf is x_design else f_oof if x_dlf is x_oof else teachers.member_predictions(x_dlf)
            start = time.perf_counter()
            options = dict(num_factors=config.num_factors, teacher_noise_variances=noise, hidden=config.student_hidden,
                           num_iterations=config.dlf_iterations, mmd_steps=config.mmd_steps, seed=seed, progress=False)
            options.update(overrides)
            # A design off the rows needs the teachers themselves: they are evaluated wherever it asks.
            off_rows = options.get("design", "given") != "given"
            student = _distill(x_dlf, teachers.member_predictions if off_rows else f_dlf, **options)
            seconds = time.perf_counter() - start
            if name == "DLF" and off_rows and "same-design" in config.ablations and student.design_choice.design != "given":
                # What the design gives, apart from the model: the rivals on the DLF's design points, and the DLF
                # on the rows alone and on its design without the distance feature.
                x_same = student.design_choice.points(x_dlf)
                if config.baselines:
                    fit_baselines(x_same, teachers.member_predictions(x_same), noise, teacher_test, design, SAME_DESIGN)
                # The same network as the DLF row (its chosen body), so only the design or the feature differs.
                extra, same_body = x_same[len(x_dlf):], dict(overrides, hidden=tuple(student.dlf.hidden))
                feature = student.design_choice.distance_feature
                variants.append((GIVEN_DESIGN, dict(same_body, design="given", distance_feature=feature), x_dlf))
                if feature:
                    variants.append((NO_DISTANCE, dict(same_body, design=lambda x, generator, extra=extra: extra,
                                                       distance_feature=False), x_dlf))
            means, variances = student.predictive_mixture(x_test)
            epistemic = student.predict(x_test, 1, return_samples=False).epistemic_variance
            # Where the variance goes: the share of the teachers' spread at the design
            # points that ‖Φ‖² holds, and the teachers' spread there against test inputs.
            spread = {"teacher_spread_design": float(f_dlf.var(0).mean()),
                      "teacher_spread_test": float(teacher_test.var(0).mean()),
                      "student_variance_design": float(student.predict(x_dlf, 1, return_samples=False).epistemic_variance.mean()),
                      # The nugget at the rows: σ_f², or its mean there when it grows with the distance (§9.4).
                      "nugget_variance": float(student.dlf.nugget_variance(x_dlf).detach().mean())}
            if student.dlf.distance_anchors is not None:
                spread["nugget_growth"] = float(student.dlf.nugget_growth.detach())
            if student.body_selection is not None:
                spread["body_selection"] = student.body_selection.as_dict()
            if student.design_choice is not None and not callable(options.get("design")):
                spread["design_choice"] = student.design_choice.as_dict()
            if student.dlf.loading_hidden is not None:
                spread["loading_hidden"] = list(student.dlf.loading_hidden)
            spread["teacher_oof_nll"] = _out_of_sample_nll(student, x_oof, f_oof, oof_mask)
            spread["teacher_probe_nll"] = _out_of_sample_nll(student, x_probe, f_probe, None)
            record(name, design, means, variances, epistemic, teacher_test,
                   metrics.count_parameters(student.dlf), lambda x: student.predict(x, 1000, return_samples=False), seconds,
                   hidden=list(student.dlf.hidden), **spread)
            if name == "DLF":
                # The same fit with the noise law that follows the factors, by distill's "auto" rule
                # (adopted when the teachers' likelihood-ratio test rejects i.i.d. noise at 1 %).
                law = (student.noise_concentration, student.noise_rate, student.noise_factor_exponent, student.noise_factor_gram)
                fit = fit_noise_given_factors(student.dlf, x_dlf.to(student.dlf.loading_head.weight.dtype),
                                              f_dlf.to(student.dlf.loading_head.weight.dtype), noise)
                adopted = fit.p_value < FACTOR_NOISE_TEST_LEVEL
                # A second, predictive check: each teacher's noisy outputs on the rows it held out,
                # scored under each law's predictive (one-standard-error rule over teachers).
                check_iid = predictive_log_score(student, x_oof, f_oof, noise, oof_mask)
                student.set_noise_law(fit.concentration, fit.rate, fit.exponent, fit.gram)
                check_law = predictive_log_score(student, x_oof, f_oof, noise, oof_mask)
                gain = check_law - check_iid
                gain = gain[~torch.isnan(gain)]
                check = {"heldout_score_iid": float(check_iid.nanmean()), "heldout_score_law": float(check_law.nanmean()),
                         "heldout_gain_se": float(gain.std() / math.sqrt(gain.numel()))}
                preferred = float(gain.mean()) > check["heldout_gain_se"]
                noise_fit = dict(fit.as_dict(), adopted=adopted, heldout_adopted=preferred, **check)
                # One test-input pass per law, whichever rules adopt it; the i.i.d. one is the DLF row's.
                predictives = {False: (means, variances)}
                for method, use in ((FACTOR_NOISE, adopted), (NOISE_CHECKED, preferred)):
                    student.set_noise_law(*((fit.concentration, fit.rate, fit.exponent, fit.gram) if use else law))
                    if use not in predictives:
                        predictives[use] = student.predictive_mixture(x_test)
                    means, variances = predictives[use]
                    record(method, design, means, variances, epistemic, teacher_test,
                           metrics.count_parameters(student.dlf), lambda x: student.predict(x, 1000, return_samples=False), seconds,
                           hidden=list(student.dlf.hidden), noise_fit=noise_fit,
                           # the label-free checks score the function process: the same fit's
                           teacher_oof_nll=spread["teacher_oof_nll"], teacher_probe_nll=spread["teacher_probe_nll"])
                student.set_noise_law(*law)
            if name == "DLF" and "nugget" in config.ablations:
                # The same fit, predicting new teachers (nugget included): no refit needed.
                student.include_nugget = True
                means, variances = student.predictive_mixture(x_test)
                epistemic = student.predict(x_test, 1, return_samples=False).epistemic_variance
                record("DLF + nugget", design, means, variances, epistemic, teacher_test,
                       metrics.count_parameters(student.dlf), lambda x: student.predict(x, 1000, return_samples=False), seconds)
            if name == "DLF":
                # The same fit, its loadings rescaled to the teachers' spread among their held-out
                # values (pyro_dlf.calibration): no refit, no labels.
                student.include_nugget = False
                start = time.perf_counter()
                try:
                    calibration = calibrate_spread(student, x_oof, f_oof, oof_mask)
                except InfeasibleCalibration as error:
                    # No scale matches (the kept nugget alone reports more): the row is undefined on this split.
                    next(r for r in reversed(rows) if r["method"] == "DLF")["calibration_infeasible"] = str(error)
                    continue
                seconds += time.perf_counter() - start
                means, variances = student.predictive_mixture(x_test)
                epistemic = student.predict(x_test, 1, return_samples=False).epistemic_variance
                # ‖Φ‖² scales by the same factor at every input, a growing nugget's kept part does not (§9.4).
                design_variance = (spread["student_variance_design"] * calibration.scale if student.dlf.distance_anchors is None
                                   else float(student.predict(x_dlf, 1, return_samples=False).epistemic_variance.mean()))
                spread = dict(spread, spread_calibration=calibration.as_dict(), student_variance_design=design_variance,
                              teacher_oof_nll=_out_of_sample_nll(student, x_oof, f_oof, oof_mask),
                              teacher_probe_nll=_out_of_sample_nll(student, x_probe, f_probe, None))
                record(CALIBRATED, design, means, variances, epistemic, teacher_test,
                       metrics.count_parameters(student.dlf), lambda x: student.predict(x, 1000, return_samples=False), seconds,
                       hidden=list(student.dlf.hidden), **spread)
    return rows


def _out_of_sample_nll(student, x: torch.Tensor, f: torch.Tensor, observed: Optional[torch.Tensor]) -> float:
    r"""The fit's negative log density of the teachers' *out-of-sample* values, per value.

    Teacher :math:`i` did not train on the rows ``observed[i]`` (its own
    held-out 10 %); its values there vary as a new input's would. Under the
    DLF each teacher's values are :math:`N(μ, ΦΦ^T + σ_f^2 I)` on those rows
    (mathematics §3–4, the masked marginal likelihood), so
    :math:`-\frac{1}{\#\text{obs}} \sum_i \log p(f_i[\text{obs}_i])` measures how well
    a student reproduces the teachers' disagreement away from their own
    training data -- from the training inputs and the teachers alone, no labels
    and no test data. With ``observed=None`` every value counts: at points no
    teacher trained on (:func:`pyro_dlf.design.outward_probes`, beyond the data)
    all of them are out of sample.
    """
    dtype = student.dlf.loading_head.weight.dtype
    with torch.no_grad():
        log_density = student.dlf.log_marginal_likelihood(x.to(dtype), f.to(dtype), batch_size=4096, observed=observed)
    count = observed.sum() if observed is not None else f.numel()
    return float(-log_density.sum() / count)


#: The default DLF's fit with its loadings calibrated to the teachers' out-of-sample spread.
CALIBRATED = "DLF, out-of-sample spread"
#: The DLF row's fit with the noise law that follows the factors (distill's noise_given_factors="auto").
FACTOR_NOISE = "DLF, noise given factors"
#: The same, the law adopted by the predictive check on the teachers' held-out rows instead of the test.
NOISE_CHECKED = "DLF, noise law by held-out check"

#: DLF variants the design-selection rows choose among (when a run has them).
DESIGN_CANDIDATES = ("DLF", "DLF Gaussian design", "DLF mixup design", "DLF outward design")
DESIGN_SELECTED = "DLF, design chosen by out-of-sample teacher values"
DESIGN_SELECTED_BEYOND = "DLF, design chosen in and beyond the data"

#: Body and training length chosen together on held-out design points (the ``length`` ablation).
LENGTH_CHOSEN = "DLF, training length chosen"

def loading_body_name(widths) -> str:
    """The ``loadings`` row: ``DLF, loading body 1×50`` for the default widths (see :func:`_widths_name`)."""
    return "DLF, loading body " + _widths_name(widths)[len("DLF "):]


#: A separate loading body of the paper-protocol widths beside the ``DLF`` row's body rule for the mean
#: (the ``loadings`` ablation when ``dlf_loading_hidden`` is ``None``; the ``DLF`` row's network by default).
LOADING_BODY = loading_body_name((50,))
#: The ``DLF`` row's body rule with one body for the mean and the loadings (the paper's network; the
#: ``loadings`` ablation beside a ``DLF`` row with a loading body).
SHARED_BODY = "DLF, shared body"


#: The label-free scores of each selection row: the per-value NLL of the teachers' held-out values (in range)
#: and, for the second, its mean with the per-value NLL at the outward probes (beyond the data).
_SELECTION_SCORES = (
    (DESIGN_SELECTED, ("teacher_oof_nll",)),
    (DESIGN_SELECTED_BEYOND, ("teacher_oof_nll", "teacher_probe_nll")),
)


def design_selection(rows: list[dict]) -> list[dict]:
    """Per (set, split) and selection rule: the row of the :data:`DESIGN_CANDIDATES` variant that scores best.

    :data:`DESIGN_SELECTED` takes the fit that gives the teachers' out-of-sample
    values on the training rows the highest density (:func:`_out_of_sample_nll`);
    :data:`DESIGN_SELECTED_BEYOND` the lowest mean of that score and the same
    score at the outward probes (:func:`pyro_dlf.design.outward_probes`), so that
    what the teachers do beyond the data counts as much as what they do within
    it. Each chosen row is copied, renamed and tagged with the chosen variant;
    splits lacking a candidate or a score are skipped. No labels, no test data.
    """
    groups: dict = {}
    for row in rows:
        if row["method"] in DESIGN_CANDIDATES and "teacher_oof_nll" in row:
            groups.setdefault((row["dataset"], row["split"]), {})[row["method"]] = row
    chosen = []
    for name, keys in _SELECTION_SCORES:
        for candidates in groups.values():
            if len(candidates) < len(DESIGN_CANDIDATES) or not all(k in r for r in candidates.values() for k in keys):
                continue
            best = min(candidates.values(), key=lambda r: sum(r[k] for k in keys) / len(keys))
            chosen.append(dict(best, method=name, chosen_design=best["method"]))
    return chosen


def _datasets(config: UCIBenchConfig) -> list[UCIData]:
    if config.data_path:
        return [load_uci(config.data_path)]
    if not config.data_dir:
        raise ValueError("data_dir: give --data-dir (a folder of UCI sets) or --data-path (one set's folder)")
    if not os.path.isdir(config.data_dir):
        raise FileNotFoundError(f"data_dir: no folder at {config.data_dir!r}; give --data-dir a folder of UCI sets (one "
                                "folder per set, e.g. ../shared/data/uci)")
    available = sorted(d for d in os.listdir(config.data_dir) if os.path.isdir(os.path.join(config.data_dir, d)))
    missing = [name for name in config.datasets if name not in available]
    if missing:
        raise FileNotFoundError(f"datasets: no set {missing[0]!r} under --data-dir {config.data_dir!r}; choose from "
                                f"{', '.join(available) or 'none (the folder holds no set)'}")
    return [load_uci(os.path.join(config.data_dir, name)) for name in list(config.datasets) or available]


def run_uci_benchmark(config: UCIBenchConfig) -> dict:
    """Run every set × split × method; returns the result dictionary (see :func:`write_report`)."""
    unknown = set(config.ablations) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"ablations: unknown {sorted(unknown)}; choose from {ABLATIONS}")
    if config.splits < 1 or config.teachers < 2:
        raise ValueError("splits must be >= 1 and teachers >= 2")
    if config.first_split < 0:
        raise ValueError(f"first_split must be >= 0 (the seed of the first split), got {config.first_split}")
    if config.max_design is not None and config.max_design < 2:
        raise ValueError(f"max_design must be >= 2 design points (or None for all), got {config.max_design}")
    if config.design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {config.design!r}")
    if config.dlf_design not in ("auto", *DLF_DESIGNS):
        raise ValueError(f"dlf_design must be 'auto' or one of {DLF_DESIGNS}, got {config.dlf_design!r}")
    torch.manual_seed(config.seed)
    started = time.time()
    rows = []
    sets = _datasets(config)
    jobs = [(data, seed) for data in sets for seed in range(config.first_split, config.first_split + config.splits)]
    for data, seed in progress_bar(jobs, desc="UCI benchmark", enabled=config.progress, leave=True):
        rows.extend(_run_split(config, data, seed))
    return {
        "benchmark": "uci",
        "command": config.command,
        "config": asdict(config),
        "rows": rows,
        "datasets": {d.name: {"n": len(d.y), "d": d.x.shape[1]} for d in sets},
        "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cpu"},
        "wall_seconds": time.time() - started,
    }


# RMSE and CRPS in significant digits: their scale is the target's (naval's is ~1e-3).
_METRICS = (("rmse", "RMSE", "{:.4g}"), ("nll", "NLL", "{:.3f}"), ("crps", "CRPS", "{:.4g}"),
            ("coverage95", "cov95", "{:.3f}"), ("variance_ratio", "var. ratio", "{:.3f}"))


def summarize(rows: list[dict]) -> dict:
    """Mean and standard error over splits: ``{dataset: {method: {metric: (mean, se, count)}}}``."""
    table: dict = {}
    for row in rows:
        table.setdefault(row["dataset"], {}).setdefault(row["method"], []).append(row)
    out = {}
    for dataset, methods in table.items():
        out[dataset] = {}
        for method, items in methods.items():
            stats = {}
            for key in [k for k, _, _ in _METRICS] + ["parameters", "predict_1000_seconds", "fit_seconds"]:
                values = torch.tensor([float(r[key]) for r in items], dtype=torch.float64)
                se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
                stats[key] = (float(values.mean()), se, len(values))
            out[dataset][method] = stats
    return out


def merge_results(results: list[dict], methods: Optional[Sequence[str]] = None,
                  recomputed: Optional[Sequence[str]] = None) -> dict:
    """Combine benchmark results (e.g. one run per set plus an ablation run) into one.

    Rows are keyed by ``(dataset, split, method)``; the first result that has a
    key wins, and a repeated key (e.g. the default DLF in an ablation run) is
    dropped after its metrics are compared with the kept row: the largest
    absolute NLL difference over repeated keys is stored as
    ``repeat_max_nll_difference`` (0 when runs are reproducible).
    Every source run's command, configuration, versions, machine and wall time
    are kept under ``runs``; each row gets the index of its run.

    :param methods: keep only these methods' rows (e.g. to leave out variants
        whose protocol changed between the runs); every name must occur in the
        inputs. Stored as ``methods`` in the result.
    :param recomputed: methods whose definition changed since the later inputs
        were run (list the new runs first): a recomputed method's rows on a set
        come only from the first input that has that method on that set -- a
        later input's rows of it, repeated splits or not, follow the old
        definition and are left out, so no set mixes the two (merge the new
        runs of one set first when they are several) -- and its repeats are left
        out of ``repeat_max_nll_difference``, since they are expected to
        differ. The names are stored as ``recomputed`` for the report to say so.
    """
    if not results:
        raise ValueError("results: give at least one benchmark result to merge")
    if methods is not None:
        present = {row["method"] for result in results for row in result.get("rows", ())}
        missing = [m for m in methods if m not in present]
        if missing or not methods:
            raise ValueError(f"methods: {missing or 'none given'} not among the inputs' methods; choose from {sorted(present)}")
    recomputed = list(recomputed or ())
    present = {row["method"] for result in results for row in result.get("rows", ())}
    if any(m not in present or (methods is not None and m not in methods) for m in recomputed):
        raise ValueError(f"recomputed: {[m for m in recomputed if m not in present or (methods is not None and m not in methods)]} "
                         f"are not among the kept methods; choose from {sorted(present if methods is None else methods)}")
    # The row DLF's design rule is part of its definition (a run without the key fitted the given points).
    # A merged input carries its source runs' configurations under ``runs``.
    rules = {run.get("config", {}).get("dlf_design", "given") for result in results for run in result.get("runs", [result])}
    if len(rules) > 1 and "DLF" not in recomputed and (methods is None or "DLF" in methods):
        raise ValueError(f"results: the inputs' DLF rows follow different designs {sorted(rules)}; list 'DLF' as recomputed "
                         "(new runs first) or leave it out of the methods")
    runs, rows, datasets, seen = [], [], {}, {}
    source: dict = {}  # (set, recomputed method) -> the input its rows come from
    difference = 0.0
    for index, result in enumerate(results):
        if result.get("benchmark") != "uci":
            raise ValueError("results: every entry must be a UCI benchmark result (a loaded uci*.json)")
        offset = len(runs)
        for run in result.get("runs", [result]):
            runs.append({key: run[key] for key in ("command", "config", "versions", "machine", "wall_seconds")})
        datasets.update(result["datasets"])
        for row in result["rows"]:
            if methods is not None and row["method"] not in methods:
                continue
            key = (row["dataset"], row["split"], row["method"])
            if row["method"] in recomputed and source.setdefault((row["dataset"], row["method"]), index) != index:
                continue
            if key in seen:
                if row["method"] not in recomputed:
                    difference = max(difference, abs(seen[key]["nll"] - row["nll"]))
                continue
            row = dict(row, run=offset + row.get("run", 0))
            seen[key] = row
            rows.append(row)
    merged = {"benchmark": "uci", "runs": runs, "rows": rows, "datasets": datasets,
              "repeat_max_nll_difference": difference}
    if methods is not None:
        merged["methods"] = list(methods)
    if recomputed:
        merged["recomputed"] = recomputed
    return merged


_TARGET_METRICS = (("rmse", "RMSE"), ("nll", "NLL"), ("crps", "CRPS"))


def target_summary(summary: dict, method: str = "DLF") -> list[str]:
    """Markdown lines checking ``method`` against the benchmark's targets, per set.

    NLL and CRPS gaps to the teacher ensemble (relative to the ensemble's value,
    and in absolute terms since an NLL can be negative); the (set, metric) cells
    where ``method`` has a lower mean than Hydra and than BE; the variance ratio.
    """
    lines = [f"| set | {method} − ensemble NLL | rel. | {method} − ensemble CRPS | rel. | beats Hydra (RMSE/NLL/CRPS) "
             f"| beats BE (RMSE/NLL/CRPS) | var. ratio |", "|---|---|---|---|---|---|---|---|"]
    wins = cells = 0
    for dataset, methods in summary.items():
        if method not in methods or "teacher ensemble" not in methods:
            continue
        ours, ens = methods[method], methods["teacher ensemble"]
        gaps = []
        for key in ("nll", "crps"):
            gap = ours[key][0] - ens[key][0]
            gaps += [f"{gap:+.3g}", f"{100 * gap / abs(ens[key][0]):+.1f} %"]
        beats = []
        for rival in ("Hydra", "BE"):
            if rival not in methods:
                beats.append("–")
                continue
            marks = []
            for key, _ in _TARGET_METRICS:
                better = ours[key][0] < methods[rival][key][0]
                wins, cells = wins + better, cells + 1
                marks.append("yes" if better else "no")
            beats.append("/".join(marks))
        ratio = f"{ours['variance_ratio'][0]:.2f}"
        lines.append(f"| {dataset} | " + " | ".join(gaps + beats + [ratio]) + " |")
    if cells:
        lines += ["", f"{method} has the lower mean in {wins} of {cells} (set, metric, rival) cells "
                      f"({100 * wins / cells:.0f} %) against Hydra and BE."]
    return lines


def targets_on_own_splits(rows: list[dict], method: str) -> list[str]:
    """:func:`target_summary` for ``method`` against every other method on the splits ``method`` has.

    A merged result may hold a variant for fewer splits than the ensemble and the rivals (e.g. an
    ablation run on three of ten splits); comparing its mean with theirs over other splits would mix
    the split-to-split variation into the gap. The caption names the sets where splits were left out.
    No lines when ``method`` has no rows.
    """
    same_splits, fewer = _on_own_splits(rows, method)
    if same_splits is None:
        return []
    note = f" (compared on the splits it has: {fewer})" if fewer else ""
    return [f"The same for `{method}`{note}:", ""] + target_summary(same_splits, method) + [""]


def _on_own_splits(rows: list[dict], method: str) -> tuple[Optional[dict], str]:
    """The summary of every method on the (set, split) pairs ``method`` has, and the sets where it
    has fewer splits than some other method with its count (``"protein 3"``; ``(None, "")`` without rows)."""
    present = {(r["dataset"], r["split"]) for r in rows if r["method"] == method}
    if not present:
        return None, ""
    summary = summarize(rows)
    fewer = [dataset for dataset, methods in summary.items()
             if method in methods and methods[method]["nll"][2] < max(m["nll"][2] for m in methods.values())]
    return (summarize([r for r in rows if (r["dataset"], r["split"]) in present]),
            ", ".join(f"{d} {summary[d][method]['nll'][2]}" for d in fewer))


def noise_law_summary(rows: list[dict]) -> list[str]:
    """Per set: how often the noise law that follows the factors was adopted by each rule, its
    exponent ``β``, the likelihood-ratio statistic, the held-out predictive check, and the test
    NLL of ``DLF`` (the i.i.d. law) against the same fit with the law chosen by each rule."""
    fits = [r for r in rows if r["method"] == FACTOR_NOISE and "noise_fit" in r]
    if not fits:
        return []
    nll = {(r["dataset"], r["split"], r["method"]): r["nll"] for r in rows if r["method"] in ("DLF", NOISE_CHECKED)}
    lines = ["## The noise law", "",
             f"`{FACTOR_NOISE}` is the `DLF` fit with the teachers' noise variance following each draw's factors, "
             "σ² | z ~ IG(a, b u(z)^β) with u(z) the size of the draw's deviation from the mean function, adopted when a "
             "likelihood-ratio test on the teachers' own noise variances rejects β = 0 (the i.i.d. law, the `DLF` row) "
             f"at 1 % (`distill(noise_given_factors=\"auto\")`). `{NOISE_CHECKED}` adopts the same fitted law when it "
             "gives each teacher's noisy outputs on the training rows that teacher held out a higher expected log "
             "predictive density than the i.i.d. law, by more than one standard error over teachers (the check's gain "
             "is in nats per value). No labels are used by either rule.", "",
             "| set | splits | adopted (LR test) | β (mean) | LR statistic (median) | adopted (held-out check) | "
             f"check gain (mean) | NLL `DLF` | NLL `{FACTOR_NOISE}` | NLL `{NOISE_CHECKED}` |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def mean(values: list) -> str:
        return f"{sum(values) / len(values):.3f}" if values else "–"

    for dataset in dict.fromkeys(r["dataset"] for r in fits):
        mine = [r for r in fits if r["dataset"] == dataset]
        stats = sorted(r["noise_fit"]["statistic"] for r in mine)
        checked = [r for r in mine if "heldout_adopted" in r["noise_fit"]]
        gains = [r["noise_fit"]["heldout_score_law"] - r["noise_fit"]["heldout_score_iid"] for r in checked]
        plain = [nll[(dataset, r["split"], "DLF")] for r in mine if (dataset, r["split"], "DLF") in nll]
        by_check = [nll[(dataset, r["split"], NOISE_CHECKED)] for r in mine if (dataset, r["split"], NOISE_CHECKED) in nll]
        lines.append(f"| {dataset} | {len(mine)} | {sum(r['noise_fit']['adopted'] for r in mine)} of {len(mine)} | "
                     f"{sum(r['noise_fit']['exponent'] for r in mine) / len(mine):.2f} | {stats[len(stats) // 2]:.1f} | "
                     + (f"{sum(r['noise_fit']['heldout_adopted'] for r in checked)} of {len(checked)}" if checked else "–")
                     + f" | {mean(gains)} | {mean(plain)} | {mean([r['nll'] for r in mine])} | {mean(by_check)} |")
    return lines + [""]


def variance_decomposition(rows: list[dict]) -> list[str]:
    """Markdown lines: where each DLF fit puts the teachers' spread (rows that recorded it).

    Per set and variant, means over splits of: the share of the teachers' spread
    at the design points held by the smooth part ``‖Φ‖²``, the share left to the
    nugget ``σ_f²``, and the teachers' spread at the design points over their
    spread at the test inputs. The variance ratio at test inputs is roughly
    (smooth share) × (design/test spread).
    """
    groups: dict = {}
    for row in rows:
        if "teacher_spread_design" in row:
            groups.setdefault((row["dataset"], row["method"]), []).append(row)
    if not groups:
        return []
    lines = ["## Where the variance goes", "",
             "Share of the teachers' spread at the design points held by ‖Φ‖² and by the nugget σ_f², and the "
             "teachers' spread at the design points relative to the test inputs (means over splits). For the "
             "calibrated fit, also the teachers' pooled spread among their held-out values (each teacher's values "
             "on the training rows it did not train on; no labels) relative to their spread at the test inputs. "
             "For a fit whose design reaches off the rows (the `DLF` row when its design is not `given`, "
             "`DLF, no distance feature`), the columns are measured at the rows, the design's first part: its nugget, "
             "fitted where the teachers disagree more, can then exceed their spread at the rows.", "",
             "| set | method | n | ‖Φ‖² share | nugget share | design / test spread | held-out / test spread |",
             "|---|---|---|---|---|---|---|"]
    for (dataset, method), items in groups.items():
        mean = lambda key: sum(key(r) for r in items) / len(items)  # noqa: E731
        held_out = (f"{mean(lambda r: r['spread_calibration']['teacher_spread'] / r['teacher_spread_test']):.2f}"
                    if all("spread_calibration" in r for r in items) else "–")
        lines.append(f"| {dataset} | {method} | {len(items)} | "
                     f"{mean(lambda r: r['student_variance_design'] / r['teacher_spread_design']):.2f} | "
                     f"{mean(lambda r: r['nugget_variance'] / r['teacher_spread_design']):.2f} | "
                     f"{mean(lambda r: r['teacher_spread_design'] / r['teacher_spread_test']):.2f} | {held_out} |")
    return lines + [""]


def extrapolation_summary(rows: list[dict], targets: Sequence[str] = ("DLF",)) -> list[str]:
    """Markdown lines for extrapolation rows: per set and method, NLL and CRPS on the in-range and
    out-of-range test points and the AUROC of the epistemic variance (means ± SE over splits), and
    the targets for each method in ``targets`` that has rows: its out-of-range NLL ≤ the teachers' + 0.10
    nats, its AUROC ≥ 0.95 × the teachers', and its AUROC ≥ every other student's (small-Ens, Hydra and
    BE in their default rows; the DLF variants and the ablations' rivals are not its rivals)."""
    groups: dict = {}
    for row in rows:
        if "auroc_epistemic" in row:
            groups.setdefault(row["dataset"], {}).setdefault(row["method"], []).append(row)
    if not groups:
        return []

    def stat(items, key):
        t = torch.tensor([float(r[key]) for r in items], dtype=torch.float64)
        return float(t.mean()), (float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan"))

    keys = (("nll_in", "NLL in"), ("nll_out", "NLL out"), ("crps_in", "CRPS in"), ("crps_out", "CRPS out"),
            ("auroc_epistemic", "AUROC epistemic"))
    lines = ["## Extrapolation", "",
             "Out-of-range test points: the 10 % of rows with the largest projection on the first principal component "
             "of the standardized inputs; in-range: a random 10 % of the rest. AUROC of each method's epistemic variance "
             "for telling out-of-range from in-range test inputs (0.5 = no signal). Mean ± SE over splits.", ""]
    tally: dict = {}
    target_lines: dict = {}
    for dataset, methods in groups.items():
        lines += [f"### {dataset}", "", "| method | n | " + " | ".join(label for _, label in keys) + " |",
                  "|" + "---|" * (len(keys) + 2)]
        for name, items in methods.items():
            cells = []
            for key, _ in keys:
                mean, se = stat(items, key)
                cells.append(f"{mean:.4g}" + ("" if math.isnan(se) else f" ± {se:.2g}"))
            lines.append(f"| {name} | {len(items)} | " + " | ".join(cells) + " |")
        lines.append("")
        for method in targets:
            if method in methods and "teacher ensemble" in methods:
                # On the splits the method has (a calibrated row may be undefined on some): no split mixes in.
                own = {r["split"] for r in methods[method]}
                same = {m: [r for r in items if r["split"] in own] for m, items in methods.items()}
                line = _extrapolation_targets(dataset, method, {m: items for m, items in same.items() if items}, stat, tally)
                fewer = len(own) < max(len(items) for items in methods.values())
                target_lines.setdefault(method, []).append(
                    line + (f" (on its {len(own)} split{'s' if len(own) > 1 else ''})" if fewer else ""))
    for method, counts in tally.items():
        rivals = (f"on {counts['rivals']} of {counts['with_rivals']}" if counts["with_rivals"]
                  else "not decided (no other student in these rows)")
        lines += [f"Targets for `{method}` over {counts['sets']} sets: out-of-range NLL ≤ the teachers' + 0.10 nats on "
                  f"{counts['nll']} (target: ≥ 5 of the 7 sets); AUROC ≥ 0.95 × the teachers' on {counts['ratio']} (target: "
                  f"≥ 6 of 7); AUROC ≥ every other student's (small-Ens, Hydra, BE) {rivals} (target: ≥ 4 of 7).", ""
                  ] + target_lines[method] + [""]
    return lines


def _extrapolation_targets(dataset: str, method: str, methods: dict, stat: Callable, tally: dict) -> str:
    """One set's line of the extrapolation targets for ``method``; counts go to ``tally[method]``."""
    ours, teachers = (stat(methods[m], "auroc_epistemic")[0] for m in (method, "teacher ensemble"))
    nll, nll_teachers = (stat(methods[m], "nll_out")[0] for m in (method, "teacher ensemble"))
    # The default rows only: DLF variants and the rivals on the DLF's design are ablations, not rivals.
    rivals = {m: stat(items, "auroc_epistemic")[0] for m, items in methods.items()
              if m in ("small-Ens", "Hydra", "BE")}
    counts = tally.setdefault(method, {"sets": 0, "nll": 0, "ratio": 0, "rivals": 0, "with_rivals": 0})
    nll_ok, ratio_ok = nll <= nll_teachers + 0.10, ours >= 0.95 * teachers
    rivals_ok = bool(rivals) and all(ours >= v for v in rivals.values())
    counts["sets"] += 1
    counts["nll"] += nll_ok
    counts["ratio"] += ratio_ok
    counts["rivals"] += rivals_ok
    counts["with_rivals"] += bool(rivals)
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return (f"- {dataset}: NLL out {nll:.3f} vs teachers {nll_teachers:.3f} ({verdict(nll_ok)}); AUROC {ours:.3f}, "
            f"teachers {teachers:.3f} (ratio {ours / teachers:.2f}, {verdict(ratio_ok)})"
            + (("; " + ", ".join(f"{m} {v:.3f}" for m, v in rivals.items()) + f" ({verdict(rivals_ok)})") if rivals
               else "; no other student in these rows"))


def chosen_designs(rows: list[dict]) -> list[str]:
    """The row DLF's design per split (``distill(design="auto")``): the candidates' held-out scores and the choice."""
    picked = [r for r in rows if r["method"] == "DLF" and r.get("design_choice", {}).get("scores")]
    if not picked:
        return []
    lines = ["", "## The DLF's design, chosen without labels", "",
             "Per split, `distill(design=\"auto\")` held out 20 % of the row DLF's design rows (`validation_fraction`), fitted "
             "one DLF per candidate (design, with or without the distance feature) built from the rest, and scored the teachers' values at the held-out rows (in range), at a Gaussian perturbation "
             "of each (around) and at an outward probe of each with reach 0.5 (beyond): negative log density per value under "
             "the candidate's process, lower is better; the lowest mean of the three is chosen (mathematics §9.2).", "",
             "| set | split | candidate | in range | around | beyond | mean | chosen |", "|---|---|---|---|---|---|---|---|"]
    for row in picked:
        choice = row["design_choice"]
        for cand in choice["scores"]:
            label = (cand["design"] + (f" (reach {cand['reach']:g})" if cand["reach"] is not None else "")
                     + (", distance feature" if cand.get("distance_feature") else ""))
            chosen = all(cand.get(k) == choice.get(k) for k in ("design", "reach", "distance_feature"))
            lines.append(f"| {row['dataset']} | {row['split']} | {label} | {cand['in_range']:.3f} | {cand['around']:.3f} | "
                         f"{cand['beyond']:.3f} | {cand['score']:.3f} | {'yes' if chosen else ''} |")
    return lines


def design_check(rows: list[dict]) -> list[str]:
    """Markdown lines: the label-free checks of every DLF fit (:func:`_out_of_sample_nll` on the
    teachers' held-out rows and at the outward probes, means over splits) and which design each
    selection row chose how often."""
    groups: dict = {}
    for row in rows:
        if "teacher_oof_nll" in row:
            groups.setdefault(row["dataset"], {}).setdefault(row["method"], []).append(row)
    if not groups:
        return []
    lines = ["## Label-free check: the teachers' out-of-sample values", "",
             "Negative log density per value, under each DLF fit, of each teacher's values on the 10 % of training rows "
             "it did not train on (in range) and of every teacher's values at outward probes (each training input pushed "
             "away from the centroid by up to half its distance from it, in standardized coordinates: beyond the data). "
             "Means over splits; lower is better. Both use the training inputs and the teachers only, so they may choose "
             f"a design: per split, `{DESIGN_SELECTED}` takes the lowest in-range score and `{DESIGN_SELECTED_BEYOND}` "
             "the lowest mean of the two, among " + ", ".join(f"`{c}`" for c in DESIGN_CANDIDATES) + ".", "",
             "| set | method | n | in range | beyond the data |", "|---|---|---|---|---|"]

    def mean(items, key):
        values = [r[key] for r in items if key in r]
        return f"{sum(values) / len(values):.3f}" if values else "–"

    for dataset, methods in groups.items():
        for method, items in methods.items():
            lines.append(f"| {dataset} | {method} | {len(items)} | {mean(items, 'teacher_oof_nll')} | "
                         f"{mean(items, 'teacher_probe_nll')} |")
    picks: dict = {}
    for row in design_selection(rows):
        picks.setdefault(row["method"], {}).setdefault(row["dataset"], []).append(row["chosen_design"])
    for name, by_set in picks.items():
        lines += ["", f"Designs chosen by `{name}`: " + "; ".join(
            f"{dataset}: " + ", ".join(f"{c} ×{chosen.count(c)}" for c in DESIGN_CANDIDATES if chosen.count(c))
            for dataset, chosen in by_set.items()) + "."]
    return lines + [""]


def infeasible_calibrations(rows: list[dict]) -> list[str]:
    """Markdown lines naming the splits without a ``DLF, out-of-sample spread`` row: there the nugget the
    predictive keeps alone exceeds the teachers' out-of-sample spread, so no loading scale matches it."""
    calibrated = {(r["dataset"], r["split"]) for r in rows if r["method"] == CALIBRATED}
    splits: dict = {}
    reasons: list[str] = []
    for row in rows:
        # A merge may keep a DLF row of one run and a calibrated row of another: name only splits without the row.
        if row["method"] == "DLF" and "calibration_infeasible" in row and (row["dataset"], row["split"]) not in calibrated:
            splits.setdefault(row["dataset"], []).append(row["split"])
            if row["calibration_infeasible"] not in reasons:
                reasons.append(row["calibration_infeasible"])
    if not splits:
        return []
    return [f"`{CALIBRATED}` is undefined on " + "; ".join(f"{dataset} split{'s' if len(s) > 1 else ''} "
                                                           f"{', '.join(str(k) for k in sorted(s))}"
                                                           for dataset, s in splits.items())
            + " (its rows average the other splits); the reason the `DLF` rows there record: "
            + "; ".join(f"\"{reason}\"" for reason in reasons) + ".", ""]


def write_report(result: dict, output_dir: str, name: str = "uci") -> tuple[str, str]:
    """Write ``{name}.json`` (every row) and ``{name}.md`` (mean ± SE tables) plus one PNG per set.

    ``result`` is one run (:func:`run_uci_benchmark`) or several merged
    (:func:`merge_results`).
    """
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    atomic_write(json_path, lambda fh: json.dump(result, fh, indent=1))
    # The design-selection row is derived from the rows (no refit): it lives in the report, not the JSON.
    rows = result["rows"] + design_selection(result["rows"])
    summary = summarize(rows)
    runs = result.get("runs", [result])
    lines = [f"# UCI regression benchmark ({name})", ""]
    for run in runs:
        config = run["config"]
        lines += [
            f"Command: `{run['command']}`  ",
            f"Machine: {run['machine']['platform']}, {run['machine']['cpus']} CPUs, torch {run['versions']['torch']} "
            f"({run['machine']['torch_threads']} threads), pyro_dlf {run['versions']['pyro_dlf']}; wall time "
            f"{run['wall_seconds'] / 60:.1f} min.  ",
            f"Protocol: {config['splits']} "
            + ("extrapolation splits (10 % out of range along the first principal component, 10 % in range)"
               if config.get("extrapolation") else "random 90/10 splits")
            + f" per set, {config['teachers']} teachers "
            f"(MLP {config['teacher_hidden']}), students {config['student_hidden']}, DLF body "
            f"{config.get('dlf_hidden', config['student_hidden'])}"
            + (f" with a loading body {config['dlf_loading_hidden']}" if config.get("dlf_loading_hidden") else "")
            + f", q = "
            f"{config['num_factors']}; design points of every student: the training inputs"
            + (f" (a random {config['max_design']} where there are more)" if config.get("max_design") else "")
            + ({"train": "", "jitter": " plus a neighbour-jittered copy of each", "gaussian": " plus a Gaussian-perturbed copy of each (Scott's bandwidth)",
                "mixup": " plus a mixup copy of each", "outward": " plus an outward-probe copy of each"}[config.get("design", "train")]) + "; "
            + _dlf_design_words(config.get("dlf_design", "given")) + ".",
            "",
        ]
    if result.get("methods"):
        lines += ["Methods kept from these runs: " + ", ".join(f"`{m}`" for m in result["methods"]) + ".", ""]
    if len(runs) > 1:
        lines += [f"Rows repeated across runs (same set, split and method) are kept once; their largest NLL "
                  f"difference is {result.get('repeat_max_nll_difference', float('nan')):.2g}"
                  + (" (leaving out the recomputed methods: " + ", ".join(f"`{m}`" for m in result["recomputed"])
                     + ", whose rows come from the first run that has them, with the current code)"
                     if result.get("recomputed") else "") + ".", ""]
    lines += [
        "Mean ± standard error over splits (n = number of splits); metrics in original units; NLL and CRPS of "
        "the full predictive; lower is better except coverage (target 0.95) and the variance ratio (target 1).",
        "",
        "The paper's Table 1 figures are not part of this repository's offline material, so they are not quoted here; "
        "compare with the paper directly.",
        "",
    ]
    if "bostonHousing" in summary:
        lines += ["Boston housing carries an ethically problematic feature (\"B\"); it is kept only for comparability with the literature.", ""]
    # The default DLF against the others on the splits it has (a set rerun on fewer splits is
    # compared there, not against the others' means over splits it lacks).
    own, fewer = _on_own_splits(rows, "DLF")
    lines += ["## Targets", ""] + ([f"Compared on the splits `DLF` has: {fewer}.", ""] if fewer else [])
    lines += target_summary(own if own is not None else summary) + [""]
    loading_rows = sorted({r["method"] for r in rows if r["method"].startswith("DLF, loading body ")})
    for selected in (LENGTH_CHOSEN, *loading_rows, SHARED_BODY, FACTOR_NOISE, NOISE_CHECKED, CALIBRATED, DESIGN_SELECTED, DESIGN_SELECTED_BEYOND):
        lines += targets_on_own_splits(rows, selected)
    lines += extrapolation_summary(rows, ("DLF", LENGTH_CHOSEN, *loading_rows, SHARED_BODY, CALIBRATED, DESIGN_SELECTED, DESIGN_SELECTED_BEYOND))
    if _auroc_plot(os.path.join(output_dir, f"{name}_auroc.png"), rows):
        lines += [f"![AUROC of the epistemic variance, out of range against in range]({name}_auroc.png)", ""]
    lines += noise_law_summary(result["rows"])
    lines += variance_decomposition(result["rows"])
    lines += infeasible_calibrations(result["rows"])
    lines += design_check(result["rows"])
    lines += chosen_designs(result["rows"])
    for dataset, methods in summary.items():
        info = result["datasets"].get(dataset, {})
        lines += [f"## {dataset} (n = {info.get('n')}, d = {info.get('d')})", ""]
        header = "| method | n | " + " | ".join(label for _, label, _ in _METRICS) + " | params | predict 1000 (ms) |"
        lines += [header, "|" + "---|" * (len(_METRICS) + 4)]
        for method, stats in methods.items():
            # One split has no standard error: say so rather than print nan.
            cells = [str(stats["nll"][2])]
            cells += [fmt.format(stats[key][0]) + (f" ± {fmt.format(stats[key][1])}" if stats[key][2] > 1 else "")
                      for key, _, fmt in _METRICS]
            cells += [str(int(stats["parameters"][0])), f"{1e3 * stats['predict_1000_seconds'][0]:.2f}"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        _plot(os.path.join(output_dir, f"{name}_{dataset}.png"), dataset, methods)
        lines += [f"![{dataset}]({name}_{dataset}.png)", ""]
    md_path = os.path.join(output_dir, f"{name}.md")
    atomic_write(md_path, lambda fh: fh.write("\n".join(lines)))
    return json_path, md_path


def _dlf_design_words(dlf_design: str) -> str:
    """How the row DLF's design points were set, for the protocol line."""
    if dlf_design == "given":
        return "the row DLF fits the same points"
    if dlf_design == "auto":
        return ("the row DLF's design is built from them by `distill(design=\"auto\")` (the rows only, around them, or around and "
                "beyond them, chosen per split from the teachers' held-out values; see the design table) with the teachers evaluated there")
    return f"the row DLF's design is `distill(design={dlf_design!r})` built from them, with the teachers evaluated there"


def _auroc_plot(path: str, rows: list[dict]) -> bool:
    """Bars of each method's out-of-range AUROC per set (extrapolation rows); ``False`` when there are none."""
    groups: dict = {}
    for row in rows:
        if "auroc_epistemic" in row:
            groups.setdefault(row["dataset"], {}).setdefault(row["method"], []).append(row["auroc_epistemic"])
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = {DESIGN_SELECTED: "DLF, design chosen in range", DESIGN_SELECTED_BEYOND: "DLF, design chosen in and beyond"}
    methods = [m for m in ("teacher ensemble", "small-Ens", "Hydra", "BE", "DLF", "DLF Gaussian design", "DLF outward design", *short)
               if any(m in g for g in groups.values())]
    sets = list(groups)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(sets)), 4.6))
    for k, method in enumerate(methods):
        values = [sum(groups[d][method]) / len(groups[d][method]) if method in groups[d] else 0.0 for d in sets]
        label = short.get(method, method)
        ax.bar([i + (k - (len(methods) - 1) / 2) * width for i in range(len(sets))], values, width, label=label)
    ax.set_xticks(range(len(sets)), sets, rotation=20, ha="right")
    ax.set(ylabel="AUROC (epistemic variance)", ylim=(0.4, 1.0), title="Telling out-of-range from in-range test inputs")
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"), binary=True)
    plt.close(fig)
    return True


def _plot(path: str, dataset: str, methods: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (key, label, target) in zip(axes, [("variance_ratio", "variance ratio", 1.0), ("coverage95", "95 % coverage", 0.95)]):
        means = [methods[m][key][0] for m in names]
        ses = [0 if math.isnan(methods[m][key][1]) else methods[m][key][1] for m in names]
        ax.bar(range(len(names)), means, yerr=ses, capsize=3, color="tab:blue", alpha=0.8)
        ax.axhline(target, color="k", lw=1, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"{dataset}: {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
