r"""The image classification benchmark, run by ``pyro-dlf bench images``.

Protocol (one run = one data seed):

* **Data**: MNIST (:func:`pyro_dlf_bench.datasets.load_mnist`); the 60,000 training
  images are split once (seeded) into a *teacher* part and a *design* part of
  ``design_size`` images the teachers never see: the design points of every
  student (mathematics §2: held-out data from the training distribution work best).
  Test: the 10,000 MNIST test images. Out-of-distribution (OOD): the 10,000
  Fashion-MNIST test images, fed unchanged (both sets are 28×28 in ``[0, 1]``).
* **Teachers**: ``teachers`` CNNs (:class:`~pyro_dlf_bench.baselines.classifiers.ConvEnsemble`,
  channels ``teacher_channels``) trained on labels from different
  initializations and minibatch orders; their logits are the teacher draws.
  Fitted teachers are cached.
* **Students**, every one the same smaller CNN body (``student_channels``,
  feature width ``student_width``) and fitted on design points only (see Design):
  single CNN (labels of the design images: the plain network a user would
  otherwise train), one-to-one KD from the ensemble mean with each f-DISTILL
  objective (forward KL, reverse KL, JS, TV), small-Ens, Hydra, BatchEnsemble,
  Proxy-EnD², and the DLF (MMD initialization then exact EM, logits centred
  per input): the row ``DLF`` has the class covariance ``dlf_covariance``
  (``"full"``: a ``c×q`` loading per input, ``q = full_num_factors``,
  default ``teachers − 1``, every direction the teachers span; loadings
  projected onto the zero-sum classes), beside it the other structure
  (``"separable"``, ``q = num_factors``), the default with uncentred logits,
  for the full model the loadings left unprojected (mathematics §1–2), and the
  default fit predicting with its nugget (``DLF + nugget``: a new teacher
  rather than the smooth process).
  Training budgets are matched in passes over the design
  images: ``student_epochs`` (30) for every rival (Adam, step 1e-3); for the
  DLF ``mmd_steps`` minibatch steps (300 × 128 images ≈ 4 passes) and
  ``dlf_iterations`` EM iterations of one pass each (26), with ``distill``'s
  warm-up and decaying step size from ``dlf_lr``.
* **Metrics** (:mod:`pyro_dlf_bench.metrics`), probabilities and entropies in
  float64: accuracy, NLL, ECE (15 bins), Brier; AUROC of total entropy and of
  mutual information for the test set against the OOD set; the epistemic
  share, mean mutual information over mean total entropy on the test set;
  the MI ratio, a method's mean mutual information on the OOD set over the
  teachers'; the epistemic logit-variance ratio at the test inputs (the
  method's variance of the centred logits summed over classes, over the
  teachers' sample variance, both averaged over inputs) for every method that
  has one (the DLF's from its loadings, an ensemble-like student's from its
  members); parameters; time to predict 1,000 inputs; for the DLF also one
  network forward on 1,000 inputs, its default predictive (the fixed
  integration rule, mathematics §6.1) and the ``S = 1000``-draw predictive;
  for the ``DLF`` row the default rule's scores against ``S = 10⁴`` draws.
  The DLF rows are scored with the default predictive.
* **Design** (``design``): the one-to-one and rival students (single CNN,
  KD, small-Ens, Hydra, BE, Proxy-EnD²) are fitted on the held-out design
  images (the single CNN needs their labels). The DLF rows are fitted on
  ``design="images"``, the same images, or by default ``design="augment"``:
  those images plus one label-free augmented copy of each
  (:func:`pyro_dlf.design.images.augment_images`, families
  ``augment_families``, strength ``augment_strength``), with the teachers'
  logits evaluated there. Rotation and additive Gaussian noise are not
  augmentation families: they are the ladder's shifts. The ``design``
  ablation (``ablations=("design",)``) adds small-Ens, Hydra and BE
  distilled on the augmented design points and the DLF on the other design,
  separating what the design gives from what the model gives.
* **Shift ladder** (:mod:`pyro_dlf_bench.harness.image_shift`, Ovadia et al., 2019):
  after the fits, the teachers and every student row on ``shift_test_size``
  seeded test images (default 2,000; 200 for digits) rotated by
  ``rotation_degrees`` and with additive Gaussian noise of std
  ``noise_stds``: accuracy, NLL, ECE and the epistemic AUROC (shifted
  against unshifted images) per level.
* **Distribution shift** (mathematics §6.5): MNIST-Flip, ``y → 9 − y``. Each learned
  body is frozen and only a new head is fitted on ``N`` flipped examples drawn
  from the training images the students never saw (``shift_seeds`` draws per
  ``N``, the same draws for every body), scored on the flipped test set.
  A linear softmax head (:func:`fit_linear_head`: MAP under a Gaussian prior
  whose logit variance does not depend on the number of features, on
  features standardized over the design images) on everything the frozen
  network computes before its output: the single CNN's body features and
  logits, Hydra's body features and its heads' logits, the DLF's
  ``(μ̂(x), Φ̂(x))`` of the default DLF. And the separable DLF's own head, as
  the paper describes it (:func:`fit_latent_head`): new latent weights ``Z``
  in ``μ̂ + L̂ Z Φ̂`` at the MAP under the model's prior ``Z ~ N(0, I)`` (the
  full model's latent head would be a single ``q``-vector, too small to
  relabel classes).

Several data seeds are run one process each and merged by
``pyro-dlf bench report`` (:func:`merge_images_results`): rows are means over
seeds, with standard errors, and every seed's own rows stay in the file.
"""

from __future__ import annotations

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
from pyro_dlf_bench import metrics
from pyro_dlf._progress import progress_bar
from pyro_dlf.api import distill
from pyro_dlf_bench.baselines.classifiers import (
    BatchEnsembleClassifier,
    ConvEnsemble,
    DirichletClassifier,
    HydraClassifier,
    prediction_from_probs,
)
from pyro_dlf_bench.baselines.divergences import DIVERGENCES
from pyro_dlf_bench.harness.image_shift import (NOISE_STDS, ROTATION_DEGREES, ShiftLadder, check_ladder_levels, ladder_tables,
                                        ladder_targets, merge_ladder, plot_ladder)
from pyro_dlf_bench.datasets import ImageData, flip_labels, load_digits_images, load_fashion_mnist, load_mnist
from pyro_dlf._validation import check_image_families, check_strength
from pyro_dlf.design.images import IMAGE_FAMILIES, SHIFT_FAMILIES, augment_images, augmentation_magnitudes
from pyro_dlf.nn import ConvBody
from pyro_dlf.student import ClassificationPrediction

__all__ = ["ImagesBenchConfig", "IMAGE_DESIGNS", "IMAGE_ABLATIONS", "run_images_benchmark", "write_images_report",
           "merge_images_results", "fit_linear_head", "fit_latent_head", "class_covariance_concentration"]

#: Design points of the DLF rows: the held-out images only, or those plus one augmented copy of each.
IMAGE_DESIGNS = ("images", "augment")
#: Optional extra rows of the image benchmark.
IMAGE_ABLATIONS = ("design",)

_TEACHER_LR = 2e-3
_DIVERGENCE_LABELS = {"forward_kl": "forward KL", "reverse_kl": "reverse KL", "js": "JS", "tv": "TV"}


