r"""One call from a teacher ensemble to a distilled student."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pyro.optim
import torch
from torch import Tensor, nn
from pyro_dlf._progress import progress_bar
from pyro_dlf._validation import (MAX_SEED, cast_inputs, check_choice, check_design_option, check_design_points, check_device, check_flag_or_auto, check_flag, check_float_dtype,
                                  check_held_out, check_int, check_loading_hidden, check_magnitude, check_noise_variances,
                                  check_num_factors, check_num_factors_option, check_num_points, check_real, check_teacher_output,
                                  check_teacher_values, check_training_length, check_value_scale, check_widths)
from pyro_dlf.calibration import calibrate_spread
from pyro_dlf.design.choice import DESIGN_CANDIDATES, DesignChoice, choose_design
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.heteroscedastic import fit_heteroscedastic_noise
from pyro_dlf.infer.em import EM
from pyro_dlf.infer.mmd import mmd_initialize
from pyro_dlf.models.deep_latent_factor import ACTIVATIONS, DeepLatentFactor
from pyro_dlf.noise import FACTOR_NOISE_TEST_LEVEL, HeavyTailWarning, fit_inverse_gamma, fit_noise_given_factors
from pyro_dlf.selection import (BODY_FAMILY, TRAINING_FAMILY, check_selection_size, choose_num_factors, deviation_gram, factor_limit,
                                 minimum_design_points, predictive_log_score, select_hidden)
from pyro_dlf.student import Student
from pyro_dlf.sufficient_statistics import observed_count

__all__ = ["distill", "evaluate_teachers", "scheduled_adam", "DISTANCE_ANCHORS"]

TeacherOutputs = Union[Tensor, Sequence[Callable[[Tensor], Tensor]], Callable[[Tensor], Tensor]]


def evaluate_teachers(teachers: Sequence[Callable[[Tensor], Tensor]], x: Tensor, batch_size: int = 1024,
                      where: str = "x_design rows") -> Tensor:
    """Evaluate callables on the design points in batches: ``(n, m)`` or ``(n, m, c)``.

    ``teachers`` is a list of ``n`` callables, or one callable for the whole
    ensemble that maps ``(b, ...)`` inputs to ``(n, b)`` or ``(n, b, c)``
    values (e.g. a vectorized ensemble).

    Each callable maps ``(b, ...)`` inputs to ``(b,)``, ``(b, 1)`` or ``(b, c)``
    outputs (a tensor, or a NumPy array of real numbers); it runs under
    :func:`torch.no_grad`, and an :class:`torch.nn.Module` in eval mode (so
    dropout teachers give one function, not a new draw per evaluation),
    restored to its mode afterwards.
    """
    batch_size = check_int(batch_size, "batch_size", 1, fix="e.g. batch_size=1024")
    if callable(teachers) and not _is_teacher_list(teachers):
        first: list = []  # every batch must name the teachers (and classes) of the first

        def check_ensemble(out, rows: int) -> Tensor:
            first.append(_ensemble_batch(out, rows, first[0].shape if first else None))
            return first[-1]

        return torch.cat(_in_batches(teachers, x, batch_size, "teacher_outputs", where, check_ensemble), 1)
    if not _is_teacher_list(teachers):
        raise TypeError(f"teacher_outputs must be a list of callables or one callable for the whole ensemble, got {type(teachers).__name__}")
    if len(teachers) == 0:
        raise ValueError("teacher_outputs is an empty list: give at least 2 teachers")
    outputs = []
    for i, teacher in enumerate(teachers):
        if not callable(teacher):
            raise TypeError(f"teacher_outputs[{i}] is a {type(teacher).__name__}, not a callable; pass a tensor or a list of callables")
        out = torch.cat(_in_batches(teacher, x, batch_size, f"teacher_outputs[{i}]", where,
                                    lambda out, rows, i=i: check_teacher_output(out, i, rows)))
        outputs.append(out.squeeze(1) if out.dim() == 2 and out.shape[1] == 1 else out)
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"teacher_outputs: the teachers returned different shapes {sorted(shapes)}")
    return torch.stack(outputs)


def _is_teacher_list(teachers) -> bool:
    """A list of teachers (a list, tuple or ``nn.ModuleList``), as opposed to one callable for the whole ensemble."""
    return isinstance(teachers, (list, tuple, nn.ModuleList))


def _in_batches(fn: Callable, x: Tensor, batch_size: int, label: str, where: str, check: Callable) -> list[Tensor]:
    """``check(fn(x_b), b)`` for each batch ``x_b`` of ``x``, without gradients; a module runs in eval mode (dropout off,
    batch-norm statistics frozen) and is put back. ``fn``'s own error is kept, noted with ``label`` and the rows."""
    training = isinstance(fn, nn.Module) and fn.training
    if training:
        fn.eval()
    parts = []
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                xb = x[s:s + batch_size]
                try:
                    out = fn(xb)
                except Exception as err:
                    err.add_note(f"raised by {label} on {where} {s}..{s + xb.shape[0] - 1}")
                    raise
                parts.append(check(out, xb.shape[0]))
    finally:
        if training:
            fn.train()
    return parts


