r"""One call from a teacher ensemble to a distilled student."""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pyro.optim
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_dlf._validation import (cast_inputs, check_design_points, check_held_out, check_loading_hidden, check_magnitude, check_num_factors,
                                  check_teacher_values, check_training_length)
from pyro_dlf.calibration import calibrate_spread
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.heteroscedastic import fit_heteroscedastic_noise
from pyro_dlf.infer.em import EM
from pyro_dlf.infer.mmd import mmd_initialize
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.noise import FACTOR_NOISE_TEST_LEVEL, fit_inverse_gamma, fit_noise_given_factors
from pyro_dlf.selection import BODY_FAMILY, TRAINING_FAMILY, predictive_log_score, select_hidden
from pyro_dlf.student import Student
from pyro_dlf.sufficient_statistics import observed_count

__all__ = ["distill", "evaluate_teachers", "scheduled_adam"]

TeacherOutputs = Union[Tensor, Sequence[Callable[[Tensor], Tensor]]]


def evaluate_teachers(teachers: Sequence[Callable[[Tensor], Tensor]], x: Tensor, batch_size: int = 1024) -> Tensor:
    """Evaluate callables on the design points in batches: ``(n, m)`` or ``(n, m, c)``.

    Each callable maps ``(b, ...)`` inputs to ``(b,)``, ``(b, 1)`` or ``(b, c)``
    outputs; it runs under :func:`torch.no_grad`, and an :class:`torch.nn.Module`
    in eval mode (so dropout teachers give one function, not a new draw per
    evaluation), restored to its mode afterwards.
    """
    if len(teachers) == 0:
        raise ValueError("teacher_outputs is an empty list: give at least 2 teachers")
    outputs = []
    with torch.no_grad():
        for i, teacher in enumerate(teachers):
            if not callable(teacher):
                raise TypeError(f"teacher_outputs[{i}] is a {type(teacher).__name__}, not a callable; pass a tensor or a list of callables")
            # A module is evaluated in eval mode (dropout off, batch-norm statistics frozen), then put back.
            training = isinstance(teacher, nn.Module) and teacher.training
            if training:
                teacher.eval()
            try:
                parts = [torch.as_tensor(teacher(x[s:s + batch_size])) for s in range(0, x.shape[0], batch_size)]
            finally:
                if training:
                    teacher.train()
            out = torch.cat(parts)
            if out.shape[0] != x.shape[0]:
                raise ValueError(f"teacher_outputs[{i}] returned {out.shape[0]} rows for {x.shape[0]} design points")
            if out.dim() == 2 and out.shape[1] == 1:
                out = out.squeeze(1)
            outputs.append(out)
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"teacher_outputs: the teachers returned different shapes {sorted(shapes)}")
    return torch.stack(outputs)


def _standardize_stats(t: Tensor, dim) -> tuple[Tensor, Tensor]:
    loc = t.mean(dim)
    scale = t.std(dim)
    # A constant column has no spread to standardize; leave it unscaled.
    return loc, torch.where(scale > 1e-8, scale, torch.ones_like(scale))