@dataclass
class ImagesBenchConfig:
    """Settings of one image benchmark run (the defaults are the documented protocol).

    ``dataset="digits"`` runs on scikit-learn's 8×8 digits with uniform-noise
    images as the OOD set (for fast checks of the pipeline, not of the method).
    """

    data_dir: Optional[str] = None
    dataset: str = "mnist"
    teachers: int = 5
    teacher_channels: tuple = (16, 32)
    teacher_width: int = 64
    teacher_epochs: int = 2
    student_channels: tuple = (8, 16)
    student_width: int = 32
    student_epochs: int = 30
    design_size: Optional[int] = None
    num_factors: int = 8
    full_num_factors: Optional[int] = None
    dlf_covariance: str = "full"
    dlf_iterations: int = 26
    dlf_lr: float = 3e-3
    mmd_steps: int = 300
    batch_size: int = 128
    shift_sizes: tuple = (10, 50, 100, 500, 1000)
    shift_seeds: int = 5
    head_prior_variance: float = 5.0
    design: str = "augment"
    augment_families: tuple = IMAGE_FAMILIES
    augment_strength: float = 1.0
    ablations: tuple = ()
    shift_test_size: Optional[int] = None
    rotation_degrees: tuple = ROTATION_DEGREES
    noise_stds: tuple = NOISE_STDS
    seed: int = 0
    output_dir: str = "benchmarks/results"
    cache_dir: Optional[str] = "benchmarks/cache"
    name: str = "images"
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


@dataclass
class _Data:
    image: ImageData
    x_teacher: Tensor
    y_teacher: Tensor
    x_design: Tensor
    y_design: Tensor
    x_ood: Tensor
    ood_name: str


def _design_size(config: ImagesBenchConfig) -> int:
    """``design_size``, or by default 10,000 images (MNIST, Fashion-MNIST) or 500 (digits)."""
    if config.design_size is not None:
        return config.design_size
    return 500 if config.dataset == "digits" else 10000


def _shift_test_size(config: ImagesBenchConfig) -> int:
    """``shift_test_size``, or by default 2,000 test images (MNIST, Fashion-MNIST) or 200 (digits)."""
    if config.shift_test_size is not None:
        return config.shift_test_size
    return 200 if config.dataset == "digits" else 2000


def _load(config: ImagesBenchConfig) -> _Data:
    if config.dataset == "digits":
        image = load_digits_images(seed=config.seed)
        g = torch.Generator().manual_seed(10_000 + config.seed)
        x_ood, ood_name = torch.rand((image.x_test.shape[0],) + image.image_shape, generator=g), "uniform noise"
    elif config.dataset in ("mnist", "fashion-mnist"):
        if not config.data_dir:
            raise ValueError("data_dir: give --data-dir, the folder holding mnist/ and fashion-mnist/ (e.g. ../shared/data)")
        mnist = load_mnist(os.path.join(config.data_dir, "mnist"))
        fashion = load_fashion_mnist(os.path.join(config.data_dir, "fashion-mnist"))
        image, ood = (mnist, fashion) if config.dataset == "mnist" else (fashion, mnist)
        x_ood, ood_name = ood.x_test, ood.name
    else:
        raise ValueError(f"dataset must be 'mnist', 'fashion-mnist' or 'digits', got {config.dataset!r}")
    n = image.x_train.shape[0]
    design_size = _design_size(config)
    if not (0 < design_size < n):
        raise ValueError(f"design_size must be in (0, {n}) for {image.name}, got {design_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    design, teacher = perm[:design_size], perm[design_size:]
    return _Data(image, image.x_train[teacher], image.y_train[teacher], image.x_train[design], image.y_train[design],
                 x_ood, ood_name)


def _teachers(config: ImagesBenchConfig, data: _Data) -> tuple[ConvEnsemble, float]:
    """Train (or load from the cache) the teacher CNNs; returns them and the fit time (0 when cached)."""
    image = data.image
    teachers = ConvEnsemble(image.image_shape, image.num_classes, config.teachers, config.teacher_channels, config.teacher_width)
    path = None
    if config.cache_dir:
        key = (f"images_{image.name}_s{config.seed}_d{_design_size(config)}_n{config.teachers}_"
               f"{'x'.join(map(str, config.teacher_channels))}w{config.teacher_width}_e{config.teacher_epochs}"
               f"_b{config.batch_size}_lr{_TEACHER_LR:g}.pt")
        path = os.path.join(config.cache_dir, key)
        if os.path.exists(path):
            teachers.load_state_dict(torch.load(path, weights_only=True))
            return teachers, 0.0
    started = time.perf_counter()
    teachers.fit(data.x_teacher, data.y_teacher, epochs=config.teacher_epochs, batch_size=config.batch_size, lr=_TEACHER_LR,
                 seed=1000 + config.seed, progress=config.progress)
    seconds = time.perf_counter() - started
    if path:
        os.makedirs(config.cache_dir, exist_ok=True)
        torch.save(teachers.state_dict(), path)
    return teachers, seconds


def _score(test: ClassificationPrediction, ood: ClassificationPrediction, y_test: Tensor, teacher_mi: Optional[tuple]) -> dict:
    """Every metric of one method from its predictive on the test and OOD sets."""
    probs = test.probs.double()
    probs = probs / probs.sum(-1, keepdim=True)
    row = {
        "accuracy": float(metrics.accuracy(probs, y_test)),
        "nll": float(metrics.categorical_nll(probs.clamp_min(1e-300), y_test)),
        "ece": float(metrics.expected_calibration_error(probs, y_test, num_bins=15)),
        "brier": float(metrics.brier_score(probs, y_test)),
        "auroc_entropy": metrics.auroc(test.total_entropy, ood.total_entropy),
        "mi_test": float(test.mutual_information.mean()),
        "mi_ood": float(ood.mutual_information.mean()),
        # The share of the predictive entropy that is epistemic, over the test set: a ratio of means
        # (a mean of per-input ratios would average round-off where both are ~0).
        "epistemic_share": float(test.mutual_information.double().mean() / test.total_entropy.double().mean()),
    }
    # A single softmax network has MI ≡ 0: its MI-AUROC would be a coin flip, so it is not reported.
    has_mi = bool((test.mutual_information > 0).any() or (ood.mutual_information > 0).any())
    row["auroc_mi"] = metrics.auroc(test.mutual_information, ood.mutual_information) if has_mi else None
    if teacher_mi is not None:
        row["mi_ratio_test"] = row["mi_test"] / teacher_mi[0]
        row["mi_ratio_ood"] = row["mi_ood"] / teacher_mi[1]
    return row


def _check_head_inputs(features: Tensor, labels: Tensor, num_classes: int, prior_variance: float) -> None:
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a float tensor (N, d), got {getattr(features, 'shape', type(features).__name__)}")
    if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.shape != (features.shape[0],):
        raise TypeError(f"labels must be an int64 tensor of shape ({features.shape[0]},)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    if isinstance(prior_variance, bool) or not isinstance(prior_variance, (int, float)) or not prior_variance > 0:
        raise ValueError(f"prior_variance must be a positive number, got {prior_variance!r}")


def _lbfgs(params: list[Tensor], loss_fn: Callable[[], Tensor], max_iter: int) -> None:
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)


def fit_linear_head(features: Tensor, labels: Tensor, num_classes: int, prior_variance: float = 1.0,
                    max_iter: int = 500) -> nn.Linear:
    r"""Multinomial logistic regression on frozen features, the head refitted under distribution shift.

    The MAP estimate under independent Gaussian priors :math:`W_{kl} \sim N(0, s^2/d)`
    and :math:`b_k \sim N(0, s^2)` for ``d`` features: it minimizes

    .. math::

        \frac1N \sum_{j=1}^N -\log \operatorname{softmax}(W h_j + b)_{y_j}
        + \frac{d \lVert W\rVert_F^2 + \lVert b\rVert^2}{2 N s^2}

    by L-BFGS (strong Wolfe line search, at most ``max_iter`` iterations) in
    float64 from zero. With standardized features every logit then has prior
    variance about :math:`2 s^2` whatever ``d``, so bodies with different
    numbers of features are shrunk alike. The prior keeps the problem well
    posed when ``N`` is smaller than ``d``, when classes are separable, and
    when a class is missing from the ``N`` examples (its bias would otherwise
    run to :math:`-\infty`); its weight fades as ``N`` grows.
    """
    _check_head_inputs(features, labels, num_classes, prior_variance)
    h = features.double()
    n, d = h.shape
    head = nn.Linear(d, num_classes).double()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)

    def loss() -> Tensor:
        penalty = (d * head.weight.square().sum() + head.bias.square().sum()) / (2 * n * prior_variance)
        return nn.functional.cross_entropy(head(h), labels) + penalty

    _lbfgs(list(head.parameters()), loss, max_iter)
    return head