def _ensemble_batch(out, rows: int, first: Optional[torch.Size]) -> Tensor:
    """One batch of an ensemble callable's output, checked: real floating ``(n, rows[, c])``, shaped as the first batch."""
    if isinstance(out, np.ndarray) and out.dtype.kind == "f":
        out = torch.from_numpy(np.ascontiguousarray(out))
    wanted = f"real floating values (n, {rows}) or (n, {rows}, c), one row per teacher"
    if not isinstance(out, Tensor) or not out.is_floating_point() or out.dim() not in (2, 3) or out.shape[1] != rows:
        got = tuple(out.shape) if isinstance(out, (Tensor, np.ndarray)) else type(out).__name__
        dtype = f" of dtype {out.dtype}" if isinstance(out, (Tensor, np.ndarray)) else ""
        raise ValueError(f"teacher_outputs: the ensemble callable returned {got}{dtype} for a batch of {rows} inputs; it must "
                         f"return {wanted}")
    if first is not None and (out.shape[0], *out.shape[2:]) != (first[0], *first[2:]):
        raise ValueError(f"teacher_outputs: the ensemble callable returned {tuple(out.shape)} after {tuple(first)} on an earlier "
                         "batch; it must return the same teachers (and classes) for every batch")
    return out.detach()


def _standardize_stats(t: Tensor, dim) -> tuple[Tensor, Tensor]:
    loc = t.mean(dim)
    scale = t.std(dim)
    # A constant column -- no spread beyond the rounding of its dtype -- has nothing to standardize; leave it
    # unscaled. The test is relative: inputs of any magnitude (1e-30 or 1e30) with a real spread are standardized.
    resolved = scale > 16 * torch.finfo(t.dtype).eps * loc.abs()
    return loc, torch.where(resolved & (scale > 0), scale, torch.ones_like(scale))


