r"""The design points and the teachers' values of one fit, checked once (mathematics §2).

:func:`prepare_data` reads ``x_design``, the teachers and their noise variances and masks, checks each once
with its argument's name, and returns a :class:`TeacherData`: the values the fit reads, with the task, the
output structure and the number of factors resolved. Candidate fits of a choice take a :meth:`TeacherData.subset`
of it, checked no more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from pyro_dlf._validation import (check_design_points, check_held_out, check_magnitude, check_noise_variances, check_num_factors,
                                  check_noise_given_factors, check_num_points, check_output_structure, check_teacher_values, check_value_scale)
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.fitting.teachers import TeacherOutputs, evaluate_teachers, is_teacher_list
from pyro_dlf.selection import FactorChoice, choose_num_factors, deviation_gram, factor_limit

__all__ = ["TeacherInputs", "TeacherData", "prepare_data", "resolve_num_factors"]


@dataclass(frozen=True)
class TeacherInputs:
    """The per-teacher inputs of ``distill`` besides the values: noise variances and masks, as given."""

    noise_variances: Union[Tensor, np.ndarray, Sequence[float], None] = None
    observed: Union[Tensor, np.ndarray, None] = None
    held_out: Union[Tensor, np.ndarray, None] = None


@dataclass(frozen=True)
class TeacherData:
    """One fit's data, checked.

    :ivar x: design points ``(m, ...)``, on the fit's device (not yet in its dtype).
    :ivar f: teacher values ``(n, m)`` or ``(n, m, c)``; logits centred per input when ``centred``.
    :ivar task: ``"regression"`` or ``"classification"``.
    :ivar num_outputs: ``c`` (classes or regression outputs), or ``None`` for one output.
    :ivar covariance: ``"separable"`` or ``"full"``.
    :ivar centered_loadings: whether full loadings are projected onto the zero-sum subspace.
    :ivar centred: whether the logits were centred per input.
    :ivar free_outputs: the outputs a teacher's centred values span (``c − 1`` for centred logits).
    :ivar observed: ``(n, m)`` booleans or ``None``.
    :ivar held_out: ``(n, m)`` booleans or ``None`` (spread calibration, mathematics §6.2).
    :ivar noise_variances: regression: ``(n,)``, ``(n, d)`` or heteroscedastic ``(n, m)``; else ``None``.
    :ivar num_factors: ``q``.
    :ivar num_factors_choice: how ``q`` was chosen (``None`` when given).
    """

    x: Tensor
    f: Tensor
    task: str
    num_outputs: Optional[int]
    covariance: str
    centered_loadings: bool
    centred: bool
    free_outputs: Optional[int]
    observed: Optional[Tensor]
    held_out: Optional[Tensor]
    noise_variances: Optional[Tensor]
    num_factors: int = 0
    num_factors_choice: Optional[FactorChoice] = None

    @property
    def heteroscedastic(self) -> bool:
        """Teachers with a noise variance at every design point (mathematics §6.4)."""
        v = self.noise_variances
        return self.task == "regression" and self.num_outputs is None and v is not None and v.dim() == 2

    def subset(self, x: Tensor, f: Tensor, observed: Optional[Tensor], columns: Tensor) -> "TeacherData":
        """The same teachers on the design points ``columns`` (``x``, ``f``, ``observed`` already taken there):
        the fitting part of a held-out comparison. Heteroscedastic variances follow the columns; the held-out
        mask (a calibration of the final fit) is dropped."""
        v = self.noise_variances[:, columns] if self.heteroscedastic else self.noise_variances
        return replace(self, x=x, f=f, observed=observed, held_out=None, noise_variances=v)


def _design_points(x_design: Union[Tensor, np.ndarray], o: DistillOptions) -> Tensor:
    x = check_design_points(x_design, "x_design", integer_ok=o.body is not None)
    check_num_points(x.shape[0], "x_design")
    if o.body is None and x.dim() != 2:
        raise ValueError(f"x_design has shape {tuple(x.shape)}: the default MLP body needs (m, d) inputs; pass body= and "
                         "body_features= for other inputs")
    return x if o.device is None else x.to(o.device)


def _as_teacher_tensor(values: np.ndarray) -> Tensor:
    """A NumPy array of teacher values as a tensor (complex and non-numeric arrays named as teacher_outputs)."""
    if values.dtype.kind == "c" or values.dtype.kind not in "fiu":
        check_teacher_values(values, torch.zeros(0), None, "teacher_outputs")  # raises, naming the argument
    return torch.from_numpy(np.ascontiguousarray(values))


def _teacher_values(teacher_outputs: TeacherOutputs, x: Tensor, o: DistillOptions) -> Tensor:
    if isinstance(teacher_outputs, np.ndarray):
        f = _as_teacher_tensor(teacher_outputs)
    elif isinstance(teacher_outputs, Tensor):
        f = teacher_outputs
    elif is_teacher_list(teacher_outputs) or callable(teacher_outputs):
        f = evaluate_teachers(list(teacher_outputs) if is_teacher_list(teacher_outputs) else teacher_outputs, x,
                              o.teacher_batch_size)
    else:
        raise TypeError("teacher_outputs must be a tensor or NumPy array (n, m[, c]) a list of callables, or one callable "
                        f"for the whole ensemble, got {type(teacher_outputs).__name__}")
    if isinstance(f, Tensor) and f.is_complex():
        check_teacher_values(f, x, None, "teacher_outputs")  # names the argument and says what to pass
    if not isinstance(f, Tensor) or f.dim() not in (2, 3):
        raise ValueError(f"teacher_outputs must have shape (n, m) or (n, m, c), got {tuple(getattr(f, 'shape', ()))}")
    return f


def _structure(f: Tensor, o: DistillOptions) -> tuple[Tensor, str, Optional[int], str, bool]:
    """The task, the number of outputs, the covariance and the loadings' centring, from the values' shape and the options."""
    task = o.task or ("classification" if f.dim() == 3 else "regression")
    if task == "regression" and f.dim() == 3 and f.shape[-1] == 1:
        f = f.squeeze(-1)
    # Classification logits (n, m, c), or several regression outputs (n, m, d): a multivariate DLF.
    num_outputs = f.shape[-1] if task == "classification" or f.dim() == 3 else None
    if task == "classification" and f.dim() != 3:
        raise ValueError(f"teacher_outputs for classification must be logits of shape (n, m, c), got {tuple(f.shape)}")
    return f, task, num_outputs, o.covariance or ("full" if task == "classification" else "separable"), o.centered_loadings


def _observed(observed, task: str, num_outputs: Optional[int]) -> Optional[Tensor]:
    if isinstance(observed, np.ndarray):
        observed = torch.from_numpy(observed)
    if observed is not None and task != "regression":
        raise ValueError("observed: teachers observed on different design points are supported for regression teachers; drop observed=")
    if observed is not None and num_outputs is not None:
        raise ValueError("observed: masks are supported for one regression output; drop observed= for (n, m, d) teachers")
    return observed


def _held_out(held_out, f: Tensor, observed: Optional[Tensor], task: str, num_outputs: Optional[int]) -> Optional[Tensor]:
    if held_out is None:
        return None
    if task != "regression" or num_outputs is not None:
        raise ValueError("held_out: spread calibration is for teachers with one regression output; drop held_out=")
    held_out = check_held_out(torch.from_numpy(held_out) if isinstance(held_out, np.ndarray) else held_out, f)
    if observed is not None and bool((held_out & ~observed).any()):
        raise ValueError("held_out marks values that observed leaves out; mark as held out only observed values")
    return held_out


def _noise_variances(noise, f: Tensor, x: Tensor, task: str, num_outputs: Optional[int], observed) -> Optional[Tensor]:
    if task == "regression":
        if noise is None:
            raise ValueError("teacher_noise_variances: regression needs each teacher's noise variance (n positive values), "
                             "e.g. its held-out mean squared error")
        return check_noise_variances(noise, f.shape[0], num_points=x.shape[0] if num_outputs is None else None,
                                     num_outputs=num_outputs, observed=observed)
    if noise is not None:
        raise ValueError("teacher_noise_variances is for regression teachers, and (n, m, c) values are read as classification "
                         "logits: drop the argument, or pass task='regression' if the c columns are regression outputs")
    return None


def resolve_num_factors(requested, gram: Callable[[], Tensor], num_teachers: int, free_outputs: Optional[int],
                        covariance: str, multivariate: bool) -> tuple[int, Optional[FactorChoice]]:
    """``q`` as given, or chosen from the Gram matrix of the teachers' centred deviations (mathematics §2.3;
    ``gram()`` is computed only then); its identification checked. Shared by the in-memory and streamed fits."""
    choice, q = None, requested
    if q == "auto":
        choice = choose_num_factors(gram(), factor_limit(num_teachers, free_outputs, covariance if multivariate else None))
        q = choice.num_factors
    check_num_factors(q, num_teachers, free_outputs, covariance if multivariate else "separable")
    return q, choice


def prepare_data(x_design: Union[Tensor, np.ndarray], teacher_outputs: TeacherOutputs, inputs: TeacherInputs, o: DistillOptions) -> TeacherData:
    """Check the design points, the teachers' values, noise variances and masks once, and resolve the task, the
    output structure and ``q``. Logits are centred per input when ``o.center_logits`` (mathematics §2.2)."""
    x = _design_points(x_design, o)
    f, task, num_outputs, covariance, centered = _structure(_teacher_values(teacher_outputs, x, o), o)
    observed = _observed(inputs.observed, task, num_outputs)
    f = check_teacher_values(f, x, num_outputs, "teacher_outputs", observed=observed, x_name="x_design")
    centered = check_output_structure(task, num_outputs, covariance, centered, o.center_logits)
    held_out = _held_out(inputs.held_out, f, observed, task, num_outputs)
    v = _noise_variances(inputs.noise_variances, f, x, task, num_outputs, observed)
    check_noise_given_factors(o.noise_given_factors, task, num_outputs, v)
    check_magnitude(x, o.dtype, "x_design")
    check_magnitude(f if observed is None else f[observed], o.dtype, "teacher_outputs")
    # Centred logits sum to zero over classes: each teacher then gives only c − 1 free columns.
    centred = task == "classification" and o.center_logits
    if centred:
        f = f - f.mean(-1, keepdim=True)
    check_value_scale(f, o.dtype, "teacher_outputs", observed)
    data = TeacherData(x=x, f=f, task=task, num_outputs=num_outputs, covariance=covariance, centered_loadings=centered,
                       centred=centred, free_outputs=None if num_outputs is None else num_outputs - (1 if centred else 0),
                       observed=observed, held_out=held_out, noise_variances=v)
    separable = num_outputs is not None and covariance == "separable"
    q, choice = resolve_num_factors(o.num_factors, lambda: deviation_gram(f, observed, separable), f.shape[0],
                                    data.free_outputs, covariance, num_outputs is not None)
    return replace(data, num_factors=q, num_factors_choice=choice)
