"""Input checks shared by the model, the inference classes and :func:`pyro_dlf.distill`.

Every check names the offending argument and says how to fix it.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_design_points", "is_integer_input", "cast_inputs", "check_teacher_values", "check_observed", "check_held_out", "check_num_factors", "check_dtype", "check_batch_size", "check_training_length",
           "check_magnitude", "check_loading_hidden"]


def _as_float_tensor(value, name: str) -> Tensor:
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        # NumPy arrays are accepted wherever tensors are (shared memory where the dtype allows).
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; convert with torch.as_tensor(..., dtype=torch.float32)")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}; convert with {name}.float()")
    return value


def _check_finite(value: Tensor, name: str) -> None:
    bad = ~torch.isfinite(value)
    if bad.any():
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains {count} non-finite value(s) (NaN or Inf), the first at index {first}; remove or impute them before distilling")


def check_design_points(x: Tensor, name: str = "x", integer_ok: bool = False) -> Tensor:
    """A non-empty, finite, floating-point tensor of inputs ``(m, ...)``.

    With ``integer_ok`` (a custom body that embeds its inputs, e.g. a text
    encoder reading token ids ``(m, L)``) integer tensors pass unchanged.
    """
    if integer_ok and isinstance(x, np.ndarray) and x.dtype.kind in "iu":
        x = torch.from_numpy(np.ascontiguousarray(x))
    if integer_ok and isinstance(x, Tensor) and is_integer_input(x):
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"{name} must have a leading dimension of design points, got shape {tuple(x.shape)}")
        return x
    x = _as_float_tensor(x, name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have a leading dimension of design points, got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: give at least one design point")
    _check_finite(x, name)
    return x


def is_integer_input(x: Tensor) -> bool:
    """Integer inputs (token ids, category codes): never cast to the model's float dtype."""
    return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


def cast_inputs(x: Tensor, dtype: torch.dtype, device=None) -> Tensor:
    """``x`` in the model's ``dtype`` on ``device``; integer inputs keep their dtype (only moved)."""
    if is_integer_input(x):
        return x if device is None else x.to(device)
    return x.to(dtype=dtype) if device is None else x.to(dtype=dtype, device=device)


def check_teacher_values(f: Tensor, x: Tensor, num_outputs: Optional[int], name: str = "f", min_members: int = 2,
                         observed: Optional[Tensor] = None) -> Tensor:
    """Teacher values ``(n, m)`` (univariate) or ``(n, m, c)`` (multivariate), matching ``x``;
    finite wherever ``observed`` (a checked mask, see :func:`check_observed`) is true."""
    f = _as_float_tensor(f, name)
    expected = 2 if num_outputs is None else 3
    layout = "(num_teachers, num_points)" if num_outputs is None else f"(num_teachers, num_points, {num_outputs})"
    if f.dim() != expected:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(f.shape)}")
    if f.shape[1] != x.shape[0]:
        raise ValueError(f"{name} has values at {f.shape[1]} design points but x has {x.shape[0]}: the second dimension of {name} must match the first of x")
    if num_outputs is not None and f.shape[2] != num_outputs:
        raise ValueError(f"{name} has {f.shape[2]} outputs per point but the model has num_outputs={num_outputs}")
    if f.shape[0] < min_members:
        raise ValueError(f"{name} holds {f.shape[0]} teacher(s); at least {min_members} are needed to estimate a covariance")
    if observed is None:
        _check_finite(f, name)
    else:
        check_observed(observed, f)
        keep = observed if f.dim() == 2 else observed.unsqueeze(-1).expand_as(f)
        _check_finite(torch.where(keep, f, torch.zeros_like(f)), name)
    return f


def _teacher_mask(mask, f: Tensor, name: str, hint: str) -> Tensor:
    """A boolean ``(n, m)`` mask over the teachers' values ``f`` (a NumPy bool array is accepted),
    on ``f``'s device; ``hint`` says how to build one."""
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_:
        mask = torch.from_numpy(mask)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean torch.Tensor of shape (num_teachers, num_points), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}; {hint}")
    if tuple(mask.shape) != tuple(f.shape[:2]):
        raise ValueError(f"{name} must have shape {tuple(f.shape[:2])} (teachers, design points), got {tuple(mask.shape)}")
    if mask.device != f.device:
        raise ValueError(f"{name} is on {mask.device} but the teacher values are on {f.device}; move it with .to({str(f.device)!r})")
    return mask