def fit_latent_head(mean: Tensor, loading: Tensor, class_factor: Tensor, labels: Tensor, max_iter: int = 500) -> Tensor:
    r"""The DLF's own head under shift (mathematics §6.5): new latent weights ``Z`` with ``μ̂, Φ̂, L̂`` frozen.

    Logits :math:`μ̂(x) + \hat L Z \hat Φ(x)`, :math:`Z \in R^{c×q}`, at the MAP
    under the model's own prior :math:`Z \sim MN(0, I_c, I_q)`:
    minimizes :math:`\frac1N \sum_j -\log\operatorname{softmax}(\cdot)_{y_j} + \lVert Z\rVert_F^2 / (2N)`.

    :param mean: ``μ̂(x_j)``, ``(N, c)``; :param loading: ``Φ̂(x_j)``, ``(N, q)``;
    :param class_factor: ``L̂``, ``(c, c)``. :returns: ``Z``, ``(c, q)``.
    """
    c, q = mean.shape[1], loading.shape[1]
    _check_head_inputs(loading, labels, c, 1.0)
    mu, phi, L = mean.double(), loading.double(), class_factor.double()
    z = torch.zeros(c, q, dtype=torch.float64, requires_grad=True)
    n = mu.shape[0]
    _lbfgs([z], lambda: nn.functional.cross_entropy(mu + phi @ (L @ z).T, labels) + z.square().sum() / (2 * n), max_iter)
    return z.detach()


def _centred_logit_variance(logits: Tensor) -> float:
    """Members' sample variance of the per-input centred logits ``(K, m, c)``, summed over classes, averaged over inputs."""
    t = logits.double()
    t = t - t.mean(-1, keepdim=True)
    return float(t.var(0).sum(-1).mean())


def _logit_variance(dlf, teacher_logits: dict, inputs: dict, centred: bool) -> dict:
    """mathematics §7 fidelity on logits: the DLF's epistemic logit variance summed over classes
    (separable ``tr(L L^T) ‖Φ(x)‖²``, full ``‖Φ(x)‖_F²``) against the teachers' sample variance
    summed over classes, both averaged over the inputs (teachers' logits centred per input when
    the DLF's are), at the test and at the design inputs, and the nugget ``c σ_f²`` on the same scale."""
    out = {}
    with torch.no_grad():
        for where, x in inputs.items():
            variance = _batched(lambda xb: dlf.function_variance(xb).sum(-1))(x).double()
            t = teacher_logits[where].double()
            if centred:
                t = t - t.mean(-1, keepdim=True)
            student, teacher = float(variance.mean()), float(t.var(0).sum(-1).mean())
            suffix = "" if where == "test" else f"_{where}"
            out.update({f"logit_variance_student{suffix}": student, f"logit_variance_teachers{suffix}": teacher,
                        f"logit_variance_ratio{suffix}": student / teacher})
        out["logit_nugget"] = float(dlf.noise_variance) * teacher_logits["test"].shape[-1]
    return out


def class_covariance_concentration(teacher_logits: Tensor) -> dict:
    r"""How input-specific the teachers' disagreement is, from their centred logits ``(n, m, c)``.

    With :math:`Σ(x)` the teachers' sample class covariance at input ``x`` and
    :math:`\bar Σ` its mean over inputs: the share of :math:`\operatorname{tr} Σ(x)`
    on its leading one and two eigen-directions (averaged over inputs), the same
    shares for :math:`\bar Σ`, and the *cover ratio* -- the smallest total variance
    :math:`s(x)\operatorname{tr}P` of a covariance :math:`s(x) P` with one shared shape
    :math:`P = \bar Σ/\operatorname{tr}\bar Σ` that dominates every :math:`Σ(x)`
    (:math:`s(x) = λ_{\max}(P^{-1/2} Σ(x) P^{-1/2})`), over :math:`\operatorname{tr} Σ(x)`,
    both averaged over inputs. A separable DLF has one class covariance for all
    inputs; a cover ratio well above 1 says it must overstate the spread to
    cover each input's own directions.
    """
    f = teacher_logits.double()
    r = f - f.mean(-1, keepdim=True)
    r = r - r.mean(0)
    per_input = torch.einsum("imc,imd->mcd", r, r) / (r.shape[0] - 1)
    ev = torch.linalg.eigvalsh(per_input)
    total = ev.sum(-1).clamp_min(1e-300)
    pooled = per_input.mean(0)
    pev = torch.linalg.eigvalsh(pooled)
    w, V = torch.linalg.eigh(pooled / pooled.trace())
    keep = w > 1e-9 * w.max()  # centred logits: the all-ones direction carries nothing
    root = V[:, keep] @ torch.diag(w[keep].rsqrt()) @ V[:, keep].T
    cover = torch.linalg.eigvalsh(root @ per_input @ root)[:, -1]
    return {"per_input_top1_share": float((ev[:, -1] / total).mean()), "per_input_top2_share": float((ev[:, -2:].sum(-1) / total).mean()),
            "pooled_top1_share": float(pev[-1] / pev.sum()), "pooled_top2_share": float(pev[-2:].sum() / pev.sum()),
            "cover_ratio": float(cover.mean() / total.mean())}


def _dlf_predict(student, x: Tensor, batch_size: int = 1024) -> ClassificationPrediction:
    """The DLF's predictive as the library computes it by default: the fixed integration rule over the factors."""
    parts = [student.predict(x[start:start + batch_size]) for start in range(0, x.shape[0], batch_size)]
    return ClassificationPrediction(*(torch.cat([getattr(p, k) for p in parts]) for k in (
        "probs", "total_entropy", "expected_entropy", "mutual_information")), None)


def _dlf_predict_draws(student, x: Tensor, num_samples: int, batch_size: int = 256) -> ClassificationPrediction:
    """The Monte Carlo predictive: ``S`` draws of ``Z`` shared across inputs, entropies in float64."""
    generator_state = torch.random.get_rng_state()
    parts = []
    for start in range(0, x.shape[0], batch_size):
        # Same Z draws for every batch: the function draws stay coherent across inputs.
        torch.random.set_rng_state(generator_state)
        logits = student.predict(x[start:start + batch_size], num_samples, return_samples=True).logit_samples
        probs = logits.double().softmax(-1)
        parts.append((probs.mean(0), *metrics.entropy_decomposition(probs)))
    return ClassificationPrediction(*(torch.cat([p[i] for p in parts]) for i in range(4)), None)


#: Draws of the Monte Carlo reference the default integration rule is checked against.
_REFERENCE_DRAWS = 10_000


def _integration_check(student, x_test: Tensor, y_test: Tensor, x_ood: Tensor, default: dict) -> dict:
    """The default rule's scores minus those of ``S = 10⁴`` draws (NLL, ECE, AUROC by entropy and by MI)."""
    torch.manual_seed(0)
    reference = _score(_dlf_predict_draws(student, x_test, _REFERENCE_DRAWS), _dlf_predict_draws(student, x_ood, _REFERENCE_DRAWS),
                       y_test, None)
    return {"reference_draws": _REFERENCE_DRAWS, "rule": student.integration_rule().name,
            **{f"{key}_difference": default[key] - reference[key] for key in ("nll", "ece", "auroc_entropy", "auroc_mi")}}


def _predictive_cost(student, x: Tensor, num_samples: int = 1000) -> dict:
    """Median seconds of one network forward at ``x``, of the default predictive (fixed rule) and of the
    ``S``-draw predictive (probabilities and the entropy decomposition, draws not kept)."""
    return {"forward_1000_seconds": metrics.time_call(student.dlf.mean_and_loading, x, repeats=3),
            "predictive_rule_1000_seconds": metrics.time_call(student.predict, x, repeats=3),
            "predictive_s1000_1000_seconds": metrics.time_call(
                lambda xb: student.predict(xb, num_samples, return_samples=False), x, repeats=3)}