def distill(
    x_design: Tensor,
    teacher_outputs: TeacherOutputs,
    *,
    num_factors: Union[int, str] = "auto",
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
    design: Union[str, Callable[[Tensor, torch.Generator], Tensor]] = "auto",
    distance_feature: Union[bool, str] = "auto",
) -> Student:
    r"""Distill a teacher ensemble into a deep latent factor student (Gaussian distillation).

    Fits a :class:`~pyro_dlf.models.DeepLatentFactor` by maximum likelihood:
    MMD-penalized initialization (mathematics §5), then ``num_iterations`` exact EM
    iterations (mathematics §4), and wraps it as a :class:`~pyro_dlf.student.Student`.

    :param x_design: design points (the transfer set), ``(m, ...)``. Held-out
        data from the training distribution works best; more points help.
    :param teacher_outputs: ``(n, m)`` values (regression), ``(n, m, c)`` logits
        (classification), a list of ``n`` callables, or one callable for the
        whole ensemble returning ``(n, b[, c])`` values, evaluated in batches of
        ``teacher_batch_size``. Callables let ``design`` place points off
        ``x_design``: the teachers need no labels there. They must be
        deterministic (a module is put in eval mode; a callable that draws
        noise gives every evaluation, and so every design candidate, a new draw).
    :param num_factors: ``q``, or ``"auto"`` (default): the smallest ``q`` whose leading principal
        directions of the teachers' centred deviations ``f_i − \bar f`` at the design points explain
        at least 90 % of their spread, clipped to ``1 ≤ q ≤ min(10, n − 2)`` (separable multivariate:
        ``(n − 1)·c′ − 1``, ``c′ = c − 1`` for centred logits) -- from the teachers' values alone, no labels
        (:func:`pyro_dlf.selection.choose_num_factors` gives the reasons for 90 % and 10);
        ``student.num_factors_choice`` records the explained shares and the choice (``None`` for an
        int). An int: at most ``n − 1`` is identified (warns otherwise).
    :param teacher_noise_variances: regression only: each teacher's noise
        variance ``σ²_{ε,i}`` (``n`` positive values); an inverse gamma is fitted
        to them by maximum likelihood and drives the aleatoric part of the
        predictive (mathematics §2). Heteroscedastic teachers (a deep ensemble whose
        members predict a mean and a variance): each teacher's variance at each
        design point, ``(n, m)``; a log-normal law whose location is a small
        network of x is fitted to them by maximum likelihood
        (:mod:`pyro_dlf.heteroscedastic`) and the predictive draws
        ``σ²_{(s)}(x)`` from it (mathematics §6).
    :param observed: regression only: ``(n, m)`` booleans, where each teacher's
        value counts (e.g. out-of-fold values: teachers trained on K folds,
        each observed only on the design points it was not trained on). Exact
        EM then runs each teacher's E-step on its observed points (mathematics §4);
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
        no calibration, the maximum-likelihood fit (mathematics §3--§4).
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
        records the comparison; a progress bar ticks once per candidate fit).
        A comparison needs 5 held-out and 5 fitting design points at least
        (:func:`pyro_dlf.selection.minimum_design_points`: 23 at the default
        ``validation_fraction``); fewer are refused. Each warning of the call
        (from any candidate fit) is said once.
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
        (mathematics §4).
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
        variance and its posterior expected ``u``). mathematics §2 treats the noise variances as
        i.i.d. draws independent of the functions; that is the ``β = 0`` case, and on some
        data it is clearly wrong: where a teacher's noise variance grows with how far its
        function strays from the others', pairing a far-out function draw with a typical
        noise variance makes the predictive overconfident exactly where it is most
        uncertain. ``"auto"`` keeps the i.i.d. law unless a likelihood-ratio test on the
        teachers' own variances rejects ``β = 0`` at the 1 % level (a decision from the
        teachers, never from labels); ``True`` always fits ``β``; ``False`` (default) never:
        the i.i.d. law. The default stays the i.i.d. law because a better law for the teachers' noise
        variances is not a better predictive: the i.i.d. law mixes all of them into a
        heavy-tailed Student-t that covers labels the teachers' own noise does not. On the
        UCI benchmark (``benchmarks/results/uci_noise_law.md``) the law lowered the test
        NLL on naval, on every split (−5.243 to −5.361 nats, the ensemble −5.520), but
        ``"auto"`` also adopted it on yacht, energy and Boston, where it raised the NLL
        (by 0.18, 0.02 and 0.03 nats); pass ``True`` where the teachers' noise is known to
        follow their disagreement. ``student.noise_fit`` records the fit and the test when
        one is made (``None`` otherwise).
    :param seed: a non-negative int; seeds the network initialization, the minibatch order and the codes.
    :param mmd_steps: steps of the MMD-penalized initialization (0: none).
    :param mmd_penalty: its weight ``λ > 0`` (mathematics §5).
    :param activation: the default body's activation, one of :data:`pyro_dlf.models.ACTIVATIONS`.
    :param body_features: the output width of a custom ``body`` (required with it, refused without).
    :param teacher_batch_size: design points per call of a teacher callable.
    :param progress: show progress bars (body selection, MMD initialization, EM); the environment
        variable ``TQDM_DISABLE`` hides them too.
    :param device: where to fit (``None``: where ``x_design`` is); ``"cuda"`` needs
        ``torch.cuda.is_available()``.
    :param dtype: the model's dtype, ``torch.float32`` or ``torch.float64`` (for values whose
        squares overflow or underflow float32).
    :param design: where the teachers are evaluated (mathematics §9). With callable teachers,
        ``x_design`` are the data rows and the design set is built from them:
        ``"given"`` (the rows only), ``"between"`` (plus a mixup point per row),
        ``"around"`` (plus a Gaussian perturbation per row), ``"beyond"`` (plus a
        Gaussian perturbation and an outward probe with reach 0.5 per row), or a
        callable ``design(x, *, generator)`` returning the points to add (e.g.
        :func:`pyro_dlf.design.images.augment_images`). ``"auto"`` (default)
        compares ``given``, ``around`` and ``beyond`` (the last two with and without the
        distance feature) by the
        teachers' held-out values in range, around and beyond the data
        (:func:`pyro_dlf.design.choice.choose_design`; one fit per candidate on
        ``1 − validation_fraction`` of the rows, with the first candidate body),
        then refits on every row. With teacher values (not callables), per-point
        inputs (``observed``, ``held_out``, per-point noise variances) or a custom
        body, ``"auto"`` means ``"given"``. ``student.design_choice`` records the
        design and why (:class:`~pyro_dlf.design.choice.DesignChoice`).
    :param distance_feature: feed the loadings the distance from the data
        (``DISTANCE_ANCHORS`` rows; mathematics §9.3), so that ``‖Φ(x)‖`` can keep
        growing beyond the data, and let the nugget grow with it,
        ``σ_f² (1 + d(x))^β``, its growth kept by the predictive (§9.4). ``"auto"`` (default): with ``design="auto"`` compared
        with and without it (for the designs off the rows) and chosen by the same
        held-out score; with a named design, on when the design reaches off the rows.
    :returns: the fitted student; ``student.history`` holds the negative log
        marginal likelihood per observed scalar at each EM iteration (before any
        calibration), ``student.spread_calibration`` the
        :class:`~pyro_dlf.calibration.SpreadCalibration` (or ``None``); the scale
        itself lives in the loading weights, so a saved student keeps it.
    """
    call = {k: v for k, v in locals().items() if k not in ("x_design", "teacher_outputs")}
    # Every warning of one call is said once: the candidate fits of a body selection would repeat them.
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                student = _distill_with_design(x_design, teacher_outputs, **call)
            except torch.linalg.LinAlgError as err:
                # The data are checked before the fit, so a singular matrix during it means the weights diverged.
                raise ValueError(f"the fit diverged (a covariance became singular: {str(err).splitlines()[0][:80]}); this happens "
                                 f"when the step size is too large: lower lr (now {lr!r}, e.g. lr=1e-2), or pass "
                                 "dtype=torch.float64") from err
    except Exception:
        with contextlib.suppress(Warning):  # under -W error a warning must not replace the error itself
            _say_once(caught)
        raise
    _say_once(caught)
    return student


#: Data rows the distance feature measures from (a random subset when there are more; mathematics §9.3).
DISTANCE_ANCHORS = 256


