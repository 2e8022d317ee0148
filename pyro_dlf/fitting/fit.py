r"""One maximum-likelihood fit: the noise law, the network, the MMD start and EM, the student (mathematics §2–§6).

:func:`fit_student` is one fit of checked data (:class:`~pyro_dlf.fitting.data.TeacherData`) with one body and
one training length; the choices around it (the body, the design) call it once per candidate.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import pyro.optim
import torch
from torch import Tensor

from pyro_dlf._progress import progress_bar
from pyro_dlf._validation import cast_inputs
from pyro_dlf.calibration import calibrate_spread
from pyro_dlf.fitting.data import TeacherData
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.heteroscedastic import fit_heteroscedastic_noise
from pyro_dlf.infer.em import EM
from pyro_dlf.infer.mmd import mmd_initialize
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.noise import FACTOR_NOISE_TEST_LEVEL, HeavyTailWarning, fit_inverse_gamma, fit_noise_given_factors
from pyro_dlf.student import Student
from pyro_dlf.sufficient_statistics import observed_count

__all__ = ["FitContext", "fit_student", "new_network", "scheduled_adam", "warn_if_diverged"]


class FitContext:
    """What a candidate fit carries besides the data: its name in warnings, and the distance feature's anchors.

    :param candidate: names a candidate fit of a choice in its warnings (``None``: the fit the caller gets).
    :param distance_anchors: how many data rows the distance feature measures from (mathematics §9.3), or ``None``.
    :param data_rows: the rows it measures from (``None``: the design points).
    """

    def __init__(self, candidate: Optional[str] = None, distance_anchors: Optional[int] = None,
                 data_rows: Optional[Tensor] = None) -> None:
        self.candidate, self.distance_anchors, self.data_rows = candidate, distance_anchors, data_rows


def scheduled_adam(lr: float, lr_decay: float, warmup: float, num_iterations: int) -> pyro.optim.PyroLRScheduler:
    """Adam (gradient norm clipped at 10) whose step size ramps up linearly over the first
    ``warmup · num_iterations`` scheduler steps, then decays geometrically to ``lr · lr_decay``.

    A freshly started Adam moves every weight by about ``lr`` in its first steps whatever the gradient's
    size, which would throw the network off the MMD start; the ramp avoids that loss of likelihood.
    Call ``optim.step()`` once per iteration to advance the schedule.
    """
    ramp = max(warmup * num_iterations, 1.0)
    iterations = max(num_iterations, 1)

    def schedule(iteration: int) -> float:
        return min(1.0, (iteration + 1) / ramp) * lr_decay ** (iteration / iterations)

    return pyro.optim.LambdaLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "lr_lambda": schedule}, {"clip_norm": 10.0})


def standardize_stats(t: Tensor, dim) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation along ``dim``; a constant column keeps scale 1."""
    loc = t.mean(dim)
    scale = t.std(dim)
    # A constant column -- no spread beyond the rounding of its dtype -- has nothing to standardize; leave it
    # unscaled. The test is relative: inputs of any magnitude (1e-30 or 1e30) with a real spread are standardized.
    resolved = scale > 16 * torch.finfo(t.dtype).eps * loc.abs()
    return loc, torch.where(resolved & (scale > 0), scale, torch.ones_like(scale))


def _noise_law(data: TeacherData, hidden: tuple[int, ...], o: DistillOptions):
    """The teachers' noise law (mathematics §2.4, §6.4): ``(prior, model, warnings of the i.i.d. fit)``."""
    v, prior, model, said = data.noise_variances, (None, None), None, []
    if data.task != "regression":
        return prior, model, said
    if data.num_outputs is not None:
        # Several outputs: one inverse gamma for all of them (n,), or one per output (n, d).
        if v.dim() == 2:
            fits = [fit_inverse_gamma(v[:, k]) for k in range(data.num_outputs)]
            prior = (tuple(a for a, _ in fits), tuple(b for _, b in fits))
        else:
            prior = fit_inverse_gamma(v)
    elif v.dim() == 2:
        model = fit_heteroscedastic_noise(data.x.to(o.dtype), v.to(data.x.device), observed=data.observed,
                                          hidden=hidden if isinstance(hidden, tuple) and hidden and o.body is None else (50,),
                                          seed=o.seed)
    else:
        # Its warnings (a heavy tail) are said once the law is decided: the factor law may replace it.
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            prior = fit_inverse_gamma(v)
    return prior, model, said