def check_observed(observed, f: Tensor, name: str = "observed") -> Optional[Tensor]:
    """``None``, or a boolean mask ``(n, m)`` of where each teacher is observed, with at least one
    observed point per teacher (values elsewhere are ignored and may be NaN)."""
    if observed is None:
        return None
    observed = _teacher_mask(observed, f, name, "build it with (values == values) or a comparison")
    empty = (~observed.any(1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"{name}: teacher {int(empty[0])} is observed at no design point; drop it or mark where it is observed")
    return observed


def check_held_out(held_out, f: Tensor, name: str = "held_out") -> Tensor:
    """A boolean mask ``(n, m)`` of the design points each teacher did not train on, with at
    least one point held out by two or more teachers (a spread needs two values)."""
    held_out = _teacher_mask(held_out, f, name, "mark each teacher's held-out rows with True")
    if not bool((held_out.sum(0) >= 2).any()):
        raise ValueError(f"{name}: no design point is held out by two or more teachers, so their out-of-sample spread "
                         "cannot be measured; hold out overlapping rows (e.g. a random 10 % per teacher)")
    if not bool(torch.isfinite(f[held_out]).all()):
        raise ValueError(f"{name}: some held-out teacher values are NaN or Inf; mark only finite values as held out")
    return held_out


def check_num_factors(num_factors: int, num_teachers: int, num_outputs: Optional[int] = None,
                      covariance: Optional[str] = "separable") -> None:
    """``n`` teachers span at most ``n - 1`` directions around their mean (SPEC §2).

    Univariate, those are directions of ``Φ``'s column space, so ``q ≤ n − 1``.
    Separable multivariate, every centred teacher contributes a ``m × c``
    residual ``R_i = Φ Z_i^T L^T`` whose ``c`` columns all lie in ``col(Φ)``, so
    the teachers' columns span up to ``(n − 1)·c`` directions and
    ``q ≤ (n − 1)·c``. Full multivariate, each teacher's whole ``m·c`` residual
    is one vector ``Φ z_i`` of the stacked loadings, so ``q ≤ n − 1`` as in the
    univariate model.
    """
    if not isinstance(num_factors, int) or isinstance(num_factors, bool) or num_factors < 1:
        raise ValueError(f"num_factors must be a positive int, got {num_factors!r}")
    per_teacher = 1 if num_outputs is None or covariance == "full" else num_outputs
    limit = (num_teachers - 1) * per_teacher
    if num_factors > limit:
        head = (f"num_factors={num_factors} >= number of teachers={num_teachers}: {num_teachers} teachers" if per_teacher == 1
                else f"num_factors={num_factors} exceeds (teachers - 1) x outputs: {num_teachers} teachers with {num_outputs} outputs")
        warnings.warn(
            f"{head} span at most {limit} directions, so the extra factors are not identified; use num_factors <= {limit}",
            UserWarning,
            stacklevel=3,
        )


def check_magnitude(t: Tensor, dtype: torch.dtype, name: str) -> None:
    """Values whose squares, summed over the whole tensor, would overflow ``dtype``.

    Standardizing, variances and the likelihood's sums of squares run in the
    model's dtype; ``max|t|² · numel`` must stay below its largest number (with a
    factor 10 to spare), or the fit returns infinities or nonsense silently.
    """
    if t.numel() == 0 or not t.is_floating_point():
        return
    largest = float(t.detach().abs().max())
    limit = (torch.finfo(dtype).max / (10 * t.numel())) ** 0.5
    if largest > limit:
        raise ValueError(f"{name} has values up to {largest:.3g}: their sums of squares overflow {str(dtype).replace('torch.', '')} "
                         f"(the limit for {t.numel()} values is {limit:.3g}); rescale them (e.g. to standard units) or pass "
                         f"dtype=torch.float64")


def check_dtype(t: Tensor, module, name: str) -> None:
    """``t`` must have the floating dtype of ``module``'s parameters."""
    dtype = next(module.parameters()).dtype
    if t.dtype != dtype:
        cast = "double()" if dtype == torch.float64 else "float()"
        raise TypeError(f"{name} has dtype {t.dtype} but the model is {dtype}; convert with {name}.{cast} (or move the model with .to({t.dtype}))")


def check_batch_size(batch_size, name: str = "batch_size") -> None:
    """``None`` (everything at once) or a positive int."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{name} must be None or a positive int, got {batch_size!r}")


def check_training_length(value, family: Sequence[float]) -> list[float]:
    """The training lengths to compare: ``[value]`` for one fraction in ``(0, 1]``, ``family`` for ``"auto"``."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"training_length must be a fraction in (0, 1] of the schedule or 'auto', got {value!r}")
        return [float(v) for v in family]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1):
        raise ValueError(f"training_length must be a fraction in (0, 1] of the schedule or 'auto', got {value!r}")
    return [float(value)]


def check_loading_hidden(value, custom_body: bool) -> Optional[tuple[int, ...]]:
    """``None`` (one body for mean and loadings) or the widths of a separate loading body, as a tuple."""
    if value is None:
        return None
    if custom_body:
        raise ValueError("loading_hidden: a separate loading body works with the default MLP body; drop loading_hidden= or body=")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not len(value) \
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in value):
        raise ValueError(f"loading_hidden must be None or positive widths such as (50,), got {value!r}")
    return tuple(int(h) for h in value)
