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

from pyro_dlf._warnings import say_once
from pyro_dlf.fitting.data import TeacherInputs
from pyro_dlf.fitting.design import DISTANCE_ANCHORS, fit_on_design
from pyro_dlf.fitting.schedule import scheduled_adam
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
    (mathematics §5), then exact EM (§4) -- and returns it as a :class:`~pyro_dlf.student.Student`. The options
    are grouped as on :class:`~pyro_dlf.fitting.options.DistillOptions`, which describes each in full.

    :param x_design: design points ``(m, ...)``; with callable teachers, the data rows the design set is built from.
    :param teacher_outputs: ``(n, m)`` values, ``(n, m, c)`` logits, or teacher callables (:func:`evaluate_teachers`).
    :param teacher_noise_variances: regression: ``(n,)``, ``(n, d)`` per output, or ``(n, m)`` per point (§2.4, §6.4).
    :param observed: regression: ``(n, m)`` booleans, the teacher values that count (§4.5).
    :param held_out: regression: ``(n, m)`` booleans, where a teacher did not train: calibrates the spread (§6.2);
        :class:`~pyro_dlf.calibration.InfeasibleCalibration` when the kept nugget alone exceeds that spread.
    :param num_factors: ``q``, or ``"auto"`` from the teachers' spread (§2.3).
    :param task: ``"regression"`` or ``"classification"`` (default: from the shape).
    :param covariance: several outputs: ``"full"`` or ``"separable"`` (§1.2).
    :param centered_loadings: full covariance: loadings on the classes' zero-sum subspace.
    :param center_logits: centre each teacher's logits per input (§2.2).
    :param include_nugget: the predictive keeps the nugget ``σ_f²`` (§1.3).
    :param noise_given_factors: ``True``, ``False`` or ``"auto"``: noise that follows the factors (§6.3).
    :param hidden: body widths, a list of candidates, or ``"auto"`` (chosen on held-out design points).
    :param loading_hidden: widths of a separate loading body.
    :param body: a custom body module ``(m, ...) → (m, body_features)``.
    :param body_features: the custom body's output width.
    :param activation: the default body's activation.
    :param num_iterations: EM iterations.
    :param num_m_steps: gradient steps per iteration (default: one pass over the design points).
    :param batch_size: design points per minibatch.
    :param lr: Adam's step size.
    :param lr_decay: the step size's geometric decay over the EM run.
    :param warmup: the fraction of the EM run over which the step size ramps up.
    :param mmd_steps: steps of the MMD-penalized start (§5).
    :param training_length: a fraction of the schedule, or ``"auto"`` (chosen on held-out design points).
    :param validation_fraction: the share of design points held out by the choices.
    :param design: where the teachers are evaluated: ``"auto"``, a named design set, or a callable (§9).
    :param distance_feature: feed the loadings the distance from the data rows (§9.3).
    :param teacher_batch_size: design points per call of a teacher callable.
    :param seed: seeds the initialization, the minibatches and the held-out splits.
    :param progress: show progress bars (``TQDM_DISABLE`` hides them too).
    :param device: where to fit (default: where ``x_design`` is).
    :param dtype: ``torch.float32`` or ``torch.float64``.
    :returns: the fitted student; ``student.history`` holds the negative log marginal likelihood per observed
        value at each EM iteration; ``design_choice``, ``body_selection``, ``num_factors_choice``, ``noise_fit``
        and ``spread_calibration`` record the choices.
    """
    inputs = TeacherInputs(teacher_noise_variances, observed, held_out)
    options = {k: v for k, v in locals().items() if k not in ("x_design", "teacher_outputs", "teacher_noise_variances",
                                                              "observed", "held_out", "inputs")}
    return _distill(x_design, teacher_outputs, options, inputs, stacklevel=3)


def distill_with(x_design: Tensor, teacher_outputs: TeacherOutputs, options: Union[dict, DistillOptions],
                 inputs: TeacherInputs = TeacherInputs()) -> Student:
    """:func:`distill` with its options as one :class:`~pyro_dlf.fitting.options.DistillOptions` made by
    :func:`~pyro_dlf.fitting.options.check_options` (trusted as checked), or as the keyword arguments of
    ``check_options`` (checked here; ablation switches included)."""
    return _distill(x_design, teacher_outputs, options, inputs, stacklevel=3)


def _distill(x_design: Tensor, teacher_outputs: TeacherOutputs, options: Union[dict, DistillOptions], inputs: TeacherInputs,
             stacklevel: int) -> Student:
    # Every warning of one call is said once, at the user's line: the candidate fits of a choice would repeat them.
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
                                 f"happens when the step size is too large: lower lr (now {o.lr:g}, e.g. lr={o.lr / 10:g}), or pass "
                                 "dtype=torch.float64") from err
    except Exception:
        with contextlib.suppress(Warning):  # under -W error a warning must not replace the error itself
            say_once(caught, stacklevel)
        raise
    say_once(caught, stacklevel)
    return student