def new_network(in_features: Optional[int], num_factors: int, hidden: tuple[int, ...], num_outputs: Optional[int],
                covariance: str, centered_loadings: bool, o: DistillOptions, device: torch.device,
                distance_anchors: Optional[int] = None) -> DeepLatentFactor:
    """The student's network, freshly initialized from the current random state, in ``o.dtype`` on ``device``
    (mathematics §1; shared by the in-memory and streamed fits)."""
    return DeepLatentFactor(
        in_features, num_factors, hidden, num_outputs, body=o.body, body_features=o.body_features, activation=o.activation,
        covariance=covariance if num_outputs is not None else "separable", centered_loadings=bool(centered_loadings),
        loading_hidden=o.loading_hidden, distance_anchors=distance_anchors,
    ).to(dtype=o.dtype, device=device)


def _build_model(data: TeacherData, x: Tensor, values: Tensor, hidden: tuple[int, ...], o: DistillOptions,
                 context: FitContext) -> DeepLatentFactor:
    """The network, its inputs and outputs standardized by the design points and the observed values."""
    model = new_network(x.shape[1] if o.body is None else None, data.num_factors, hidden, data.num_outputs, data.covariance,
                        data.centered_loadings, o, x.device, context.distance_anchors)
    with torch.no_grad():
        if o.body is None:
            model.input_loc, model.input_scale = standardize_stats(x, 0)
        if context.distance_anchors is not None:
            rows = x if context.data_rows is None else cast_inputs(context.data_rows.to(x.device), o.dtype)
            # Their own draws, so that a fit with the feature keeps the minibatch order of one without it.
            model.set_anchors(rows, torch.Generator().manual_seed(o.seed + 2))
        loc, _ = standardize_stats(values, tuple(range(values.dim() - (data.f.dim() - 2))))
        model.output_loc.copy_(loc)
        # The fit is scale-free: the values' own spread (positive: check_value_scale), however small or large.
        model.output_scale.copy_(values.std())
    model.set_noise_variance(0.1 * float(values.var()))
    if o.body is not None:
        # A wrong body_features would otherwise surface as a matmul shape error.
        with torch.no_grad():
            probe = model.body(x[:1])
        if probe.dim() != 2 or probe.shape[1] != model.body_features:
            raise ValueError(f"body_features={o.body_features} but body maps x_design[:1] to shape {tuple(probe.shape)}; "
                             f"pass body_features={probe.shape[-1]}")
    return model


def _run_em(model: DeepLatentFactor, x: Tensor, f: Tensor, observed: Optional[Tensor], o: DistillOptions,
            mmd_steps: int, num_iterations: int, generator: torch.Generator) -> list[float]:
    """The MMD start (mathematics §5), then EM (§4) with a warm-up and geometric decay of Adam's step size;
    the negative log marginal likelihood per observed value at each iteration, and after the last."""
    if o.init == "mmd" and mmd_steps > 0:
        mmd_initialize(model, x, f, num_steps=mmd_steps, penalty=o.mmd_penalty, lr=o.lr, batch_size=o.batch_size,
                       generator=generator, progress=o.progress, observed=observed)
    optim = scheduled_adam(o.lr, o.lr_decay, o.warmup, num_iterations)
    m = x.shape[0]
    steps = o.num_m_steps if o.num_m_steps is not None else math.ceil(m / min(o.batch_size, m))
    em = EM(model, ExactFactorPosterior(model), optim, num_m_steps=steps, batch_size=o.batch_size, estep=o.estep,
            generator=generator)
    history, count = [], observed_count(f, observed)
    bar = progress_bar(range(num_iterations), desc="EM", enabled=o.progress)
    for _ in bar:
        history.append(em.step(x, f, observed) / count)
        optim.step()  # advance the learning-rate schedule by one EM iteration
        bar.set_postfix(nll=f"{history[-1]:.4f}")
    history.append(em.evaluate_loss(x, f, observed) / count)
    return history