def _no_design_reason(x, teacher_outputs, design, o: dict) -> Optional[str]:
    """Why no design can be built from ``x`` (``None`` when one can): the teachers must be callables, and
    per-point inputs exist only at the given points."""
    if not (_is_teacher_list(teacher_outputs) or callable(teacher_outputs)):
        return "the teachers are given as values at x_design; pass them as callables so that they can be evaluated off the data"
    for name in ("observed", "held_out"):
        if o[name] is not None:
            return f"{name} marks the given points only"
    noise = o["teacher_noise_variances"]
    if noise is not None and getattr(noise, "ndim", 1) == 2 and len(x) > 0 and noise.shape[1] == len(x):
        return "teacher_noise_variances gives variances at the given points only"
    if not callable(design) and (o["body"] is not None or getattr(x, "ndim", 0) != 2):
        return "the named design sets need (m, d) rows and the default MLP body (pass a callable design= for other inputs)"
    fraction = o["validation_fraction"]
    if design == "auto" and hasattr(x, "shape") and isinstance(fraction, float) and 0 < fraction < 1 and len(x) < minimum_design_points(fraction):
        return (f"{len(x)} rows are too few to hold some out for the choice (at least {minimum_design_points(fraction)} at "
                f"validation_fraction={fraction:g})")
    return None


def _distill_with_design(x_design, teacher_outputs, *, design, distance_feature, **o) -> Student:
    """:func:`_distill` on the design set ``design`` built from the rows ``x_design`` (mathematics §9)."""
    design = check_design_option(design)
    distance_feature = check_flag_or_auto(distance_feature, "distance_feature")
    if distance_feature is True and o["body"] is not None:
        raise ValueError("distance_feature=True measures distances between (m, d) rows: drop it with a custom body")
    reason = _no_design_reason(x_design, teacher_outputs, design, o)
    if reason is not None:
        if design not in ("auto", "given"):
            raise ValueError(f"design={design!r} places points off x_design, but {reason}; pass design='given'")
        choice = DesignChoice("given", None, reason if design == "auto" else "asked for", distance_feature=distance_feature is True,
                              seed=o["seed"])
        student = _distill(x_design, teacher_outputs, **o, distance_anchors=DISTANCE_ANCHORS if choice.distance_feature else None)
        choice.num_data_points = choice.num_design_points = len(x_design)
        student.design_choice = choice
        return student
    x = check_design_points(x_design, "x_design", integer_ok=callable(design))
    check_num_points(x.shape[0], "x_design")
    if o["device"] is not None:
        x = x.to(check_device(o["device"]))
    ensemble = list(teacher_outputs) if _is_teacher_list(teacher_outputs) else teacher_outputs
    # The rows first: a failing teacher is named with the rows it failed on, before any design is built.
    f_rows = evaluate_teachers(ensemble, x, o["teacher_batch_size"])
    teachers = functools.partial(evaluate_teachers, ensemble, batch_size=o["teacher_batch_size"],
                                 where="design points built from x_design, rows")

    def fit(design_x: Tensor, design_f: Tensor, rows: Tensor, feature: bool, options: dict, label: Optional[str] = None) -> Student:
        return _distill(design_x, design_f, **options, distance_anchors=DISTANCE_ANCHORS if feature else None,
                        data_rows=rows if feature else None, candidate=label)

    if design == "auto":
        # Candidates are compared with one body and the whole schedule; the chosen design then gets the caller's options.
        quick = dict(o, hidden=_first_body(o["hidden"]), training_length=1.0, progress=False)
        candidates = DESIGN_CANDIDATES if distance_feature == "auto" else tuple(
            dict.fromkeys((name, reach, distance_feature) for name, reach, _ in DESIGN_CANDIDATES))
        def fit_candidate(dx: Tensor, df: Tensor, rows: Tensor, feature: bool) -> Student:
            return fit(dx, df, rows, feature, quick, f"design choice (distance_feature={feature})")

        choice = choose_design(x, teachers, fit_candidate, candidates=candidates, validation_fraction=o["validation_fraction"],
                               seed=o["seed"], progress=o["progress"])
    else:
        name, reach = ("custom", None) if callable(design) else (design, 0.5 if design == "beyond" else None)
        feature = distance_feature if distance_feature != "auto" else name != "given" and o["body"] is None
        choice = DesignChoice(name, reach, "asked for", distance_feature=feature)
    choice.seed = o["seed"]
    if callable(design):
        added = check_design_points(design(x, generator=torch.Generator().manual_seed(o["seed"] + 1)), "design(x, generator)",
                                    integer_ok=not x.is_floating_point())
        if added.shape[1:] != x.shape[1:] or added.is_floating_point() != x.is_floating_point():
            raise ValueError(f"design: the callable returned points {tuple(added.shape)} of dtype {added.dtype} for rows "
                             f"{tuple(x.shape)} of dtype {x.dtype}; it must return (k, {', '.join(map(str, x.shape[1:]))}) points "
                             "of the rows' kind")
        design_x = torch.cat([x, added.to(x)])
    else:
        design_x = choice.points(x)
    f_design = torch.cat([f_rows, teachers(design_x[len(x):])], 1) if len(design_x) > len(x) else f_rows
    student = fit(design_x, f_design, x, choice.distance_feature, o)
    choice.num_data_points, choice.num_design_points = int(x.shape[0]), int(design_x.shape[0])
    student.design_choice = choice
    return student