def distill(
    x_design: Tensor,
    teacher_outputs: TeacherOutputs,
    *,
    num_factors: int,
    teacher_noise_variances: Optional[Tensor] = None,
    observed: Optional[Tensor] = None,
    held_out: Optional[Tensor] = None,
    task: Optional[str] = None,
    covariance: Optional[str] = None,
    centered_loadings: Optional[bool] = None,
    hidden: Union[Sequence[int], Sequence[Sequence[int]], str] = (50,),
    validation_fraction: float = 0.2,
    training_length: Union[float, str] = 1.0,
    loading_hidden: Optional[Sequence[int]] = None,
    body: Optional[nn.Module] = None,
    body_features: Optional[int] = None,
    activation: str = "ReLU",
    num_iterations: int = 100,
    num_m_steps: Optional[int] = None,
    batch_size: int = 256,
    lr: float = 1e-2,
    lr_decay: float = 0.1,
    warmup: float = 0.1,
    estep: str = "exact",
    init: str = "mmd",
    mmd_steps: int = 500,
    mmd_penalty: float = 1.0,
    center_logits: bool = True,
    include_nugget: bool = False,
    noise_given_factors: Union[bool, str] = False,
    teacher_batch_size: int = 1024,
    seed: int = 0,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> Student:
    r"""Distill a teacher ensemble into a deep latent factor student (Gaussian distillation).

    Fits a :class:`~pyro_dlf.models.DeepLatentFactor` by maximum likelihood:
    MMD-penalized initialization (SPEC §5), then ``num_iterations`` exact EM
    iterations (SPEC §4), and wraps it as a :class:`~pyro_dlf.student.Student`.

    :param x_design: design points (the transfer set), ``(m, ...)``. Held-out
        data from the training distribution works best; more points help.
    :param teacher_outputs: ``(n, m)`` values (regression), ``(n, m, c)`` logits
        (classification), or a list of ``n`` callables evaluated on
        ``x_design`` in batches of ``teacher_batch_size``.
    :param num_factors: ``q``; at most ``n − 1`` is identified (warns otherwise).
    :param teacher_noise_variances: regression only: each teacher's noise
        variance ``σ²_{ε,i}`` (``n`` positive values); an inverse gamma is fitted
        to them by maximum likelihood and drives the aleatoric part of the
        predictive (SPEC §2). Heteroscedastic teachers (a deep ensemble whose
        members predict a mean and a variance): each teacher's variance at each
        design point, ``(n, m)``; a log-normal law whose location is a small
        network of x is fitted to them by maximum likelihood
        (:mod:`pyro_dlf.heteroscedastic`) and the predictive draws
        ``σ²_{(s)}(x)`` from it (SPEC §6).
    :param observed: regression only: ``(n, m)`` booleans, where each teacher's
        value counts (e.g. out-of-fold values: teachers trained on K folds,
        each observed only on the design points it was not trained on). Exact
        EM then runs each teacher's E-step on its observed points (SPEC §4);
        values elsewhere are ignored and may be NaN.
    :param held_out: regression with one output only: ``(n, m)`` booleans, true
        where teacher ``i`` did not train on design point ``j`` (e.g. the 10 %
        of training rows each ensemble member held out to estimate its noise).
        After the fit, the loadings are rescaled once so that the student's
        epistemic variance ``‖Φ(x)‖²``, averaged over those points, equals the
        teachers' pooled spread among their held-out values there -- the spread
        a new input meets, which the teachers' values at their own training
        inputs understate (:func:`pyro_dlf.calibration.calibrate_spread`;
        ``student.spread_calibration`` records it). No labels are used. Default:
        no calibration, the maximum-likelihood fit (SPEC §3--§4).
    :param task: ``"regression"`` or ``"classification"``; inferred from the shape
        (``(n, m, c)`` is read as logits: pass ``task="regression"`` for teachers
        with several regression outputs, which get a multivariate DLF -- with
        ``covariance="full"`` a ``d×d`` output covariance per input -- and an
        inverse gamma per output when ``teacher_noise_variances`` is ``(n, d)``).
    :param covariance: the output covariance of a multivariate student
        (classification; default ``"full"``, chosen by the numbers: on MNIST and
        Fashion-MNIST its maximum-likelihood fit has the higher likelihood of the
        teachers' logits at the design points -- no test data -- and the better
        NLL, ECE and OOD detection, ``benchmarks/results/images.md``; the paper's
        model is ``"separable"``).
        ``"separable"``: ``Cov(f_j(x), f_k(x')) = Φ(x)^T Φ(x') (L L^T)_{jk}``,
        one class covariance shape for every input (``c + q`` outputs; ``q`` up
        to ``(n − 1)·c`` identified). ``"full"``: ``Φ(x) ∈ R^{c×q}``, so every
        input has its own class covariance ``Φ(x) Φ(x)^T`` (``c + c·q``
        outputs; ``q ≤ n − 1``). Teachers that disagree along different class
        directions at different inputs need ``"full"``; a separable fit must
        then overstate the spread to cover every input with one shape.
    :param centered_loadings: full covariance only: project the loadings onto
        the classes' zero-sum subspace (default: when ``center_logits``, since
        centred teacher logits carry nothing along the all-ones direction).
    :param hidden: hidden widths of the default MLP body (inputs must be 2-D);
        or several candidates (e.g. ``[(50,), (100, 100)]``), or ``"auto"`` for
        :data:`pyro_dlf.selection.BODY_FAMILY` (1 or 2 layers of 50 or 100):
        each candidate is distilled on a random ``1 − validation_fraction`` of
        the design points and scored at the rest -- regression teachers with
        one noise variance each by the ensemble-predictive log score (the
        expected log density of each teacher's noisy outputs under the
        student's predictive), others by the exact marginal likelihood of the
        teachers' values; the smallest body within one standard
        error of the best is refitted on all design points
        (:func:`pyro_dlf.selection.select_hidden`; ``student.body_selection``
        records the comparison).
    :param validation_fraction: share of the design points held out to choose the body
        (and the training length).
    :param training_length: the fraction ``ℓ ∈ (0, 1]`` of the schedule to run:
        ``round(ℓ · mmd_steps)`` MMD steps and ``max(1, round(ℓ · num_iterations))`` EM
        iterations (the step-size schedule spans the shortened run). ``"auto"``
        chooses it from :data:`pyro_dlf.selection.TRAINING_FAMILY` (1, 0.35, 0.15)
        on the same held-out design points as the body (early stopping; with one
        ``hidden``, only the length is compared): the simplest candidate -- fewest
        parameters, then shortest training -- within one standard error of the
        best is refitted on all design points. Teachers that partly memorized
        their labels show that memorization at their own training inputs; a
        student trained long enough learns it there, and it does not carry to
        new inputs (UCI wine, split 0: the whole schedule matches the ensemble
        mean at the design points to 0.02 target standard deviations, a
        seventh of it to 0.32, both are 0.33 from it at the test inputs, and
        the long fit's test RMSE is the worse); held-out design points see
        the cost. Default 1: the whole schedule, the maximum-likelihood fit
        (SPEC §4).
    :param loading_hidden: hidden widths of a separate MLP body for the factor
        loadings (e.g. ``(50,)``; :class:`~pyro_dlf.models.DeepLatentFactor`); the
        mean head reads both bodies. With ``hidden="auto"`` every candidate body
        gets the same loading body. Why: the wider bodies that the mean needs,
        shared with the loadings, rank inputs beyond the data by ``‖Φ(x)‖²``
        worse than the paper's 1 × 50 body (UCI extrapolation splits, every
        set); a 1 × 50 loading body beside the chosen mean body raised that
        AUROC from 0.82 to 0.92 on concrete and from 0.76 to 0.88 on wine, and
        the held-out score of the teachers' values preferred it on 35 of the 50
        standard splits of the five small sets, though not on naval (2 of 10),
        where it costs the mean (``benchmarks/results/uci_loading_body.md``).
        Default ``None``: one body for both heads, the paper's network; the UCI
        benchmark's ``DLF`` row and ``pyro-dlf demo`` use ``(50,)`` with
        ``hidden="auto"``.
    :param body: a custom body module ``(m, ...) → (m, body_features)``.
    :param num_iterations: EM iterations.
    :param num_m_steps: gradient steps per iteration (default: one pass over the design points).
    :param batch_size: design points per minibatch.
    :param lr: Adam step size, decayed geometrically to ``lr · lr_decay`` over the EM run.
    :param warmup: fraction of the EM iterations over which the step size ramps
        up linearly. A freshly started Adam moves every weight by about ``lr``
        in its first steps whatever the gradient's size, which throws the
        network off the near-optimum the MMD initialization found; the ramp
        avoids that loss of likelihood.
    :param estep: ``"exact"`` (default) or ``"minibatch"`` (the paper's Algorithm 1).
    :param init: ``"mmd"`` (default) or ``"random"``.
    :param center_logits: classification: subtract each teacher's mean logit
        per input. Softmax ignores a shift common to all classes, so the
        teachers' per-input offsets are nuisance variation that would otherwise
        be spent on factors and inflate the class covariance without changing
        any prediction; centring removes them at the cost of one degenerate
        direction of ``L L^T`` (absorbed by the nugget ``σ_f^2``).
    :param include_nugget: predict new teachers, nugget included (see :class:`~pyro_dlf.student.Student`).
    :param noise_given_factors: regression with one output and one noise variance per
        teacher: let the noise law's scale follow each draw's factors,
        ``σ² | z ~ IG(a, b · u(z)^β)`` with ``u(z) = z^T \hat G z`` the size of the function's
        deviation ``Φ z`` over the design points relative to a typical draw
        (:func:`pyro_dlf.noise.fit_factor_inverse_gamma`; fitted on each teacher's noise
        variance and its posterior expected ``u``). SPEC §2 treats the noise variances as
        i.i.d. draws independent of the functions; that is the ``β = 0`` case, and on some
        data it is clearly wrong: where a teacher's noise variance grows with how far its
        function strays from the others', pairing a far-out function draw with a typical
        noise variance makes the predictive overconfident exactly where it is most
        uncertain. ``"auto"`` keeps SPEC's i.i.d. law unless a likelihood-ratio test on the
        teachers' own variances rejects ``β = 0`` at the 1 % level (a decision from the
        teachers, never from labels); ``True`` always fits ``β``; ``False`` (default) never:
        SPEC's law. The default stays SPEC's because a better law for the teachers' noise
        variances is not a better predictive: the i.i.d. law mixes all of them into a
        heavy-tailed Student-t that covers labels the teachers' own noise does not. On the
        UCI benchmark (``benchmarks/results/uci_noise_law.md``) the law lowered the test
        NLL on naval, on every split (−5.243 to −5.361 nats, the ensemble −5.520), but
        ``"auto"`` also adopted it on yacht, energy and Boston, where it raised the NLL
        (by 0.18, 0.02 and 0.03 nats); pass ``True`` where the teachers' noise is known to
        follow their disagreement. ``student.noise_fit`` records the fit and the test when
        one is made (``None`` otherwise).
    :param seed: seeds the network initialization, the minibatch order and the codes.
    :returns: the fitted student; ``student.history`` holds the negative log
        marginal likelihood per observed scalar at each EM iteration (before any
        calibration), ``student.spread_calibration`` the
        :class:`~pyro_dlf.calibration.SpreadCalibration` (or ``None``); the scale
        itself lives in the loading weights, so a saved student keeps it.
    """
    call = {k: v for k, v in locals().items() if k not in ("x_design", "teacher_outputs")}
    x = check_design_points(x_design, "x_design", integer_ok=body is not None)
    if device is not None:
        x = x.to(device)
    if isinstance(teacher_outputs, np.ndarray):
        teacher_outputs = torch.from_numpy(np.ascontiguousarray(teacher_outputs))
    if isinstance(observed, np.ndarray):
        observed = torch.from_numpy(observed)
    if isinstance(teacher_outputs, Tensor):
        f = teacher_outputs
    elif isinstance(teacher_outputs, (list, tuple)):
        f = evaluate_teachers(teacher_outputs, x, teacher_batch_size)
    else:
        raise TypeError(f"teacher_outputs must be a tensor or NumPy array (n, m[, c]) or a list of callables, got {type(teacher_outputs).__name__}")
    if task is None:
        task = "classification" if f.dim() == 3 else "regression"
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    if task == "regression" and f.dim() == 3 and f.shape[-1] == 1:
        f = f.squeeze(-1)
    if f.dim() not in (2, 3):
        raise ValueError(f"teacher_outputs must have shape (n, m) or (n, m, c), got {tuple(f.shape)}")
    # Classification logits (n, m, c), or several regression outputs (n, m, d): a multivariate DLF.
    num_outputs = f.shape[-1] if task == "classification" or f.dim() == 3 else None
    if task == "classification" and f.dim() != 3:
        raise ValueError(f"teacher_outputs for classification must be logits of shape (n, m, c), got {tuple(f.shape)}")
    if observed is not None and task != "regression":
        raise ValueError("observed: teachers observed on different design points are supported for regression teachers; drop observed=")
    f = check_teacher_values(f, x, num_outputs, "teacher_outputs", observed=observed)
    if num_outputs is not None and num_outputs < 2:
        raise ValueError(f"teacher_outputs: classification needs at least 2 classes, got {num_outputs}")
    if task == "regression" and centered_loadings:
        raise ValueError("centered_loadings applies to classification logits (centred per input); drop it for regression")
    n = f.shape[0]
    if covariance is None:
        covariance = "full" if task == "classification" else "separable"
    if covariance not in ("separable", "full"):
        raise ValueError(f"covariance must be 'separable' or 'full', got {covariance!r}")
    if task == "regression" and covariance != "separable" and num_outputs is None:
        raise ValueError("covariance='full' is an output-covariance structure for (n, m, c) teachers; drop it for one regression output")
    if centered_loadings is None:
        centered_loadings = covariance == "full" and task == "classification" and center_logits
    elif centered_loadings and covariance != "full":
        raise ValueError("centered_loadings=True applies to covariance='full' only")
    # Centred logits sum to zero over classes: each teacher then gives only c − 1 free columns.
    centred = task == "classification" and center_logits
    check_num_factors(num_factors, n, None if num_outputs is None else num_outputs - (1 if centred else 0), covariance)
    if noise_given_factors not in (True, False, "auto"):
        raise ValueError(f"noise_given_factors must be 'auto', True or False, got {noise_given_factors!r}")
    if held_out is not None:
        if task != "regression" or num_outputs is not None:
            raise ValueError("held_out: spread calibration is for teachers with one regression output; drop held_out=")
        held_out = check_held_out(torch.from_numpy(held_out) if isinstance(held_out, np.ndarray) else held_out, f)
        if observed is not None and bool((held_out & ~observed).any()):
            raise ValueError("held_out marks values that observed leaves out; mark as held out only observed values")
    if observed is not None and num_outputs is not None:
        raise ValueError("observed: masks are supported for one regression output; drop observed= for (n, m, d) teachers")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    check_magnitude(x, dtype, "x_design")
    check_magnitude(f if observed is None else f[observed], dtype, "teacher_outputs")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    candidates = _hidden_candidates(hidden)
    lengths = check_training_length(training_length, TRAINING_FAMILY)
    loading_hidden = check_loading_hidden(loading_hidden, body is not None)
    for name, value in [("num_iterations", num_iterations), ("batch_size", batch_size), ("mmd_steps", mmd_steps)]:
        if not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'batch_size' else 'non-negative'} int, got {value!r}")
    if init not in ("mmd", "random"):
        raise ValueError(f"init must be 'mmd' or 'random', got {init!r}")
    if not (0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    if not (0 <= warmup <= 1):
        raise ValueError(f"warmup must be a fraction in [0, 1], got {warmup!r}")
    if not (0 < lr_decay <= 1):
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")

    if candidates is None and len(lengths) > 1:
        if body is not None:
            raise ValueError("training_length='auto' compares held-out fits of the default MLP body; pass a fraction with body=")
        candidates = [tuple(hidden)]  # one body: only the training length is compared
    if candidates is not None:
        if body is not None:
            raise ValueError("hidden: choosing among bodies works for the default MLP body; pass one hidden= with body=, or drop body=")
        m_all = x.shape[0]

        def fit(xs: Tensor, fs: Tensor, widths: tuple[int, ...], mask: Optional[Tensor], idx: Tensor, length: float) -> Student:
            # Candidates are compared as fitted; the chosen body is calibrated after its refit.
            options = {**call, "hidden": widths, "training_length": length, "progress": False, "observed": mask, "held_out": None}
            noise = teacher_noise_variances
            if noise is not None and getattr(noise, "ndim", 0) == 2 and noise.shape[1] == m_all and num_outputs is None:
                options["teacher_noise_variances"] = noise[:, idx]  # heteroscedastic: the fitting part's columns
            return distill(xs, fs, **options)

        scalar_noise = None
        if task == "regression" and num_outputs is None and teacher_noise_variances is not None:
            v_sel = torch.as_tensor(np.asarray(teacher_noise_variances) if isinstance(teacher_noise_variances, np.ndarray)
                                    else teacher_noise_variances, dtype=torch.float64)
            if v_sel.dim() == 1 and v_sel.numel() == f.shape[0]:
                scalar_noise = v_sel

        def score(student: Student, xs: Tensor, fs: Tensor, mask: Optional[Tensor]) -> Tensor:
            if scalar_noise is not None:
                # Regression: the ensemble-predictive log score (see pyro_dlf.selection).
                return predictive_log_score(student, xs, fs, scalar_noise, mask)
            if student.centered_logits:
                fs = fs - fs.mean(-1, keepdim=True)
            dtype_ = student.dlf.loading_head.weight.dtype
            if mask is None:
                return student.dlf.log_marginal_likelihood(xs.to(dtype_), fs.to(dtype_)) / fs[0].numel()
            # A teacher with no observed validation point has no score (NaN; left out of the comparison).
            seen = mask.any(1)
            ll = torch.full((fs.shape[0],), float("nan"), dtype=torch.float64)
            ll[seen] = student.dlf.log_marginal_likelihood(xs.to(dtype_), fs[seen].to(dtype_), observed=mask[seen]) / mask[seen].sum(1)
            return ll

        selection = select_hidden(x, f, candidates, fit, score, validation_fraction=validation_fraction, seed=seed,
                                  observed=observed, lengths=lengths)
        hidden, length = selection.chosen, selection.chosen_length
    else:
        selection, length = None, lengths[0]
    # The schedule actually run: a fraction of the MMD steps and of the EM iterations.
    mmd_steps = int(round(length * mmd_steps))
    num_iterations = max(1, int(round(length * num_iterations)))

    noise_prior, noise_model, iid_warnings = (None, None), None, []
    if task == "regression":
        if teacher_noise_variances is None:
            raise ValueError("teacher_noise_variances: regression needs each teacher's noise variance (n positive values), e.g. its held-out mean squared error")
        v = torch.as_tensor(np.asarray(teacher_noise_variances) if isinstance(teacher_noise_variances, np.ndarray)
                            else teacher_noise_variances, dtype=torch.float64)
        if num_outputs is not None:
            # Several outputs: one inverse gamma for all of them (n,), or one per output (n, d).
            if v.dim() == 2 and tuple(v.shape) == (n, num_outputs):
                fits = [fit_inverse_gamma(v[:, k]) for k in range(num_outputs)]
                noise_prior = (tuple(a for a, _ in fits), tuple(b for _, b in fits))
            elif v.dim() == 1 and v.numel() == n:
                noise_prior = fit_inverse_gamma(v)
            else:
                raise ValueError(f"teacher_noise_variances: give one variance per teacher ({n},) or per teacher and output "
                                 f"({n}, {num_outputs}) for (n, m, d) teachers, got {tuple(v.shape)}")
        elif v.dim() == 2:
            # Heteroscedastic teachers: each one's variance at each design point (SPEC §6).
            noise_model = fit_heteroscedastic_noise(x.to(dtype), v.to(x.device), observed=observed,
                                                    hidden=hidden if isinstance(hidden, tuple) and hidden and body is None else (50,),
                                                    seed=seed)
        else:
            v = v.reshape(-1)
            if v.numel() != n:
                raise ValueError(f"teacher_noise_variances has {v.numel()} values for {n} teachers")
            # Its warnings (a heavy tail) are said once the law is decided: the factor law may replace it.
            with warnings.catch_warnings(record=True) as iid_warnings:
                warnings.simplefilter("always")
                noise_prior = fit_inverse_gamma(v)
    else:
        if teacher_noise_variances is not None:
            raise ValueError("teacher_noise_variances is for regression teachers; classification teachers give logits only (drop the argument)")
        if center_logits:
            f = f - f.mean(-1, keepdim=True)

    f = f.to(dtype=dtype, device=x.device)
    f_values = f  # before placeholders fill unobserved entries (the calibration reads held-out values)
    x = cast_inputs(x, dtype)
    if observed is not None:
        observed = observed.to(f.device)
        # Unobserved entries are placeholders (never read by the algebra); keep them finite.
        f = torch.where(observed, f, f[observed].mean())
    # Seed this fit without touching the caller's random state (network initialization draws from it).
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        if body is None and x.dim() != 2:
            raise ValueError(f"x_design has shape {tuple(x.shape)}: the default MLP body needs (m, d) inputs; pass body= and body_features= for other inputs")
        model = DeepLatentFactor(
            x.shape[1] if body is None else None, num_factors, hidden, num_outputs,
            body=body, body_features=body_features, activation=activation,
            covariance=covariance if num_outputs is not None else "separable", centered_loadings=bool(centered_loadings),
            loading_hidden=loading_hidden,
        ).to(dtype=dtype, device=x.device)
        with torch.no_grad():
            if body is None:
                model.input_loc, model.input_scale = _standardize_stats(x, 0)
            values = f if observed is None else f[observed]  # the observed values only
            loc, _ = _standardize_stats(values, tuple(range(values.dim() - (f.dim() - 2))))
            model.output_loc.copy_(loc)
            model.output_scale.copy_(values.std().clamp_min(1e-8))
        model.set_noise_variance(0.1 * float(values.var()))
        if body is not None:
            # A wrong body_features would otherwise surface as a matmul shape error.
            with torch.no_grad():
                probe = model.body(x[:1])
            if probe.dim() != 2 or probe.shape[1] != model.body_features:
                raise ValueError(f"body_features={body_features} but body maps x_design[:1] to shape {tuple(probe.shape)}; pass body_features={probe.shape[-1]}")

        m = x.shape[0]
        steps = num_m_steps if num_m_steps is not None else math.ceil(m / min(batch_size, m))
        with warnings.catch_warnings():
            # check_num_factors warned above; the inner calls would repeat it.
            warnings.filterwarnings("ignore", message=r"num_factors=\d+ (>= number of teachers|exceeds)")
            history = _fit(model, x, f, init, mmd_steps, mmd_penalty, lr, lr_decay, warmup, batch_size, steps,
                           num_iterations, estep, generator, progress, observed)
    _warn_if_diverged(model, x, values, history, lr)
    student = Student(model, task, *noise_prior, centered_logits=task == "classification" and center_logits,
                      include_nugget=include_nugget, noise_model=noise_model)
    student.history = history
    student.noise_fit = None
    if task == "regression" and noise_model is None and num_outputs is None and noise_given_factors is not False:
        student.noise_fit = fit_noise_given_factors(model, x, f, v, observed, batch_size)
        if noise_given_factors is True or student.noise_fit.p_value < FACTOR_NOISE_TEST_LEVEL:
            fit_ = student.noise_fit
            student.set_noise_law(fit_.concentration, fit_.rate, fit_.exponent, fit_.gram)
            iid_warnings = []
    for caught in iid_warnings:
        warnings.warn(caught.message, caught.category, stacklevel=2)
    student.body_selection = selection
    student.spread_calibration = None
    if held_out is not None:
        calibrate_spread(student, x, f_values, held_out.to(f_values.device))
    return student


def _warn_if_diverged(model: DeepLatentFactor, x: Tensor, values: Tensor, history: list[float], lr: float) -> None:
    """Say so when the fit went wrong instead of returning a student that silently reports nonsense.

    Signs: a non-finite likelihood; a likelihood worse at the end of EM than at
    its start by more than a nat per observed value (each iteration of exact EM
    should not lose likelihood, up to minibatch noise); or an epistemic variance at the design points a hundred
    times the teachers' total spread (a maximum-likelihood fit matches the
    teachers' second moments).
    """
    with torch.no_grad():
        spread = float(values.double().var())
        variance = float(torch.cat([model.loading(x[s:s + 4096]).double().pow(2).flatten(1).sum(1)
                                    for s in range(0, x.shape[0], 4096)]).mean())
    finite = all(math.isfinite(h) for h in history) and math.isfinite(variance)
    # A loss of a whole nat per observed value is far beyond minibatch noise (fits differ by hundredths).
    worse = history[-1] > history[0] + 1.0
    if not finite or worse or variance > 100 * max(spread, 1e-300) * (model.num_outputs or 1):
        warnings.warn(
            f"distill: the fit looks diverged (negative log-likelihood per value {history[0]:.4g} at the start of EM, "
            f"{history[-1]:.4g} at the end; epistemic variance at the design points {variance:.3g} against the teachers' "
            f"spread {spread:.3g}); lower lr (now {lr:g}) or raise num_iterations", RuntimeWarning, stacklevel=3)


def _hidden_candidates(hidden) -> Optional[list[tuple[int, ...]]]:
    """``None`` for one body's widths; the candidate list for ``"auto"`` or a list of width tuples."""
    if isinstance(hidden, str):
        if hidden != "auto":
            raise ValueError(f"hidden must be widths such as (50,), a list of candidates, or 'auto', got {hidden!r}")
        return [tuple(c) for c in BODY_FAMILY]
    if isinstance(hidden, int) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of widths such as (50,), got {hidden!r}")
    if len(hidden) and all(isinstance(h, Sequence) and not isinstance(h, str) for h in hidden):
        return [tuple(h) for h in hidden]
    return None


def scheduled_adam(lr: float, lr_decay: float, warmup: float, num_iterations: int) -> pyro.optim.PyroLRScheduler:
    """Adam (gradient norm clipped at 10) whose step size ramps up linearly over the first
    ``warmup · num_iterations`` scheduler steps, then decays geometrically to ``lr · lr_decay``.

    Call ``optim.step()`` once per iteration to advance the schedule.
    """
    ramp = max(warmup * num_iterations, 1.0)
    iterations = max(num_iterations, 1)

    def schedule(iteration: int) -> float:
        return min(1.0, (iteration + 1) / ramp) * lr_decay ** (iteration / iterations)

    return pyro.optim.LambdaLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "lr_lambda": schedule}, {"clip_norm": 10.0})


def _fit(model, x, f, init, mmd_steps, mmd_penalty, lr, lr_decay, warmup, batch_size, steps, num_iterations,
         estep, generator, progress, observed=None) -> list[float]:
    """MMD initialization, then EM with a warm-up and geometric decay of Adam's step size."""
    if init == "mmd" and mmd_steps > 0:
        mmd_initialize(model, x, f, num_steps=mmd_steps, penalty=mmd_penalty, lr=lr, batch_size=batch_size,
                       generator=generator, progress=progress, observed=observed)
    optim = scheduled_adam(lr, lr_decay, warmup, num_iterations)
    em = EM(model, ExactFactorPosterior(model), optim, num_m_steps=steps, batch_size=batch_size, estep=estep, generator=generator)
    history = []
    count = observed_count(f, observed)
    bar = tqdm(range(num_iterations), desc="EM", disable=not progress, leave=False)
    for _ in bar:
        history.append(em.step(x, f, observed) / count)
        optim.step()  # advance the learning-rate schedule by one EM iteration
        bar.set_postfix(nll=f"{history[-1]:.4f}")
    history.append(em.evaluate_loss(x, f, observed) / count)
    return history