def _timed(fn: Callable, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def _shift_experiment(config: ImagesBenchConfig, data: _Data, bodies: dict,
                      latent: Optional[tuple[str, Callable[[Tensor], Tensor], Tensor]] = None) -> list[dict]:
    """Head-only refits on MNIST-Flip for every frozen body; one row per (body, N, seed).

    With ``latent = (method, features, L̂)`` of a separable DLF (``features``
    giving its ``(μ̂, Φ̂)``) also that DLF's latent head, as ``"{method} latent head"``.

    The ``N`` flipped examples are drawn (seeded by ``config.seed``, ``N`` and
    the draw, the same draw for every body) from the training images the
    students never saw (the teachers' part).
    """
    image = data.image
    c = image.num_classes
    y_pool, y_test = flip_labels(data.y_teacher, c), flip_labels(image.y_test, c)
    draws = {(n, seed): torch.randperm(data.x_teacher.shape[0], generator=torch.Generator().manual_seed(
        1_000_003 * config.seed + 1000 * n + seed))[:n] for n in config.shift_sizes for seed in range(config.shift_seeds)}
    rows, raw = [], {}

    def add(body: str, n: int, seed: int, probs: Tensor) -> None:
        rows.append({"body": body, "n": n, "seed": seed, "accuracy": float(metrics.accuracy(probs, y_test)),
                     "nll": float(metrics.categorical_nll(probs.clamp_min(1e-300), y_test))})

    for body_name, featurize in bodies.items():
        with torch.no_grad():
            reference = featurize(data.x_design).double()
            loc, scale = reference.mean(0), reference.std(0)
            # A unit (nearly) constant on the design images is only centred: dividing by ~0 would blow it up.
            scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))
            raw[body_name] = featurize(data.x_teacher).double(), featurize(image.x_test).double()
            pool, test_features = ((f - loc) / scale for f in raw[body_name])
        for (n, seed), idx in draws.items():
            head = fit_linear_head(pool[idx], y_pool[idx], c, config.head_prior_variance)
            with torch.no_grad():
                add(body_name, n, seed, head(test_features).softmax(-1))
    if latent is not None:
        method, featurize, class_factor = latent
        with torch.no_grad():
            latent_features = featurize(data.x_teacher).double(), featurize(image.x_test).double()
        (mean_pool, loading_pool), (mean_test, loading_test) = (f.split([c, f.shape[1] - c], -1) for f in latent_features)
        L = class_factor.detach()
        for (n, seed), idx in draws.items():
            z = fit_latent_head(mean_pool[idx], loading_pool[idx], L, y_pool[idx])
            with torch.no_grad():
                add(f"{method} latent head", n, seed, (mean_test + loading_test @ (L.double() @ z).T).softmax(-1))
    return rows