def _first_body(hidden):
    """One body for the design comparison: the given widths, or the first candidate of a list or of ``"auto"``."""
    candidates = _hidden_candidates(hidden)
    return hidden if candidates is None else candidates[0]


def _say_once(caught: list) -> None:
    """Re-emit the recorded warnings of one call, each distinct one once, at the caller of :func:`distill`."""
    for category, message in dict.fromkeys((record.category, str(record.message)) for record in caught):
        warnings.warn(message, category, stacklevel=3)


def _check_options(o: dict) -> dict:
    """Every option of :func:`distill` that needs no data, each checked once with its name; returns them normalized."""
    o["num_factors"] = check_num_factors_option(o["num_factors"])
    o["task"] = check_choice(o["task"], "task", ("regression", "classification"), allow_none=True)
    o["covariance"] = check_choice(o["covariance"], "covariance", ("separable", "full"), allow_none=True)
    o["centered_loadings"] = check_flag(o["centered_loadings"], "centered_loadings", allow_none=True)
    o["validation_fraction"] = check_real(o["validation_fraction"], "validation_fraction", 0, 1, high_open=True,
                                          fix="e.g. validation_fraction=0.2")
    if o["body"] is not None and not isinstance(o["body"], nn.Module):
        raise TypeError(f"body must be None (the default MLP body) or a torch.nn.Module, got {o['body']!r}")
    o["body_features"] = check_int(o["body_features"], "body_features", 1, allow_none=True)
    if o["body_features"] is not None and o["body"] is None:
        raise ValueError("body_features is the output width of a custom body: pass body= with it, or drop body_features=")
    if o["body"] is not None and o["body_features"] is None:
        raise ValueError("body_features: give the output width of the custom body, e.g. body_features=64")
    o["activation"] = check_choice(o["activation"], "activation", tuple(ACTIVATIONS))
    o["num_iterations"] = check_int(o["num_iterations"], "num_iterations", 0)
    o["num_m_steps"] = check_int(o["num_m_steps"], "num_m_steps", 1, allow_none=True)
    o["batch_size"] = check_int(o["batch_size"], "batch_size", 1)
    o["lr"] = check_real(o["lr"], "lr", 0, fix="Adam's step size, e.g. lr=1e-2")
    o["lr_decay"] = check_real(o["lr_decay"], "lr_decay", 0, 1, fix="e.g. lr_decay=0.1")
    o["warmup"] = check_real(o["warmup"], "warmup", 0, 1, low_open=False, fix="a fraction of the EM iterations, e.g. warmup=0.1")
    o["estep"] = check_choice(o["estep"], "estep", ("exact", "minibatch"))
    o["init"] = check_choice(o["init"], "init", ("mmd", "random"))
    o["mmd_steps"] = check_int(o["mmd_steps"], "mmd_steps", 0)
    o["mmd_penalty"] = check_real(o["mmd_penalty"], "mmd_penalty", 0, fix="e.g. mmd_penalty=1.0")
    o["center_logits"] = check_flag(o["center_logits"], "center_logits")
    o["include_nugget"] = check_flag(o["include_nugget"], "include_nugget")
    if not (isinstance(o["noise_given_factors"], (bool, np.bool_)) or (isinstance(o["noise_given_factors"], str)
                                                                      and o["noise_given_factors"] == "auto")):
        raise ValueError(f"noise_given_factors must be 'auto', True or False, got {o['noise_given_factors']!r}")
    if not isinstance(o["noise_given_factors"], str):
        o["noise_given_factors"] = bool(o["noise_given_factors"])
    o["teacher_batch_size"] = check_int(o["teacher_batch_size"], "teacher_batch_size", 1, fix="e.g. teacher_batch_size=1024")
    o["seed"] = check_int(o["seed"], "seed", 0, maximum=MAX_SEED)
    o["progress"] = check_flag(o["progress"], "progress")
    o["device"] = check_device(o["device"])
    o["dtype"] = check_float_dtype(o["dtype"])
    return o