def warn_if_diverged(history: list[float], lr: float, variance: float, spread: float, num_outputs: Optional[int],
                     candidate: Optional[str] = None, caller: str = "distill") -> None:
    """Say so when the fit went wrong instead of returning a student that silently reports nonsense.

    Signs: a non-finite likelihood; a likelihood worse at the end of EM than at its start by more than a nat
    per observed value (each iteration of exact EM should not lose likelihood, up to minibatch noise); or an
    epistemic ``variance`` at the design points a hundred times the teachers' total ``spread`` (a
    maximum-likelihood fit matches the teachers' second moments). ``candidate`` names a candidate fit of a choice.
    """
    finite = all(math.isfinite(h) for h in history) and math.isfinite(variance)
    # A loss of a whole nat per observed value is far beyond minibatch noise (fits differ by hundredths).
    worse = history[-1] > history[0] + 1.0
    if not finite or worse or variance > 100 * max(spread, 1e-300) * (num_outputs or 1):
        which = "the fit" if candidate is None else f"a candidate fit of the {candidate}"
        warnings.warn(
            f"{caller}: {which} looks diverged (negative log-likelihood per value {history[0]:.4g} at the start of EM, "
            f"{history[-1]:.4g} at the end; epistemic variance at the design points {variance:.3g} against the teachers' "
            f"spread {spread:.3g}); lower lr (now {lr:g}) or raise num_iterations", RuntimeWarning, stacklevel=4)


def _design_variance(model: DeepLatentFactor, x: Tensor) -> float:
    """The student's mean epistemic variance ``‖Φ(x)‖²`` over the design points."""
    with torch.no_grad():
        return float(torch.cat([model.loading(x[s:s + 4096]).double().pow(2).flatten(1).sum(1)
                                for s in range(0, x.shape[0], 4096)]).mean())


def _student(model: DeepLatentFactor, data: TeacherData, x: Tensor, f: Tensor, noise, o: DistillOptions) -> Student:
    """The student around the fitted network, with the noise law decided (mathematics §2.4, §6.3)."""
    (concentration, rate), noise_model, said = noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeavyTailWarning)  # fit_inverse_gamma said it, naming teacher_noise_variances
        student = Student(model, data.task, concentration, rate, centered_logits=data.centred, include_nugget=o.include_nugget,
                          noise_model=noise_model)
    student.noise_fit = None
    if data.task == "regression" and noise_model is None and data.num_outputs is None and o.noise_given_factors is not False:
        student.noise_fit = fit_noise_given_factors(model, x, f, data.noise_variances, data.observed, o.batch_size)
        if o.noise_given_factors is True or student.noise_fit.p_value < FACTOR_NOISE_TEST_LEVEL:
            law = student.noise_fit
            student.set_noise_law(law.concentration, law.rate, law.exponent, law.gram)
            said = []
    for caught in said:
        warnings.warn(caught.message, caught.category, stacklevel=4)
    return student


def fit_student(data: TeacherData, o: DistillOptions, hidden: tuple[int, ...], length: float,
                context: Optional[FitContext] = None) -> Student:
    """One fit with the body ``hidden`` and the fraction ``length`` of the schedule: the noise law, the network
    seeded by ``o.seed`` (the caller's random state untouched), the MMD start and EM, then the student; its
    loadings are calibrated to the teachers' held-out spread when ``data.held_out`` is given (mathematics §6.2)."""
    context = context or FitContext()
    mmd_steps, num_iterations = int(round(length * o.mmd_steps)), max(1, int(round(length * o.num_iterations)))
    noise = _noise_law(data, hidden, o)
    f = data.f.to(dtype=o.dtype, device=data.x.device)
    f_values = f  # before placeholders fill unobserved entries (the calibration reads held-out values)
    x = cast_inputs(data.x, o.dtype)
    observed = None if data.observed is None else data.observed.to(f.device)
    if observed is not None:
        f = torch.where(observed, f, f[observed].mean())  # placeholders, never read by the algebra; kept finite
    values = f if observed is None else f[observed]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(o.seed)
        generator = torch.Generator().manual_seed(o.seed)
        model = _build_model(data, x, values, hidden, o, context)
        history = _run_em(model, x, f, observed, o, mmd_steps, num_iterations, generator)
    warn_if_diverged(history, o.lr, _design_variance(model, x), float(values.double().var()), model.num_outputs,
                     context.candidate)
    student = _student(model, data, x, f, noise, o)
    student.history = history
    student.num_factors_choice = data.num_factors_choice
    student.spread_calibration = None
    if data.held_out is not None:
        calibrate_spread(student, x, f_values, data.held_out.to(f_values.device))
    return student
