r"""One call from a teacher ensemble to a distilled student: :func:`distill`.

``distill`` checks its options once (:func:`pyro_dlf.fitting.options.check_options`), then composes the parts
of :mod:`pyro_dlf.fitting`: the design set (:func:`~pyro_dlf.fitting.design.fit_on_design`), the data
(:func:`~pyro_dlf.fitting.data.prepare_data`), the body (:func:`~pyro_dlf.fitting.body.choose_body`) and the fit
(:func:`~pyro_dlf.fitting.fit.fit_student`). Every warning of one call is said once.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from pyro_dlf.fitting.data import TeacherInputs
from pyro_dlf.fitting.design import DISTANCE_ANCHORS, fit_on_design
from pyro_dlf.fitting.fit import scheduled_adam
from pyro_dlf.fitting.options import DistillOptions, check_options
from pyro_dlf.fitting.teachers import TeacherOutputs, evaluate_teachers
from pyro_dlf.student import Student

__all__ = ["distill", "distill_with", "evaluate_teachers", "scheduled_adam", "DISTANCE_ANCHORS"]


def distill(
    x_design: Tensor, teacher_outputs: TeacherOutputs, *,
    num_factors: Union[int, str] = "auto", teacher_noise_variances: Optional[Tensor] = None, observed: Optional[Tensor] = None,
    held_out: Optional[Tensor] = None, task: Optional[str] = None, covariance: Optional[str] = None,
    centered_loadings: Optional[bool] = None, center_logits: bool = True, include_nugget: bool = False,
    noise_given_factors: Union[bool, str] = False,
    hidden: Union[Sequence[int], Sequence[Sequence[int]], str] = (50,), loading_hidden: Optional[Sequence[int]] = None,
    body: Optional[nn.Module] = None, body_features: Optional[int] = None, activation: str = "ReLU",
    num_iterations: int = 100, num_m_steps: Optional[int] = None, batch_size: int = 256, lr: float = 1e-2,
    lr_decay: float = 0.1, warmup: float = 0.1, mmd_steps: int = 500, training_length: Union[float, str] = 1.0,
    validation_fraction: float = 0.2,
    design: Union[str, Callable[[Tensor, torch.Generator], Tensor]] = "auto", distance_feature: Union[bool, str] = "auto",
    teacher_batch_size: int = 1024, seed: int = 0, progress: bool = True,
    device: Optional[Union[str, torch.device]] = None, dtype: torch.dtype = torch.float32,
) -> Student:
    r"""Distill a teacher ensemble into a deep latent factor student (Gaussian distillation).

    Fits a :class:`~pyro_dlf.models.DeepLatentFactor` by maximum likelihood -- the MMD-penalized start
    (mathematics §5), then exact EM (§4) -- and returns it as a :class:`~pyro_dlf.student.Student`. Each option
    is described on :class:`~pyro_dlf.fitting.options.DistillOptions`, grouped as here.

    :param x_design: design points ``(m, ...)``; with callable teachers, the data rows the design set is built from.
    :param teacher_outputs: ``(n, m)`` values (regression), ``(n, m, c)`` logits (classification), a list of
        ``n`` callables, or one callable returning ``(n, b[, c])`` (:func:`evaluate_teachers`; deterministic).
    :param teacher_noise_variances: regression: each teacher's noise variance, ``(n,)`` (an inverse gamma is
        fitted, §2.4), ``(n, d)`` per output, or ``(n, m)`` per design point (heteroscedastic, §6.4).
    :param observed: regression: ``(n, m)`` booleans, the values that count (§4.5).
    :param held_out: regression: ``(n, m)`` booleans, where a teacher did not train; the loadings are scaled to
        the teachers' spread there (§6.2; ``student.spread_calibration``).
    :param num_factors, task, covariance, centered_loadings, center_logits, include_nugget, noise_given_factors:
        the model (§1–§2, §6.3); ``student.num_factors_choice`` and ``student.noise_fit`` record the choices.
    :param hidden, loading_hidden, body, body_features, activation: the network; ``hidden="auto"`` or a list of
        widths compares bodies on held-out design points (``student.body_selection``).
    :param num_iterations, num_m_steps, batch_size, lr, lr_decay, warmup, mmd_steps, training_length, validation_fraction:
        the schedule; ``training_length="auto"`` chooses a fraction of it the same way.
    :param design, distance_feature: where the teachers are evaluated (§9; ``student.design_choice``).
    :param teacher_batch_size, seed, progress, device, dtype: the run.
    :returns: the fitted student; ``student.history`` holds the negative log marginal likelihood per observed
        value at each EM iteration.
    """
    inputs = TeacherInputs(teacher_noise_variances, observed, held_out)
    options = {k: v for k, v in locals().items() if k not in ("x_design", "teacher_outputs", "teacher_noise_variances",
                                                              "observed", "held_out", "inputs")}
    return distill_with(x_design, teacher_outputs, options, inputs)


def distill_with(x_design, teacher_outputs: TeacherOutputs, options: Union[dict, DistillOptions],
                 inputs: TeacherInputs = TeacherInputs()) -> Student:
    """:func:`distill` with its options as one :class:`~pyro_dlf.fitting.options.DistillOptions` (or the
    keyword arguments of :func:`~pyro_dlf.fitting.options.check_options`, ablation switches included)."""
    # Every warning of one call is said once: the candidate fits of a choice would repeat them.
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            o = options if isinstance(options, DistillOptions) else check_options(**options)
            try:
                student = fit_on_design(x_design, teacher_outputs, inputs, o)
            except torch.linalg.LinAlgError as err:
                # The data are checked before the fit, so a singular matrix during it means the weights diverged.
                raise ValueError(f"the fit diverged (a covariance became singular: {str(err).splitlines()[0][:80]}); this "
                                 f"happens when the step size is too large: lower lr (now {o.lr!r}, e.g. lr=1e-2), or pass "
                                 "dtype=torch.float64") from err
    except Exception:
        with contextlib.suppress(Warning):  # under -W error a warning must not replace the error itself
            say_once(caught)
        raise
    say_once(caught)
    return student


def say_once(caught: list) -> None:
    """Re-emit the recorded warnings of one call, each distinct one once, at the caller of :func:`distill`."""
    for category, message in dict.fromkeys((record.category, str(record.message)) for record in caught):
        warnings.warn(message, category, stacklevel=4)