def _distill(
    x_design, teacher_outputs, *, num_factors, teacher_noise_variances, observed, held_out, task, covariance, centered_loadings,
    hidden, validation_fraction, training_length, loading_hidden, body, body_features, activation, num_iterations, num_m_steps,
    batch_size, lr, lr_decay, warmup, estep, init, mmd_steps, mmd_penalty, center_logits, include_nugget, noise_given_factors,
    teacher_batch_size, seed, progress, device, dtype, candidate: Optional[str] = None,
    distance_anchors: Optional[int] = None, data_rows: Optional[Tensor] = None,
) -> Student:
    """:func:`distill` without its warning handling; ``candidate`` names a body-selection candidate fit (in warnings)."""
    call = _check_options({k: v for k, v in locals().items() if k not in ("x_design", "teacher_outputs", "candidate", "distance_anchors", "data_rows")})
    candidates = _hidden_candidates(call["hidden"])
    lengths = check_training_length(call["training_length"], TRAINING_FAMILY)
    loading_hidden = check_loading_hidden(call["loading_hidden"], body is not None)
    (num_factors, task, covariance, centered_loadings, validation_fraction, body_features, num_iterations, num_m_steps,
     batch_size, lr, lr_decay, warmup, mmd_steps, mmd_penalty, center_logits, include_nugget, noise_given_factors, seed,
     progress, device, dtype) = (call[k] for k in (
        "num_factors", "task", "covariance", "centered_loadings", "validation_fraction", "body_features", "num_iterations",
        "num_m_steps", "batch_size", "lr", "lr_decay", "warmup", "mmd_steps", "mmd_penalty", "center_logits", "include_nugget",
        "noise_given_factors", "seed", "progress", "device", "dtype"))
    if candidates is None and len(lengths) > 1 and body is not None:
        raise ValueError("training_length='auto' compares held-out fits of the default MLP body; pass a fraction with body=")
    if candidates is not None and body is not None:
        raise ValueError("hidden: choosing among bodies works for the default MLP body; pass one hidden= with body=, or drop body=")

    x = check_design_points(x_design, "x_design", integer_ok=body is not None)
    check_num_points(x.shape[0], "x_design")
    if body is None and x.dim() != 2:
        raise ValueError(f"x_design has shape {tuple(x.shape)}: the default MLP body needs (m, d) inputs; pass body= and body_features= for other inputs")
    if device is not None:
        x = x.to(device)
    if isinstance(teacher_outputs, np.ndarray):
        f = _as_teacher_tensor(teacher_outputs)
    elif isinstance(teacher_outputs, Tensor):
        f = teacher_outputs
    elif _is_teacher_list(teacher_outputs) or callable(teacher_outputs):
        f = evaluate_teachers(list(teacher_outputs) if _is_teacher_list(teacher_outputs) else teacher_outputs, x,
                              call["teacher_batch_size"])
    else:
        raise TypeError(f"teacher_outputs must be a tensor or NumPy array (n, m[, c]) a list of callables, or one callable for the whole ensemble, got {type(teacher_outputs).__name__}")
    if isinstance(f, Tensor) and f.is_complex():
        check_teacher_values(f, x, None, "teacher_outputs")  # names the argument and says what to pass
    if not isinstance(f, Tensor) or f.dim() not in (2, 3):
        raise ValueError(f"teacher_outputs must have shape (n, m) or (n, m, c), got {tuple(getattr(f, 'shape', ()))}")
    if task is None:
        task = "classification" if f.dim() == 3 else "regression"
    if task == "regression" and f.dim() == 3 and f.shape[-1] == 1:
        f = f.squeeze(-1)
    # Classification logits (n, m, c), or several regression outputs (n, m, d): a multivariate DLF.
    num_outputs = f.shape[-1] if task == "classification" or f.dim() == 3 else None
    if task == "classification" and f.dim() != 3:
        raise ValueError(f"teacher_outputs for classification must be logits of shape (n, m, c), got {tuple(f.shape)}")
    if isinstance(observed, np.ndarray):
        observed = torch.from_numpy(observed)
    if observed is not None and task != "regression":
        raise ValueError("observed: teachers observed on different design points are supported for regression teachers; drop observed=")
    if observed is not None and num_outputs is not None:
        raise ValueError("observed: masks are supported for one regression output; drop observed= for (n, m, d) teachers")
    f = check_teacher_values(f, x, num_outputs, "teacher_outputs", observed=observed, x_name="x_design")
    if num_outputs is not None and num_outputs < 2:
        raise ValueError(f"teacher_outputs: classification needs at least 2 classes, got {num_outputs}")
    if task == "regression" and centered_loadings:
        raise ValueError("centered_loadings applies to classification logits (centred per input); drop it for regression")
    n = f.shape[0]
    if covariance is None:
        covariance = "full" if task == "classification" else "separable"
    if task == "regression" and covariance != "separable" and num_outputs is None:
        raise ValueError("covariance='full' is an output-covariance structure for (n, m, c) teachers; drop it for one regression output")
    if centered_loadings is None:
        centered_loadings = covariance == "full" and task == "classification" and center_logits
    elif centered_loadings and covariance != "full":
        raise ValueError("centered_loadings=True applies to covariance='full' only")
    if held_out is not None:
        if task != "regression" or num_outputs is not None:
            raise ValueError("held_out: spread calibration is for teachers with one regression output; drop held_out=")
        held_out = check_held_out(torch.from_numpy(held_out) if isinstance(held_out, np.ndarray) else held_out, f)
        if observed is not None and bool((held_out & ~observed).any()):
            raise ValueError("held_out marks values that observed leaves out; mark as held out only observed values")
    v = None
    if task == "regression":
        if teacher_noise_variances is None:
            raise ValueError("teacher_noise_variances: regression needs each teacher's noise variance (n positive values), e.g. its held-out mean squared error")
        v = check_noise_variances(teacher_noise_variances, n, num_points=x.shape[0] if num_outputs is None else None,
                                  num_outputs=num_outputs, observed=observed)
    elif teacher_noise_variances is not None:
        raise ValueError("teacher_noise_variances is for regression teachers; classification teachers give logits only (drop the argument)")
    check_magnitude(x, dtype, "x_design")
    check_magnitude(f if observed is None else f[observed], dtype, "teacher_outputs")
    # Centred logits sum to zero over classes: each teacher then gives only c − 1 free columns.
    centred = task == "classification" and center_logits
    if centred:
        f = f - f.mean(-1, keepdim=True)
    check_value_scale(f, dtype, "teacher_outputs", observed)
    free_outputs = None if num_outputs is None else num_outputs - (1 if centred else 0)
    factor_choice = None
    if num_factors == "auto":
        separable = num_outputs is not None and covariance == "separable"
        factor_choice = choose_num_factors(deviation_gram(f, observed, separable),
                                           factor_limit(n, free_outputs, covariance if num_outputs is not None else None))
        num_factors = factor_choice.num_factors
    check_num_factors(num_factors, n, free_outputs, covariance)
    hidden_list = candidates is not None  # "auto" or a list of candidate bodies
    if candidates is None and len(lengths) > 1:
        candidates = [tuple(call["hidden"])]  # one body: only the training length is compared
    if candidates is not None and candidate is None:
        if hidden_list:
            check_selection_size(x.shape[0], validation_fraction, "hidden", call["hidden"], "pass one body, e.g. hidden=(50,)")
        else:
            check_selection_size(x.shape[0], validation_fraction, "training_length", call["training_length"],
                                 "pass a fraction, e.g. training_length=1.0")

    if candidates is not None:
        # Candidates fit the values as checked here (logits already centred), with the chosen q.
        base = {**call, "num_factors": num_factors, "task": task, "covariance": covariance, "centered_loadings": centered_loadings,
                "center_logits": False, "teacher_noise_variances": v, "progress": False, "held_out": None,
                "distance_anchors": distance_anchors, "data_rows": x if data_rows is None else data_rows}

        def fit(xs: Tensor, fs: Tensor, widths: tuple[int, ...], mask: Optional[Tensor], idx: Tensor, length: float) -> Student:
            # Candidates are compared as fitted; the chosen body is calibrated after its refit.
            options = {**base, "hidden": widths, "training_length": length, "observed": mask}
            if v is not None and v.dim() == 2 and num_outputs is None:
                options["teacher_noise_variances"] = v[:, idx]  # heteroscedastic: the fitting part's columns
            return _distill(xs, fs, **options, candidate=f"body selection (hidden={widths}, training_length={length:g})")

        scalar_noise = v if task == "regression" and num_outputs is None and v.dim() == 1 else None

        def score(student: Student, xs: Tensor, fs: Tensor, mask: Optional[Tensor]) -> Tensor:
            if scalar_noise is not None:
                # Regression: the ensemble-predictive log score (see pyro_dlf.selection).
                return predictive_log_score(student, xs, fs, scalar_noise, mask)
            dtype_ = student.dlf.loading_head.weight.dtype
            if mask is None:
                return student.dlf.log_marginal_likelihood(xs.to(dtype_), fs.to(dtype_)) / fs[0].numel()
            # A teacher with no observed validation point has no score (NaN; left out of the comparison).
            seen = mask.any(1)
            ll = torch.full((fs.shape[0],), float("nan"), dtype=torch.float64)
            ll[seen] = student.dlf.log_marginal_likelihood(xs.to(dtype_), fs[seen].to(dtype_), observed=mask[seen]) / mask[seen].sum(1)
            return ll

        selection = select_hidden(x, f, candidates, fit, score, validation_fraction=validation_fraction, seed=seed,
                                  observed=observed, lengths=lengths, progress=progress)
        hidden, length = selection.chosen, selection.chosen_length
    else:
        selection, length, hidden = None, lengths[0], tuple(call["hidden"])
    # The schedule actually run: a fraction of the MMD steps and of the EM iterations.
    mmd_steps = int(round(length * mmd_steps))
    num_iterations = max(1, int(round(length * num_iterations)))

    noise_prior, noise_model, iid_warnings = (None, None), None, []
    if task == "regression":
        if num_outputs is not None:
            # Several outputs: one inverse gamma for all of them (n,), or one per output (n, d).
            if v.dim() == 2:
                fits = [fit_inverse_gamma(v[:, k]) for k in range(num_outputs)]
                noise_prior = (tuple(a for a, _ in fits), tuple(b for _, b in fits))
            else:
                noise_prior = fit_inverse_gamma(v)
        elif v.dim() == 2:
            # Heteroscedastic teachers: each one's variance at each design point (mathematics §6).
            noise_model = fit_heteroscedastic_noise(x.to(dtype), v.to(x.device), observed=observed,
                                                    hidden=hidden if isinstance(hidden, tuple) and hidden and body is None else (50,),
                                                    seed=seed)
        else:
            # Its warnings (a heavy tail) are said once the law is decided: the factor law may replace it.
            with warnings.catch_warnings(record=True) as iid_warnings:
                warnings.simplefilter("always")
                noise_prior = fit_inverse_gamma(v)

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
        model = DeepLatentFactor(
            x.shape[1] if body is None else None, num_factors, hidden, num_outputs,
            body=body, body_features=body_features, activation=call["activation"],
            covariance=covariance if num_outputs is not None else "separable", centered_loadings=bool(centered_loadings),
            loading_hidden=loading_hidden, distance_anchors=distance_anchors,
        ).to(dtype=dtype, device=x.device)
        with torch.no_grad():
            if body is None:
                model.input_loc, model.input_scale = _standardize_stats(x, 0)
            if distance_anchors is not None:
                # Their own draws, so that a fit with the feature keeps the minibatch order of one without it.
                model.set_anchors(x if data_rows is None else cast_inputs(data_rows.to(x.device), dtype),
                                  torch.Generator().manual_seed(seed + 2))
            values = f if observed is None else f[observed]  # the observed values only
            loc, _ = _standardize_stats(values, tuple(range(values.dim() - (f.dim() - 2))))
            model.output_loc.copy_(loc)
            # The fit is scale-free: the values' own spread (positive: check_value_scale), however small or large.
            model.output_scale.copy_(values.std())
        model.set_noise_variance(0.1 * float(values.var()))
        if body is not None:
            # A wrong body_features would otherwise surface as a matmul shape error.
            with torch.no_grad():
                probe = model.body(x[:1])
            if probe.dim() != 2 or probe.shape[1] != model.body_features:
                raise ValueError(f"body_features={body_features} but body maps x_design[:1] to shape {tuple(probe.shape)}; pass body_features={probe.shape[-1]}")

        m = x.shape[0]
        steps = num_m_steps if num_m_steps is not None else math.ceil(m / min(batch_size, m))
        history = _fit(model, x, f, call["init"], mmd_steps, mmd_penalty, lr, lr_decay, warmup, batch_size, steps,
                       num_iterations, call["estep"], generator, progress, observed)
    _warn_if_diverged(model, x, values, history, lr, candidate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeavyTailWarning)  # fit_inverse_gamma said it, naming teacher_noise_variances
        student = Student(model, task, *noise_prior, centered_logits=centred, include_nugget=include_nugget, noise_model=noise_model)
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
    student.num_factors_choice = factor_choice
    student.spread_calibration = None
    if held_out is not None:
        calibrate_spread(student, x, f_values, held_out.to(f_values.device))
    return student


