r"""One maximum-likelihood fit: the noise law, the network, the MMD start and EM, the student (mathematics §2–§6).

:func:`fit_student` is one fit of checked data (:class:`~pyro_dlf.fitting.data.TeacherData`) with one body and
one training length; the choices around it (the body, the design) call it once per candidate.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from pyro_dlf._validation import cast_inputs
from pyro_dlf.calibration import calibrate_spread
from pyro_dlf.fitting.context import FitContext
from pyro_dlf.fitting.data import TeacherData
from pyro_dlf.fitting.divergence import design_variance, warn_if_diverged
from pyro_dlf.fitting.network import build_network
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.fitting.schedule import run_em
from pyro_dlf.likelihoods import InverseGammaNoise, NoiseLaw, fit_heteroscedastic_noise
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.noise import FACTOR_NOISE_TEST_LEVEL, HeavyTailWarning, fit_noise_given_factors
from pyro_dlf.student import Student

__all__ = ["choose_noise_law", "fit_student"]


def choose_noise_law(data: TeacherData, hidden: tuple[int, ...], o: DistillOptions) -> tuple[Optional[NoiseLaw], list]:
    """The teachers' noise law (mathematics §2.4, §6.4) and the warnings of an i.i.d. fit, said once the law is
    decided (the law that follows the factors may replace it)."""
    v, said = data.noise_variances, []
    if data.task != "regression":
        return None, said
    if data.num_outputs is not None:
        return InverseGammaNoise.fit(v), said  # one law for every output (n,), or one per output (n, d)
    if v.dim() == 2:
        return fit_heteroscedastic_noise(data.x.to(o.dtype), v.to(data.x.device), observed=data.observed,
                                         hidden=hidden if isinstance(hidden, tuple) and hidden and o.body is None else (50,),
                                         seed=o.seed), said
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        law = InverseGammaNoise.fit(v)
    return law, said


def _student(model: DeepLatentFactor, data: TeacherData, x: Tensor, f: Tensor, noise: tuple[Optional[NoiseLaw], list],
             o: DistillOptions) -> Student:
    """The student around the fitted network, with the noise law decided (mathematics §2.4, §6.3)."""
    law, said = noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeavyTailWarning)  # fit_inverse_gamma said it, naming teacher_noise_variances
        student = Student(model, data.task, centered_logits=data.centred, include_nugget=o.include_nugget, noise_law=law)
    student.noise_fit = None
    if isinstance(law, InverseGammaNoise) and data.num_outputs is None and o.noise_given_factors is not False:
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
    noise = choose_noise_law(data, hidden, o)
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
        model = build_network(data, x, values, hidden, o, context)
        history = run_em(model, x, f, observed, o, mmd_steps, num_iterations, generator)
    warn_if_diverged(history, o.lr, design_variance(model, x), float(values.double().var()), model.num_outputs,
                     context.candidate)
    student = _student(model, data, x, f, noise, o)
    student.history = history
    student.num_factors_choice = data.num_factors_choice
    student.spread_calibration = None
    if data.held_out is not None:
        calibrate_spread(student, x, f_values, data.held_out.to(f_values.device))
    return student