def _batched(fn: Callable[[Tensor], Tensor], batch_size: int = 1024) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        return torch.cat([fn(x[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)])
    return run


def _check_config(config: ImagesBenchConfig) -> None:
    """One-line errors for bad settings, before any data is loaded or network trained."""
    if config.teachers < 2:
        raise ValueError(f"teachers must be >= 2, got {config.teachers}")
    if config.num_factors < 1 or config.dlf_iterations < 1 or (config.full_num_factors is not None and config.full_num_factors < 1):
        raise ValueError("num_factors, full_num_factors and dlf_iterations must be >= 1")
    if config.dlf_covariance not in ("separable", "full"):
        raise ValueError(f"dlf_covariance must be 'separable' or 'full', got {config.dlf_covariance!r}")
    if any(n < 1 for n in config.shift_sizes) or config.shift_seeds < 1:
        raise ValueError("shift_sizes must be positive and shift_seeds >= 1")
    if config.design not in IMAGE_DESIGNS:
        raise ValueError(f"design must be one of {IMAGE_DESIGNS}, got {config.design!r}")
    unknown = [a for a in config.ablations if a not in IMAGE_ABLATIONS]
    if isinstance(config.ablations, str) or unknown:
        raise ValueError(f"ablations must be a list of names from {IMAGE_ABLATIONS}, got {config.ablations!r}")
    try:
        check_image_families(config.augment_families, IMAGE_FAMILIES, SHIFT_FAMILIES)
        check_strength(config.augment_strength)
    except ValueError as error:  # the augmentation's messages open with its argument's name: name the config field
        raise ValueError(f"augment_{error}") from None
    check_ladder_levels(config.rotation_degrees, config.noise_stds, _shift_test_size(config))


def _design_sets(config: ImagesBenchConfig, data: _Data, teachers: ConvEnsemble, teacher_logits: Tensor) -> dict:
    """``{design: (images, teacher logits there)}`` for every design a row of this run uses.

    ``"augment"``: the held-out images followed by one augmented copy of each (seeded by the data seed).
    """
    designs = {"images": (data.x_design, teacher_logits)}
    if config.design == "augment" or "design" in config.ablations:
        generator = torch.Generator().manual_seed(20_000 + config.seed)
        extra = augment_images(data.x_design, 1, families=tuple(config.augment_families), strength=config.augment_strength,
                               generator=generator)
        designs["augment"] = (torch.cat([data.x_design, extra]), torch.cat([teacher_logits, teachers.member_logits(extra)], 1))
    return designs


def _plan(config: ImagesBenchConfig) -> tuple[list[tuple[str, str, str]], dict]:
    """The student rows as ``(method, kind, design)``, and each DLF row's ``(covariance, centred, projected)``."""
    other = "separable" if config.dlf_covariance == "full" else "full"
    dlf = {"DLF": (config.dlf_covariance, True, None), f"DLF {other}": (other, True, None),
           "DLF uncentred logits": (config.dlf_covariance, False, None), "DLF full, loadings not projected": ("full", True, False)}
    plan = ([("single CNN", "single CNN", "images")] + [(f"KD ({_DIVERGENCE_LABELS[d]})", d, "images") for d in DIVERGENCES]
            + [(m, m, "images") for m in ("small-Ens", "Hydra", "BE", "Proxy-EnD²")]
            + [(m, "DLF", config.design) for m in dlf] + [("DLF + nugget", "nugget", config.design)])
    if "design" in config.ablations:
        plan += [(f"{m}, augmented design", m, "augment") for m in ("small-Ens", "Hydra", "BE")]
        name, design = ("DLF, held-out images only", "images") if config.design == "augment" else ("DLF, augmented design", "augment")
        plan.append((name, "DLF", design))
        dlf[name] = dlf["DLF"]
    return plan, dlf


def _fit_rival(kind: str, x: Tensor, logits: Tensor, y: Tensor, config: ImagesBenchConfig, image: ImageData):
    """One non-DLF student (``kind``: a rival's name or an f-divergence for one-to-one KD) and its fit seconds."""
    shape, c, k = image.image_shape, image.num_classes, config.teachers
    student = (config.student_channels, config.student_width)
    common = dict(epochs=config.student_epochs, batch_size=config.batch_size, seed=config.seed, progress=config.progress)
    log_probs = logits.log_softmax(-1)
    if kind == "single CNN":
        return _timed(ConvEnsemble(shape, c, 1, *student).fit, x, y, lr=1e-3, **common)
    if kind in DIVERGENCES:
        mean_log_probs = (log_probs.logsumexp(0) - math.log(k)).unsqueeze(0)
        return _timed(ConvEnsemble(shape, c, 1, *student).distill, x, mean_log_probs, divergence=kind, **common)
    if kind == "Proxy-EnD²":
        return _timed(DirichletClassifier(shape, c, *student).distill, x, log_probs, **common)
    cls = {"small-Ens": ConvEnsemble, "Hydra": HydraClassifier, "BE": BatchEnsembleClassifier}[kind]
    return _timed(cls(shape, c, k, *student).distill, x, log_probs, **common)


def _fit_dlf(x: Tensor, logits: Tensor, settings: tuple, config: ImagesBenchConfig, image: ImageData):
    """One DLF on design points ``x`` with the teachers' ``logits`` there, and its fit seconds."""
    covariance, centred, projected = settings
    shape = image.image_shape
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        body = ConvBody(shape[0], shape[1:], config.student_channels, config.student_width)
    full_q = config.full_num_factors or config.teachers - 1
    return _timed(
        distill, x, logits, num_factors=full_q if covariance == "full" else config.num_factors,
        covariance=covariance, centered_loadings=projected, body=body,
        body_features=config.student_width, num_iterations=config.dlf_iterations, batch_size=config.batch_size,
        lr=config.dlf_lr, mmd_steps=config.mmd_steps, center_logits=centred, seed=config.seed,
        progress=config.progress)


def _design_summary(config: ImagesBenchConfig, designs: dict, image: ImageData) -> dict:
    """What the result records about the design points: the DLF's design, sizes, families, strength, magnitudes."""
    summary = {"dlf": config.design, "held_out_images": int(designs["images"][0].shape[0]),
               "families": list(config.augment_families), "strength": float(config.augment_strength),
               "magnitudes": {f: m for f, m in augmentation_magnitudes(config.augment_strength, image.image_shape[1:]).items()
                              if f in config.augment_families},
               "excluded": ["rotation", "additive Gaussian noise"]}
    if "augment" in designs:
        summary["augmented_points"] = int(designs["augment"][0].shape[0])
    return summary


def run_images_benchmark(config: ImagesBenchConfig) -> dict:
    """Teachers, every student, the metrics, the shift ladder and the MNIST-Flip experiment; returns the result dictionary."""
    _check_config(config)
    torch.manual_seed(config.seed)
    started = time.time()
    data = _load(config)
    image = data.image
    x_design, x_test, x_ood, y_test = data.x_design, image.x_test, data.x_ood, image.y_test
    x1000 = x_test[:1000]
    teachers, teacher_seconds = _teachers(config, data)
    teacher_logits = teachers.member_logits(x_design)
    teacher_test_logits = teachers.member_logits(x_test)
    designs = _design_sets(config, data, teachers, teacher_logits)
    ladder = ShiftLadder.build(x_test, y_test, _shift_test_size(config), config.rotation_degrees, config.noise_stds, config.seed)

    rows, reliability, bodies, ladder_rows, shift_class_factor, default_dlf = [], {}, {}, [], None, None
    teacher_mi = None
    teacher_variance = _centred_logit_variance(teacher_test_logits)

    def record(method: str, model_predict: Callable[[Tensor], ClassificationPrediction], params: int, seconds: float,
               test: Optional[ClassificationPrediction] = None, member_logits: Optional[Callable[[Tensor], Tensor]] = None,
               design: Optional[str] = None) -> None:
        nonlocal teacher_mi
        test = model_predict(x_test) if test is None else test
        ood = model_predict(x_ood)
        row = {"method": method, **_score(test, ood, y_test, teacher_mi), "parameters": params, "fit_seconds": seconds,
               "predict_1000_seconds": metrics.time_call(model_predict, x1000, repeats=3)}
        if design is not None:
            row.update({"design": design, "design_points": int(designs[design][0].shape[0])})
        if member_logits is not None:
            # Students made of members (small-Ens, Hydra, BE): their spread of centred logits against the teachers'.
            student_variance = _centred_logit_variance(member_logits(x_test))
            row.update({"logit_variance_student": student_variance, "logit_variance_teachers": teacher_variance,
                        "logit_variance_ratio": student_variance / teacher_variance})
        if teacher_mi is None:
            teacher_mi = (row["mi_test"], row["mi_ood"])
            row["mi_ratio_test"] = row["mi_ratio_ood"] = 1.0
        rows.append(row)
        reliability[method] = metrics.reliability_bins(test.probs.double(), y_test)
        ladder_rows.extend(ladder.evaluate(method, model_predict))

    # The teachers' test logits are already at hand: their predictive on the test set reuses them.
    record("teacher ensemble", teachers.predict, metrics.count_parameters(teachers), teacher_seconds,
           test=prediction_from_probs(teacher_test_logits.double().softmax(-1)))

    plan, dlf_settings = _plan(config)
    for method, kind, design in progress_bar(plan, desc="students", enabled=config.progress, leave=True):
        x_fit, logits_fit = designs[design]
        if kind == "nugget":
            # The default DLF's fit, predicting new teachers: the nugget σ_f² (teacher variation outside
            # the q factors) joins the epistemic logit variance. No refit.
            model = default_dlf
            model.include_nugget = True
            record(method, lambda x, s=model: _dlf_predict(s, x), metrics.count_parameters(model), 0.0, design=design)
            fit = next(row for row in rows if row["method"] == "DLF")  # its variances, measured once
            student_variance = fit["logit_variance_student"] + fit["logit_nugget"]
            rows[-1].update({"logit_variance_student": student_variance, "logit_variance_teachers": fit["logit_variance_teachers"],
                             "logit_variance_ratio": student_variance / fit["logit_variance_teachers"]})
            model.include_nugget = False
            continue
        if kind == "DLF":
            covariance, centred, _ = dlf_settings[method]
            model, seconds = _fit_dlf(x_fit, logits_fit, dlf_settings[method], config, image)
            dlf = model.dlf

            def features(x: Tensor, dlf=dlf) -> Tensor:
                mean, loading = dlf.mean_and_loading(x)
                return torch.cat([mean, loading.flatten(1)], -1)

            if method == "DLF":
                bodies["DLF"] = _batched(features)
                default_dlf = model
            if centred and covariance == "separable" and design == config.design:
                shift_class_factor = (method, _batched(features), dlf.class_factor)
            record(method, lambda x, s=model: _dlf_predict(s, x), metrics.count_parameters(model), seconds, design=design)
            rows[-1].update({"covariance": covariance, "num_factors": dlf.num_factors, "final_nll_per_scalar": model.history[-1]})
            rows[-1].update(_logit_variance(dlf, {"test": teacher_test_logits, "design": logits_fit},
                                            {"test": x_test, "design": x_fit}, centred))
            rows[-1].update(_predictive_cost(model, x1000))
            if method == "DLF":
                rows[-1]["integration_check"] = _integration_check(model, x_test, y_test, x_ood, rows[-1])
            continue
        model, seconds = _fit_rival(kind, x_fit, logits_fit, data.y_design, config, image)
        if method == "single CNN":
            # Everything the frozen network computes before a new head: its features and its logits.
            bodies["single CNN"] = _batched(lambda x, net=model.members[0]: torch.cat([net[0](x), net(x)], -1))
        elif method == "Hydra":
            bodies["Hydra"] = _batched(lambda x, net=model.net: torch.cat([net[0](x), net(x)], -1))
        ensemble_like = kind in ("small-Ens", "Hydra", "BE")
        record(method, model.predict, metrics.count_parameters(model), seconds,
               member_logits=model.evaluate if ensemble_like else None, design=design)

    shift_rows = _shift_experiment(config, data, bodies, shift_class_factor)
    return {
        "benchmark": "images",
        "command": config.command,
        "seeds": [config.seed],
        "config": asdict(config),
        "data": {"dataset": image.name, "ood": data.ood_name, "teacher_images": int(data.x_teacher.shape[0]),
                 "design_images": int(x_design.shape[0]), "test_images": int(x_test.shape[0]),
                 "ood_images": int(x_ood.shape[0]), "shift_ladder_images": int(ladder.x.shape[0])},
        "design": _design_summary(config, designs, image),
        "rows": rows,
        "teacher_disagreement": class_covariance_concentration(teacher_logits),
        "reliability": reliability,
        "shift": shift_rows,
        "shift_ladder": ladder_rows,
        "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "wall_seconds": time.time() - started,
    }


_COLUMNS = (("accuracy", "acc", "{:.4f}"), ("nll", "NLL", "{:.4f}"), ("ece", "ECE", "{:.4f}"), ("brier", "Brier", "{:.4f}"),
            ("auroc_entropy", "AUROC H", "{:.4f}"), ("auroc_mi", "AUROC MI", "{:.4f}"),
            ("epistemic_share", "epist. share", "{:.3f}"), ("mi_ratio_ood", "MI ratio OOD", "{:.2f}"))


def _shift_summary(shift_rows: list[dict]) -> dict:
    """``{body: {n: (acc mean, acc SE, nll mean, nll SE, seeds)}}``."""
    out: dict = {}
    for row in shift_rows:
        out.setdefault(row["body"], {}).setdefault(row["n"], []).append((row["accuracy"], row["nll"]))
    summary: dict = {}
    for body, by_n in out.items():
        summary[body] = {}
        for n, values in sorted(by_n.items()):
            t = torch.tensor(values, dtype=torch.float64)
            se = t.std(0) / math.sqrt(len(values)) if len(values) > 1 else torch.full((2,), float("nan"))
            summary[body][n] = (float(t[:, 0].mean()), float(se[0]), float(t[:, 1].mean()), float(se[1]), len(values))
    return summary


def merge_images_results(results: list[dict]) -> dict:
    """One result from runs of the image benchmark on different data seeds.

    Rows (matched by ``method``, in the first run's order) become means over
    the runs, with the standard errors of the table's metrics and of the
    logit-variance ratio under ``row["se"]``; ``runs`` keeps every run's own
    rows, command and wall time. Shift rows are pooled (each tagged with its
    ``data_seed``); the shift-ladder rows become means with standard errors
    (:func:`~pyro_dlf_bench.harness.image_shift.merge_ladder`); reliability bins are
    pooled by their counts. The runs must
    share everything but the seed (same dataset and settings).
    """
    if not results:
        raise ValueError("results: give at least one image benchmark result")
    if any(r.get("benchmark") != "images" for r in results):
        raise ValueError("results: every input must be an image benchmark result (benchmark = 'images')")
    first = results[0]
    seeds = [s for r in results for s in r.get("seeds", [r["config"]["seed"]])]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"results: data seeds repeat ({seeds}); merge runs of different seeds")
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in ("seed", "command", "name", "progress", "output_dir", "cache_dir")}  # noqa: E731
    for r in results[1:]:
        if strip(r["config"]) != strip(first["config"]):
            diff = sorted(k for k in strip(first["config"]) if strip(r["config"]).get(k) != first["config"].get(k))
            raise ValueError(f"results: the runs differ in settings other than the seed ({', '.join(diff)}); merge like with like")
    runs = [run for r in results for run in r.get("runs", [r])]
    methods = [row["method"] for row in first["rows"]]
    se_keys = [key for key, _, _ in _COLUMNS] + ["logit_variance_ratio"]
    rows = []
    for method in methods:
        per_run = [next((row for row in run["rows"] if row["method"] == method), None) for run in runs]
        if any(row is None for row in per_run):
            raise ValueError(f"results: method {method!r} is missing from some runs")
        merged, se = {}, {}
        for key, value in per_run[0].items():
            values = [row.get(key) for row in per_run]
            if all(v == value for v in values):
                merged[key] = value  # the same in every run (a setting such as num_factors): kept as it is
                if key in se_keys and isinstance(value, (int, float)) and len(values) > 1:
                    se[key] = 0.0
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and all(isinstance(v, (int, float)) for v in values):
                merged[key], error = metrics.mean_and_standard_error([float(v) for v in values])
                if key in se_keys and error is not None:
                    se[key] = error
            else:
                merged[key] = value
        merged["parameters"] = per_run[0]["parameters"]
        merged["se"] = se
        rows.append(merged)
    reliability = {}
    for method in first["reliability"]:
        bins = [run["reliability"][method] for run in runs]
        count = torch.tensor([b["count"] for b in bins], dtype=torch.float64)
        total = count.sum(0)
        pooled = {key: ((torch.tensor([b[key] for b in bins], dtype=torch.float64) * count).sum(0) / total.clamp_min(1)).tolist()
                  for key in ("confidence", "accuracy")}
        reliability[method] = {**pooled, "count": total.tolist()}
    shift = [{**row, "data_seed": row.get("data_seed", run["config"]["seed"])} for run in runs for row in run["shift"]]
    disagreement = {key: metrics.mean_and_standard_error([run["teacher_disagreement"][key] for run in runs])[0] for key in first["teacher_disagreement"]}
    merged_result = {
        "benchmark": "images", "command": [run["command"] for run in runs], "seeds": seeds, "config": first["config"],
        "data": first["data"], "rows": rows, "teacher_disagreement": disagreement, "reliability": reliability, "shift": shift,
        "versions": first["versions"], "machine": first["machine"], "wall_seconds": sum(run["wall_seconds"] for run in runs),
        "runs": [{key: run[key] for key in ("command", "config", "rows", "shift", "shift_ladder", "reliability",
                                            "teacher_disagreement", "wall_seconds", "machine") if key in run}
                 | {"seeds": run.get("seeds", [run["config"]["seed"]])} for run in runs],
    }
    if "design" in first:
        merged_result["design"] = first["design"]
    if all("shift_ladder" in run for run in runs):
        merged_result["shift_ladder"] = merge_ladder([run["shift_ladder"] for run in runs])
    return merged_result