def _as_teacher_tensor(values: np.ndarray) -> Tensor:
    """A NumPy array of teacher values as a tensor (complex and non-numeric arrays named as teacher_outputs)."""
    if values.dtype.kind == "c" or values.dtype.kind not in "fiu":
        check_teacher_values(values, torch.zeros(0), None, "teacher_outputs")  # raises, naming the argument
    return torch.from_numpy(np.ascontiguousarray(values))


def _warn_if_diverged(model: DeepLatentFactor, x: Tensor, values: Tensor, history: list[float], lr: float,
                      candidate: Optional[str] = None) -> None:
    """Say so when the fit went wrong instead of returning a student that silently reports nonsense.

    Signs: a non-finite likelihood; a likelihood worse at the end of EM than at
    its start by more than a nat per observed value (each iteration of exact EM
    should not lose likelihood, up to minibatch noise); or an epistemic variance at the design points a hundred
    times the teachers' total spread (a maximum-likelihood fit matches the
    teachers' second moments). ``candidate`` names a candidate fit of a selection (said in the warning).
    """
    with torch.no_grad():
        spread = float(values.double().var())
        variance = float(torch.cat([model.loading(x[s:s + 4096]).double().pow(2).flatten(1).sum(1)
                                    for s in range(0, x.shape[0], 4096)]).mean())
    finite = all(math.isfinite(h) for h in history) and math.isfinite(variance)
    # A loss of a whole nat per observed value is far beyond minibatch noise (fits differ by hundredths).
    worse = history[-1] > history[0] + 1.0
    if not finite or worse or variance > 100 * max(spread, 1e-300) * (model.num_outputs or 1):
        which = "the fit" if candidate is None else f"a candidate fit of the {candidate}"
        warnings.warn(
            f"distill: {which} looks diverged (negative log-likelihood per value {history[0]:.4g} at the start of EM, "
            f"{history[-1]:.4g} at the end; epistemic variance at the design points {variance:.3g} against the teachers' "
            f"spread {spread:.3g}); lower lr (now {lr:g}) or raise num_iterations", RuntimeWarning, stacklevel=3)


def _hidden_candidates(hidden) -> Optional[list[tuple[int, ...]]]:
    """``None`` for one body's widths (checked); the candidate list for ``"auto"`` or a list of width tuples."""
    if isinstance(hidden, str):
        if hidden != "auto":
            raise ValueError(f"hidden must be widths such as (50,), a list of candidates, or 'auto', got {hidden!r}")
        return [tuple(c) for c in BODY_FAMILY]
    if isinstance(hidden, (bytes, bool, np.bool_)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of widths such as (50,), a list of candidates, or 'auto', got {hidden!r}")
    if len(hidden) and all(isinstance(h, Sequence) and not isinstance(h, str) for h in hidden):
        return [check_widths(h, "hidden") for h in hidden]
    check_widths(hidden, "hidden")
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
    bar = progress_bar(range(num_iterations), desc="EM", enabled=progress)
    for _ in bar:
        history.append(em.step(x, f, observed) / count)
        optim.step()  # advance the learning-rate schedule by one EM iteration
        bar.set_postfix(nll=f"{history[-1]:.4f}")
    history.append(em.evaluate_loss(x, f, observed) / count)
    return history