def _targets(result: dict, shift: dict) -> list[str]:
    rows = {r["method"]: r for r in result["rows"]}
    dlf, teach = rows.get("DLF"), rows.get("teacher ensemble")
    if dlf is None or teach is None:
        return ["(no DLF row)"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = []
    rivals = [m for m in ("small-Ens", "Hydra", "BE", "Proxy-EnD²") if m in rows]
    ok = all(dlf["nll"] <= rows[m]["nll"] for m in rivals)
    lines.append(f"- DLF NLL ≤ small-Ens, Hydra, BE, Proxy-EnD²: {verdict(ok)} (DLF {dlf['nll']:.4f}; "
                 + ", ".join(f"{m} {rows[m]['nll']:.4f}" for m in rivals) + ")")
    if "Hydra" in rows:
        lines.append(f"- DLF ECE ≤ Hydra's: {verdict(dlf['ece'] <= rows['Hydra']['ece'])} "
                     f"(DLF {dlf['ece']:.4f}, Hydra {rows['Hydra']['ece']:.4f})")
    for key, label, share in (("auroc_entropy", "total entropy", 0.98), ("auroc_mi", "mutual information", 0.97)):
        if dlf.get(key) is not None and teach.get(key) is not None:
            lines.append(f"- OOD AUROC ({label}) ≥ {share} × teachers': {verdict(dlf[key] >= share * teach[key])} "
                         f"(DLF {dlf[key]:.4f}, teachers {teach[key]:.4f}, ratio {dlf[key] / teach[key]:.3f})")
    if "logit_variance_ratio" in dlf:
        ratio = dlf["logit_variance_ratio"]
        lines.append(f"- epistemic logit-variance ratio at the test inputs in [0.8, 1.25]: {verdict(0.8 <= ratio <= 1.25)} "
                     f"(DLF {ratio:.2f})")
    cost = _cost_ratios(result, "DLF")
    if cost is not None:
        ok = cost["rule_over_forward"] <= 2 and cost["ensemble_over_rule"] >= 5
        lines.append(f"- DLF predictive ≤ 2× one student forward and ≥ 5× cheaper than the teachers: {verdict(ok)} "
                     f"({cost['rule_over_forward']:.2f}× the forward; teachers {cost['ensemble_over_rule']:.1f}× the DLF; "
                     f"ratios within each run, mean of {cost['runs']})")
    checks = _integration_checks(result)
    if checks:
        ok = all(max(abs(c["nll_difference"]), abs(c["ece_difference"])) <= 1e-3
                 and max(abs(c["auroc_entropy_difference"]), abs(c["auroc_mi_difference"])) <= 2e-3 for c in checks)
        lines.append(f"- default rule within 0.001 (NLL, ECE) and 0.002 (AUROC) of S = {checks[0]['reference_draws']:,} draws: "
                     f"{verdict(ok)} ({len(checks)} run(s) checked)")
    students = {m: r["accuracy"] for m, r in rows.items() if m != "teacher ensemble" and not m.startswith("DLF")}
    if students:
        best = max(students, key=students.get)
        lines.append(f"- DLF accuracy ≥ the best other student's: {verdict(dlf['accuracy'] >= students[best])} "
                     f"(DLF {dlf['accuracy']:.4f}, {best} {students[best]:.4f})")
    if "DLF" in shift:
        small = sorted(shift["DLF"])[:2]
        for n in small:
            others = {b: shift[b][n][0] for b in ("single CNN", "Hydra") if b in shift and n in shift[b]}
            ok = all(shift["DLF"][n][0] > v for v in others.values())
            lines.append(f"- shift, N = {n}: DLF accuracy above plain CNN and Hydra: {verdict(ok)} (DLF {shift['DLF'][n][0]:.4f}; "
                         + ", ".join(f"{b} {v:.4f}" for b, v in others.items()) + ")")
    return lines


def _cost_ratios(result: dict, method: str) -> Optional[dict]:
    """The predictive's cost ratios of ``method``, each taken within one run (one machine state) and
    averaged over the runs that timed the fixed rule; ``None`` if none did."""
    ratios = []
    for run in result.get("runs", [result]):
        rows = {r["method"]: r for r in run["rows"]}
        row, teachers = rows.get(method), rows.get("teacher ensemble")
        if row is None or teachers is None or "predictive_rule_1000_seconds" not in row:
            continue
        forward, rule = row["forward_1000_seconds"], row["predictive_rule_1000_seconds"]
        ratios.append((rule / forward, row["predictive_s1000_1000_seconds"] / forward, teachers["predict_1000_seconds"] / rule,
                       forward, rule, row["predictive_s1000_1000_seconds"]))
    if not ratios:
        return None
    mean = [sum(values) / len(values) for values in zip(*ratios)]
    return dict(zip(("rule_over_forward", "draws_over_forward", "ensemble_over_rule", "forward", "rule", "draws"), mean),
                runs=len(ratios))


def _cost_lines(result: dict) -> list[str]:
    """The predictive-cost table and the default rule's accuracy against many draws."""
    methods = [r["method"] for r in result["rows"] if "forward_1000_seconds" in r]
    if not methods:
        return []
    threads = result["machine"]["torch_threads"]
    lines = ["", f"Predictive cost on 1,000 test images (median of 3; {threads} CPU thread(s)): one forward of the student network "
             "(μ and Φ); the default predictive (the fixed integration rule over the factors, mathematics §6.1); the "
             "S = 1,000-draw predictive (probabilities, entropies; draws not kept). Ratios within each run (the teacher "
             "ensemble's predictive over the default's in the last column), averaged over the runs that timed the rule.", "",
             "| method | runs | forward (ms) | default rule (ms) | S = 1000 (ms) | rule / forward | S = 1000 / forward | ensemble / rule |",
             "|---|---|---|---|---|---|---|---|"]
    for method in methods:
        c = _cost_ratios(result, method)
        if c is None:  # runs before the fixed rule
            row = next(r for r in result["rows"] if r["method"] == method)
            fwd, draws = row["forward_1000_seconds"], row["predictive_s1000_1000_seconds"]
            lines.append(f"| {method} | – | {1e3 * fwd:.1f} | – | {1e3 * draws:.1f} | – | {draws / fwd:.1f} | – |")
            continue
        lines.append(f"| {method} | {c['runs']} | {1e3 * c['forward']:.1f} | {1e3 * c['rule']:.1f} | {1e3 * c['draws']:.1f} | "
                     f"{c['rule_over_forward']:.2f} | {c['draws_over_forward']:.1f} | {c['ensemble_over_rule']:.1f} |")
    for check in _integration_checks(result):
        lines += ["", f"The default rule ({check['rule']}) against S = {check['reference_draws']:,} draws, `DLF` row, data seed "
                  f"{check['seed']}: NLL {check['nll_difference']:+.1e}, ECE {check['ece_difference']:+.1e}, "
                  f"AUROC H {check['auroc_entropy_difference']:+.1e}, AUROC MI {check['auroc_mi_difference']:+.1e} (rule − draws)."]
    return lines


def _integration_checks(result: dict) -> list[dict]:
    """The `DLF` row's check of the default rule against many draws, one per run that made it (with its seed)."""
    return [{**row["integration_check"], "seed": run["config"]["seed"]} for run in result.get("runs", [result])
            for row in run["rows"] if row["method"] == "DLF" and "integration_check" in row]


def _design_lines(result: dict) -> list[str]:
    """The report's account of the design points: which rows used which, the augmentation families and strength."""
    design = result.get("design")
    if design is None:
        return []
    n = design["held_out_images"]
    if design["dlf"] == "augment":
        dlf = (f"the {n} held-out images plus one label-free augmented copy of each ({design['augmented_points']} points), "
               "the teachers' logits evaluated there (no labels needed)")
    else:
        dlf = f"the {n} held-out images only"
    lines = ["## Design points", "",
             f"DLF rows: {dlf}. The other students (single CNN, KD, small-Ens, Hydra, BE, Proxy-EnD²) are fitted on the {n} "
             "held-out images (the single CNN needs their labels)."]
    if "augmented_points" in design:
        lines[-1] += (f" Augmentation (strength {design['strength']:g}, one family drawn per image): "
                      + "; ".join(f"{family}: {text}" for family, text in design["magnitudes"].items())
                      + ". Rotation and additive Gaussian noise are not among the families: they are the shifts of the "
                        "shift ladder below.")
    if "design" in result["config"].get("ablations", ()):
        other = "DLF, held-out images only" if design["dlf"] == "augment" else "DLF, augmented design"
        lines[-1] += (" Ablation rows: small-Ens, Hydra and BE distilled from the teachers' logits on the augmented design "
                      f"points ('…, augmented design'), and '{other}': together with the default rows they separate what "
                      "the design gives from what the model gives.")
    return lines + [""]


def _ladder_lines(result: dict, name: str) -> list[str]:
    """The report's shift-ladder section: setup, target lines, NLL tables per family and the PNGs."""
    ladder = result.get("shift_ladder")
    if not ladder:
        return []
    config, seeds = result["config"], result.get("seeds", [result["config"]["seed"]])
    scores = {r["method"]: r["auroc_score"] for r in ladder}
    entropy_only = [m for m, score in scores.items() if score == "total entropy"]
    families = list(dict.fromkeys(r["family"] for r in ladder))
    return [
        "## Distribution shift ladder: rotation and Gaussian noise (Ovadia et al., 2019)", "",
        f"{result['data']['shift_ladder_images']} test images (a seeded subset) rotated by "
        f"{', '.join(f'{d:g}' for d in config['rotation_degrees'])} degrees about the centre (bilinear, zero fill), and with "
        f"additive Gaussian noise of std {', '.join(f'{v:g}' for v in config['noise_stds'])} (clipped to [0, 1], one noise "
        "draw for every level); scored for the teachers and every student after the fits. Epistemic AUROC: the shifted "
        "images against the same images unshifted, scored by mutual information"
        + (f", or by total entropy for the methods without members ({', '.join(entropy_only)})" if entropy_only else "")
        + ". Neither shift is among the design augmentations."
        + (f" Mean ± standard error over {len(seeds)} data seeds." if len(seeds) > 1 else ""), "",
        *ladder_targets(ladder), "",
        *ladder_tables(ladder, "nll"),
        *[line for family in families for line in (f"![{family}]({name}_ladder_{family}.png)", "")],
    ]


def write_images_report(result: dict, output_dir: str, name: str = "images") -> tuple[str, str]:
    """Write ``{name}.json``, ``{name}.md`` and the PNGs (reliability diagrams, AUROC bars, MNIST-Flip
    curves, one shift-ladder figure per family)."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    with open(json_path, "w") as fh:
        json.dump(result, fh, indent=1)
    config, data, machine = result["config"], result["data"], result["machine"]
    shift = _shift_summary(result["shift"])
    seeds = result.get("seeds", [config["seed"]])
    commands = result["command"] if isinstance(result["command"], list) else [result["command"]]
    if len(seeds) > 1:
        repeats = (f"Mean ± standard error over {len(seeds)} data seeds ({', '.join(map(str, seeds))}: each seed its own "
                   "teacher/design split, teachers and students); every seed's rows are in the JSON file.")
    else:
        repeats = "One data seed: the figures are one run, not a mean over repeats."
    lines = [
        f"# Image classification benchmark ({name})", "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands) + "  ",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}, torch {result['versions']['torch']} "
        f"({machine['torch_threads']} threads), pyro_dlf {result['versions']['pyro_dlf']}; wall time {result['wall_seconds'] / 60:.1f} min.  ",
        f"Data: {data['dataset']}: {data['teacher_images']} training images for the teachers, {data['design_images']} held-out "
        f"training images as design points ({'see Design points' if 'design' in result else 'for every student'}), "
        f"{data['test_images']} test images; OOD set: {data['ood']} "
        f"({data['ood_images']} images).  ",
        f"Teachers: {config['teachers']} CNNs (channels {config['teacher_channels']}, width {config['teacher_width']}, "
        f"{config['teacher_epochs']} epochs). Students: CNN body channels {config['student_channels']}, width "
        f"{config['student_width']}, {config['student_epochs']} epochs; DLF (`DLF` row: {config.get('dlf_covariance', 'separable')} "
        f"class covariance) {config['dlf_iterations']} EM iterations after {config['mmd_steps']} MMD steps; q = "
        f"{config['num_factors']} (separable), {config.get('full_num_factors') or config['teachers'] - 1} (full).", "",
        f"{repeats} AUROC H / MI: out-of-distribution detection "
        "by total entropy / mutual information; epist. share: mean MI / mean total entropy on the test set; MI ratio OOD: "
        "mean MI on the OOD set relative to the teachers'; logit var.: the epistemic variance of the centred logits "
        "(summed over classes) at the test inputs over the teachers'. Single networks have MI = 0 (AUROC MI not defined).", "",
        "## Targets", "", *_targets(result, shift), "",
        *_design_lines(result),
        "## Results", "",
        "| method | " + " | ".join(label for _, label, _ in _COLUMNS) + " | design | params | fit (s) | predict 1000 (ms) |",
        "|" + "---|" * (len(_COLUMNS) + 5),
    ]
    for row in result["rows"]:
        se = row.get("se", {})
        cells = ["–" if row.get(key) is None else fmt.format(row[key]) + (f" ± {fmt.format(se[key])}" if key in se else "")
                 for key, _, fmt in _COLUMNS]
        cells.append(f"{row['design']} ({row['design_points']})" if "design" in row else "–")
        cells += [str(row["parameters"]), f"{row['fit_seconds']:.0f}", f"{1e3 * row['predict_1000_seconds']:.1f}"]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Teacher fit time 0 means the fitted teachers came from the cache; predict 1000: the method's whole "
              "predictive on 1,000 test images (the DLF's: its default predictive, the fixed integration rule; runs made before "
              "the rule existed drew 1,000 times with float64 entropies).", ""]
    for row in result["rows"]:
        if "final_nll_per_scalar" in row:
            lines.append(f"- {row['method']} ({row['covariance']}, q = {row['num_factors']}): epistemic logit variance at "
                         f"the test inputs {row['logit_variance_student']:.3g} against the teachers' "
                         f"{row['logit_variance_teachers']:.3g} (ratio {row['logit_variance_ratio']:.2f}; at the design points "
                         f"{row['logit_variance_ratio_design']:.2f}); nugget c·σ_f² = {row['logit_nugget']:.3g}; final EM "
                         f"negative log-likelihood per scalar {row['final_nll_per_scalar']:.4f}.")
        elif "logit_variance_ratio" in row:
            lines.append(f"- {row['method']}: variance of its members' centred logits at the test inputs "
                         f"{row['logit_variance_student']:.3g} against the teachers' {row['logit_variance_teachers']:.3g} "
                         f"(ratio {row['logit_variance_ratio']:.2f}).")
    lines += _cost_lines(result)
    if "teacher_disagreement" in result:
        t = result["teacher_disagreement"]
        lines += ["", f"Teachers' disagreement at the design points (centred logits): per input, the leading direction of "
                  f"the class covariance holds {t['per_input_top1_share']:.0%} of it and the leading two "
                  f"{t['per_input_top2_share']:.0%}; pooled over inputs {t['pooled_top1_share']:.0%} and "
                  f"{t['pooled_top2_share']:.0%}. One class-covariance shape covering every input's covariance needs "
                  f"{t['cover_ratio']:.1f}× the teachers' total variance (cover ratio)."]
    lines += ["",
              f"![reliability]({name}_reliability.png)", "", f"![auroc]({name}_auroc.png)", "",
              "## Distribution shift: MNIST-Flip (y → 9 − y), head-only refit on a frozen body", "",
              f"Mean ± SE over {config['shift_seeds']} draws of the N flipped training examples"
              + (f" in each of {len(seeds)} data seeds, pooled" if len(seeds) > 1 else "") + "; flipped test set.", "",
              "| body | " + " | ".join(f"N = {n}" for n in config["shift_sizes"]) + " |",
              "|" + "---|" * (len(config["shift_sizes"]) + 1)]
    for metric, index in (("accuracy", 0), ("NLL", 2)):
        for body, by_n in shift.items():
            cells = [f"{by_n[n][index]:.4f} ± {by_n[n][index + 1]:.4f}" for n in config["shift_sizes"] if n in by_n]
            lines.append(f"| {body} ({metric}) | " + " | ".join(cells) + " |")
    lines += ["", f"![shift]({name}_shift.png)", "", *_ladder_lines(result, name)]
    md_path = os.path.join(output_dir, f"{name}.md")
    with open(md_path, "w") as fh:
        fh.write("\n".join(lines))
    _plots(output_dir, name, result, shift)
    return json_path, md_path


def _plots(output_dir: str, name: str, result: dict, shift: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["reliability"])
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(methods) / cols), cols, figsize=(3.2 * cols, 3.0 * math.ceil(len(methods) / cols)),
                             squeeze=False)
    for ax, method in zip(axes.flat, methods):
        rel = result["reliability"][method]
        keep = [i for i, n in enumerate(rel["count"]) if n > 0]
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
        ax.plot([rel["confidence"][i] for i in keep], [rel["accuracy"][i] for i in keep], marker="o", ms=3)
        ece = next(r["ece"] for r in result["rows"] if r["method"] == method)
        ax.set_title(f"{method}\nECE {ece:.4f}", fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.supxlabel("confidence"), fig.supylabel("accuracy")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, f"{name}_reliability.png"), dpi=110)
    plt.close(fig)

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["auroc_entropy"] for r in rows], width=0.4, label="total entropy")
    ax.bar([x + 0.2 for x in xs], [r["auroc_mi"] or 0.0 for r in rows], width=0.4, label="mutual information")
    ax.set_xticks(list(xs), [r["method"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("OOD AUROC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, f"{name}_auroc.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for body, by_n in shift.items():
        ns = sorted(by_n)
        for ax, index, label in ((axes[0], 0, "accuracy"), (axes[1], 2, "NLL")):
            ax.errorbar(ns, [by_n[n][index] for n in ns], yerr=[0 if math.isnan(by_n[n][index + 1]) else by_n[n][index + 1] for n in ns],
                        marker="o", capsize=3, label=body)
            ax.set_xscale("log"), ax.set_xlabel("flipped training examples N"), ax.set_ylabel(f"flipped test {label}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, f"{name}_shift.png"), dpi=110)
    plt.close(fig)
    if result.get("shift_ladder"):
        plot_ladder(result["shift_ladder"], output_dir, name)
