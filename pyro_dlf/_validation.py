"""Input checks shared by the model, the inference classes and :func:`pyro_dlf.distill`.

Every check names the offending argument and says how to fix it.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from numbers import Real
from typing import IO, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from pyro_dlf._files import body_record


__all__ = ["check_design_points", "is_integer_input", "cast_inputs", "check_teacher_values", "check_observed", "check_held_out", "check_num_factors", "check_dtype", "check_batch_size", "check_training_length",
           "check_magnitude", "check_loading_hidden", "check_real", "check_int", "check_flag", "check_choice", "check_device",
           "check_float_dtype", "check_widths", "check_noise_variances", "check_num_points", "check_value_scale",
           "check_num_factors_option", "check_teacher_output", "check_magnitude_value", "check_spread", "MIN_DESIGN_POINTS",
           "DISTILL_FIX", "PREDICT_FIX", "check_noise_prior", "check_noise_law", "check_finite_outputs", "check_path",
           "check_map_location", "check_body_record", "check_body_output", "check_inference_data", "check_network_fields", "check_state_shapes", "check_targets",
           "check_generator", "check_memory", "check_network_size", "check_noise_given_factors", "check_not_input", "MAX_SEED", "check_training_inputs", "check_output_structure", "check_images", "check_image_families", "check_strength", "check_rows", "check_square_matrix", "check_array", "check_observed_targets", "check_networks", "check_factor_model"]

#: Design points a fit needs: the inputs are standardized by their spread, and a covariance across inputs needs two.
MIN_DESIGN_POINTS = 2


def _complex_error(name: str, dtype) -> TypeError:
    return TypeError(f"{name} holds complex values ({dtype}); the model is for real values and would drop the imaginary parts: "
                     f"pass {name}.real if they are zero, or the real quantity the teachers predict")


def _as_float_tensor(value, name: str) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "c":
            raise _complex_error(name, value.dtype)
        if value.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got a NumPy array of dtype {value.dtype}; convert with "
                            f"np.asarray({name}, dtype=np.float32)")
        # NumPy arrays are accepted wherever tensors are (shared memory where the dtype allows).
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; convert with torch.as_tensor(..., dtype=torch.float32)")
    if value.is_complex():
        raise _complex_error(name, value.dtype)
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}; convert with {name}.float()")
    return value


#: What a non-finite design point asks of the user.
DISTILL_FIX = "remove or impute them before distilling"
#: What a non-finite prediction input asks of the user.
PREDICT_FIX = "the student predicts at finite inputs only: drop or impute those rows"


def _check_finite(value: Tensor, name: str, fix: str = DISTILL_FIX) -> None:
    bad = ~torch.isfinite(value)
    if bad.any():
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains {count} non-finite value(s) (NaN or Inf), the first at index {first}; {fix}")


def check_design_points(x: Tensor, name: str = "x", integer_ok: bool = False, fix: str = DISTILL_FIX) -> Tensor:
    """A non-empty, finite, floating-point tensor of inputs ``(m, ...)``.

    With ``integer_ok`` (a custom body that embeds its inputs, e.g. a text
    encoder reading token ids ``(m, L)``) integer tensors pass unchanged.
    ``fix`` ends the message about non-finite values (:data:`DISTILL_FIX`,
    :data:`PREDICT_FIX`).
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
    if x.dim() >= 2 and 0 in x.shape[1:]:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: each design point has no values; give at least one input column")
    _check_finite(x, name, fix)
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
                         observed: Optional[Tensor] = None, x_name: str = "x", finite: bool = True) -> Tensor:
    """Teacher values ``(n, m)`` (univariate) or ``(n, m, c)`` (multivariate), matching ``x`` (called ``x_name``
    in messages); finite wherever ``observed`` (a checked mask, see :func:`check_observed`) is true. With
    ``finite=False`` the values are not scanned (the caller checks what it computes from them instead)."""
    f = _as_float_tensor(f, name)
    expected = 2 if num_outputs is None else 3
    layout = "(num_teachers, num_points)" if num_outputs is None else f"(num_teachers, num_points, {num_outputs})"
    if f.dim() != expected:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(f.shape)}")
    if f.shape[1] != x.shape[0]:
        raise ValueError(f"{name} has values at {f.shape[1]} design points but {x_name} has {x.shape[0]}: the second dimension of "
                         f"{name} must match the first of {x_name}")
    if num_outputs is not None and f.shape[2] != num_outputs:
        raise ValueError(f"{name} has {f.shape[2]} outputs per point but the model has num_outputs={num_outputs}")
    if f.shape[0] < min_members:
        raise ValueError(f"{name} holds {f.shape[0]} teacher(s); at least {min_members} are needed to estimate a covariance")
    if not finite:
        return f
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
    """``n`` teachers span at most ``n - 1`` directions around their mean (mathematics §2).

    Univariate, those are directions of ``Φ``'s column space, so ``q ≤ n − 1``.
    Separable multivariate, every centred teacher contributes a ``m × c``
    residual ``R_i = Φ Z_i^T L^T`` whose ``c`` columns all lie in ``col(Φ)``, so
    the teachers' columns span up to ``(n − 1)·c`` directions and
    ``q ≤ (n − 1)·c``. Full multivariate, each teacher's whole ``m·c`` residual
    is one vector ``Φ z_i`` of the stacked loadings, so ``q ≤ n − 1`` as in the
    univariate model.
    """
    if not isinstance(num_factors, numbers.Integral) or isinstance(num_factors, (bool, np.bool_)) or num_factors < 1:
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
    check_magnitude_value(float(t.detach().abs().max()), t.numel(), dtype, name)


def check_magnitude_value(largest: float, count: int, dtype: torch.dtype, name: str) -> None:
    """:func:`check_magnitude` from the largest absolute value and the number of values (e.g. over a stream)."""
    limit = (torch.finfo(dtype).max / (10 * max(count, 1))) ** 0.5
    if largest > limit:
        raise ValueError(f"{name} has values up to {largest:.3g}: their sums of squares overflow {str(dtype).replace('torch.', '')} "
                         f"(the limit for {count} values is {limit:.3g}); rescale them (e.g. to standard units) or pass "
                         f"dtype=torch.float64")


def check_dtype(t: Tensor, module, name: str) -> None:
    """``t`` must have the floating dtype of ``module``'s parameters."""
    dtype = next(module.parameters()).dtype
    if t.dtype != dtype:
        cast = "double()" if dtype == torch.float64 else "float()"
        raise TypeError(f"{name} has dtype {t.dtype} but the model is {dtype}; convert with {name}.{cast} (or move the model with .to({t.dtype}))")


def check_batch_size(batch_size, name: str = "batch_size") -> None:
    """``None`` (everything at once) or a positive int."""
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"{name} must be None or a positive int, got {batch_size!r}")


def check_training_length(value, family: Sequence[float]) -> list[float]:
    """The training lengths to compare: ``[value]`` for one fraction in ``(0, 1]``, ``family`` for ``"auto"``."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"training_length must be a fraction in (0, 1] of the schedule or 'auto', got {value!r}")
        return [float(v) for v in family]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not (0 < value <= 1):
        raise ValueError(f"training_length must be a fraction in (0, 1] of the schedule or 'auto', got {value!r}")
    return [float(value)]


def check_loading_hidden(value, custom_body: bool) -> Optional[tuple[int, ...]]:
    """``None`` (one body for mean and loadings) or the widths of a separate loading body, as a tuple."""
    if value is None:
        return None
    if custom_body:
        raise ValueError("loading_hidden: a separate loading body works with the default MLP body; drop loading_hidden= or body=")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not len(value) \
            or any(not _is_int(h) or h < 1 for h in value):
        raise ValueError(f"loading_hidden must be None or positive widths such as (50,), got {value!r}")
    return tuple(int(h) for h in value)


# ------------------------------------------------------------------ options
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_real(value: Any, name: str, low: Optional[float] = None, high: Optional[float] = None, *,
               low_open: bool = True, high_open: bool = False, fix: str = "") -> float:
    """A finite real number (not a bool) in the interval ``low..high`` (open or closed ends), as a float.

    :param fix: what to pass instead, appended to the error (e.g. ``"e.g. lr=1e-2"``).
    """
    left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    what = ("a finite number" if low is None and high is None
            else f"a number in {left}, {right}" if low is not None and high is not None
            else f"a finite number {'>' if low_open else '>='} {low:g}" if low is not None
            else f"a finite number {'<' if high_open else '<='} {high:g}")
    tail = f"; {fix}" if fix else ""
    if isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point():
        value = float(value)  # a 0-dimensional real tensor is a number
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {value!r}{tail}")
    number = float(value)
    if not np.isfinite(number) or (low is not None and (number <= low if low_open else number < low)) \
            or (high is not None and (number >= high if high_open else number > high)):
        raise ValueError(f"{name} must be {what}, got {value!r}{tail}")
    return number


#: The largest seed: random generators take 64-bit seeds, and seeds are offset per candidate fit.
MAX_SEED = 2 ** 63 - 1


def check_int(value: Any, name: str, minimum: int = 1, *, allow_none: bool = False, fix: str = "",
              maximum: Optional[int] = None) -> Optional[int]:
    """An int (NumPy integers too, not a bool) of at least ``minimum`` (and at most ``maximum``); ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    what = ("a positive int" if minimum == 1 else "a non-negative int" if minimum == 0 else f"an int >= {minimum}")
    what = f"None or {what}" if allow_none else what
    tail = f"; {fix}" if fix else ""
    if not _is_int(value):
        raise TypeError(f"{name} must be {what}, got {value!r}{tail}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}{tail}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}{tail or f'; pass a smaller {name}'}")
    return int(value)


def check_flag(value: Any, name: str, *, allow_none: bool = False) -> Optional[bool]:
    """``True`` or ``False`` (a NumPy bool too); ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False{' (or None)' if allow_none else ''}, got {value!r}")
    return bool(value)


def check_flag_or_auto(value: Any, name: str) -> Union[bool, str]:
    """``True``, ``False`` or ``"auto"``."""
    if isinstance(value, str) and value == "auto":
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be 'auto', True or False, got {value!r}")
    return bool(value)


def check_design_option(value: Any, designs: Sequence[str], name: str = "design") -> Union[str, Callable]:
    """``"auto"``, one of the named design sets ``designs`` (:data:`pyro_dlf.design.sets.DESIGNS`), or a callable
    ``design(x, *, generator)`` returning the points to add."""
    if callable(value) and not isinstance(value, str):
        return value
    choices = ("auto", *designs)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices} or a callable design(x, *, generator) returning the points to add, "
                         f"got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str], *, allow_none: bool = False) -> Optional[str]:
    """One of the strings ``choices``; ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in choices:
        listed = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be {listed}{' (or None)' if allow_none else ''}, got {value!r}")
    return value


def check_device(device: Any, name: str = "device") -> Optional[torch.device]:
    """``None`` or a device that exists here: ``"cpu"``, ``"cuda"`` / ``"cuda:k"`` with CUDA available, ``"mps"`` with MPS."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be None, a string such as 'cpu' or 'cuda', or a torch.device, got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name}={device!r} is not a device torch knows; pass device='cpu' (or 'cuda' where a GPU is available)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but torch.cuda.is_available() is False; pass {name}='cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"pass {name}='cuda:0' (or 'cpu')")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}={device!r} but torch.backends.mps.is_available() is False; pass {name}='cpu'")
    elif parsed.type != "cpu":
        raise ValueError(f"{name}={device!r}: the fit runs on 'cpu', 'cuda' or 'mps'; pass {name}='cpu'")
    return parsed


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``torch.float32`` or ``torch.float64``: the model's floating dtype."""
    if dtype not in (torch.float32, torch.float64) or not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name} must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def check_widths(value: Any, name: str) -> tuple[int, ...]:
    """Hidden widths: a sequence of positive ints (empty: no hidden layer), as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or any(not _is_int(h) or h < 1 for h in value):
        raise ValueError(f"{name} must be positive widths such as (50,) or (100, 100), got {value!r}")
    return tuple(int(h) for h in value)


def check_num_factors_option(value: Any, name: str = "num_factors") -> Any:
    """``"auto"`` (chosen from the teachers' values) or a positive int; the identification limit is checked
    once the number of teachers is known (:func:`check_num_factors`)."""
    if isinstance(value, str) and value == "auto":
        return value
    if not _is_int(value) or value < 1:
        raise (ValueError if _is_int(value) or isinstance(value, str) else TypeError)(
            f"{name} must be 'auto' (chosen from the teachers' spread) or a positive int such as 2, got {value!r}")
    return int(value)


def check_num_points(m: int, name: str = "x_design", minimum: int = MIN_DESIGN_POINTS) -> None:
    """At least ``minimum`` design points (the inputs are standardized by their spread; a covariance across inputs needs two)."""
    if m < minimum:
        raise ValueError(f"{name} has {m} design point{'s' if m != 1 else ''}: distilling needs at least {minimum} (the "
                         f"student's inputs are standardized by their spread and its covariance runs across inputs); "
                         f"give more design points")


def check_noise_variances(value: Any, num_teachers: int, name: str = "teacher_noise_variances", *,
                          num_points: Optional[int] = None, num_outputs: Optional[int] = None,
                          observed: Optional[Tensor] = None) -> Tensor:
    """Each teacher's noise variance as a float64 tensor: ``(n,)``, or ``(n, m)`` (heteroscedastic, when
    ``num_points`` is given), or ``(n, d)`` (per output, when ``num_outputs`` is given); positive and finite
    (for ``(n, m)`` wherever ``observed``)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise TypeError(f"{name} must be {num_teachers} positive numbers (one per teacher), got {value!r}")
    if isinstance(value, np.ndarray) and value.dtype.kind not in "fiu":
        if value.dtype.kind == "c":
            raise _complex_error(name, value.dtype)
        raise TypeError(f"{name} must hold real numbers, got a NumPy array of dtype {value.dtype}")
    if isinstance(value, Tensor) and (value.is_complex() or value.dtype == torch.bool):
        if value.is_complex():
            raise _complex_error(name, value.dtype)
        raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {value.dtype}")
    try:
        v = torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray) else value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be {num_teachers} positive numbers (one per teacher: a tensor, array or list), "
                        f"got {type(value).__name__}") from None
    v = v.detach().cpu()
    shapes = [f"({num_teachers},)"]
    if num_points is not None:
        shapes.append(f"({num_teachers}, {num_points}) per teacher and design point")
    if num_outputs is not None:
        shapes.append(f"({num_teachers}, {num_outputs}) per teacher and output")
    if v.dim() == 2 and v.shape[1] == 1 and num_points != 1 and num_outputs != 1:
        v = v.reshape(-1)
    ok = (v.dim() == 1 and v.numel() == num_teachers) or (
        v.dim() == 2 and v.shape[0] == num_teachers and v.shape[1] in [k for k in (num_points, num_outputs) if k is not None])
    if not ok:
        got = f"{v.numel()} value{'s' if v.numel() != 1 else ''}" if v.dim() <= 1 else f"shape {tuple(v.shape)}"
        raise ValueError(f"{name} has {got} for {num_teachers} teachers: give one variance per teacher, shape "
                         + " or ".join(shapes))
    everywhere = observed is None or v.dim() != 2 or v.shape[1] != num_points
    keep = torch.ones_like(v, dtype=torch.bool) if everywhere else observed.cpu()
    bad = keep & ~(torch.isfinite(v) & (v > 0))
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must be positive and finite, but {int(bad.sum())} value(s) are not (the first, at index "
                         f"{first[0] if len(first) == 1 else first}, is {float(v[first]):g}); check those teachers' noise "
                         f"estimates (e.g. held-out mean squared errors)")
    return v


def check_value_scale(f: Tensor, dtype: torch.dtype, name: str, observed: Optional[Tensor] = None) -> None:
    """Teachers that differ, at a scale ``dtype`` resolves.

    The fit is scale-free (the values are standardized), but its squared
    deviations and the nugget, a fraction of the values' variance, must be
    normal numbers of ``dtype``: a spread whose square falls below
    ``tiny / eps`` (about ``1e-31`` in float32, ``1e-292`` in float64) loses
    its precision to underflow. Teachers with no spread at all leave nothing
    to distil. With an ``observed`` mask the spread is taken across the teachers
    that share a point, or, where no point is shared, across the observed values.
    """
    values = f.detach().double()
    if observed is not None:
        keep = observed if values.dim() == 2 else observed.unsqueeze(-1).expand_as(values)
        # Across teachers where at least two see a point; where none is shared, across the observed values.
        shared = keep & (keep.sum(0, keepdim=True) >= 2)
        keep = shared if bool(shared.any()) else keep
        values = torch.where(keep, values, torch.nan)
        centre = values.nanmean(0, keepdim=True) if keep is shared else values.nanmean()
        deviation = torch.where(keep, values - centre, torch.zeros_like(values))
        count = max(int(keep.sum()), 1)
    else:
        deviation = values - values.mean(0, keepdim=True)
        count = max(values.numel(), 1)
    check_spread(float(deviation.pow(2).sum() / count), dtype, name)


def check_spread(spread: float, dtype: torch.dtype, name: str) -> None:
    """:func:`check_value_scale` from the mean squared deviation across teachers (e.g. summed over a stream)."""
    if spread == 0.0:
        raise ValueError(f"{name}: every teacher gives the same values, so there is no spread across teachers to distil; "
                         f"check that the teachers differ (e.g. members trained from different seeds)")
    finfo = torch.finfo(dtype)
    if spread < finfo.tiny / finfo.eps:
        raise ValueError(f"{name}: the teachers differ by only {spread ** 0.5:.3g} (root mean square across teachers), too "
                         f"small for {str(dtype).replace('torch.', '')}: its squares underflow; rescale the values (e.g. to "
                         f"standard units) or pass dtype=torch.float64")


def check_teacher_output(out: Any, index: int, rows: int, name: str = "teacher_outputs") -> Tensor:
    """One teacher callable's values on a batch of ``rows`` design points: a real tensor (or NumPy array) with ``rows`` rows."""
    label = f"{name}[{index}]"
    if isinstance(out, np.ndarray):
        if out.dtype.kind == "c":
            raise _complex_error(f"{label}(x)", out.dtype)
        if out.dtype.kind not in "fiu":
            raise TypeError(f"{label} returned a NumPy array of dtype {out.dtype}; it must return real values (b,) or (b, c)")
        out = torch.from_numpy(np.ascontiguousarray(out))
    if not isinstance(out, Tensor):
        raise TypeError(f"{label} returned {type(out).__name__ if out is not None else 'None'}, not a tensor; each teacher "
                        f"callable must return its values on the batch as a torch.Tensor (b,) or (b, c)")
    if out.is_complex():
        raise _complex_error(f"{label}(x)", out.dtype)
    if out.dim() == 0 or out.shape[0] != rows:
        raise ValueError(f"{label} returned shape {tuple(out.shape)} for a batch of {rows} design points; it must return "
                         f"({rows},) or ({rows}, c)")
    return out.detach()


# ------------------------------------------------------------ the student and its file


def _numbers(value, name: str, num_outputs: Optional[int]) -> Union[float, tuple[float, ...]]:
    """A number, or (several outputs) one number per output, as a float or a tuple of floats."""
    if isinstance(value, (Tensor, np.ndarray)):
        if value.dtype in (torch.bool, np.bool_) or (isinstance(value, Tensor) and value.is_complex()):
            raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if num_outputs is None or len(value) != num_outputs:
            expected = "one number" if num_outputs is None else f"one number or {num_outputs} (one per output)"
            raise ValueError(f"{name} must be {expected}, got {len(value)} values")
        return tuple(_numbers(v, name, None) for v in value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}; "
                        "fit it with pyro_dlf.noise.fit_inverse_gamma")
    return float(value)


def check_noise_prior(concentration, rate, num_outputs: Optional[int]):
    r"""``(a, b)`` of the inverse-gamma noise prior ``IG(a, b)`` of a regression student.

    Both positive and finite. ``a ≤ 1`` is a law without a mean: the predictive
    (its draws, mixture and densities) is proper, and the aleatoric variance
    ``E[σ²] = b/(a − 1)`` it reports is infinite, as documented on the student.
    One pair, or with ``num_outputs`` outputs one number per output for either.

    :returns: ``(a, b)`` as floats, or tuples of floats (one per output).
    """
    if concentration is None or rate is None:
        raise ValueError("noise_concentration and noise_rate are required for regression: the inverse-gamma law of the "
                         "teachers' noise variances (fit them with pyro_dlf.noise.fit_inverse_gamma)")
    a, b = _numbers(concentration, "noise_concentration", num_outputs), _numbers(rate, "noise_rate", num_outputs)
    for name, values in (("noise_concentration", a), ("noise_rate", b)):
        for v in values if isinstance(values, tuple) else (values,):
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}; fit it with pyro_dlf.noise.fit_inverse_gamma")
    if any(v <= 0 for v in (b if isinstance(b, tuple) else (b,))):
        raise ValueError(f"noise_rate must be positive, got {rate!r}; fit it with pyro_dlf.noise.fit_inverse_gamma")
    if any(v <= 0 for v in (a if isinstance(a, tuple) else (a,))):
        raise ValueError(f"noise_concentration must be positive, got {concentration!r}; fit it with pyro_dlf.noise.fit_inverse_gamma")
    if isinstance(a, tuple) != isinstance(b, tuple):
        # One number for every output next to one per output: one per output for both.
        a, b = (v if isinstance(v, tuple) else (v,) * num_outputs for v in (a, b))
    return a, b


def check_noise_law(concentration, rate, exponent, gram, num_factors: int, *, prefix: str = "set_noise_law: ",
                    names: tuple[str, str, str, str] = ("concentration", "rate", "exponent", "gram")):
    r"""The factor-dependent noise law ``IG(a, b · u(z)^β)``, ``u(z) = z^T \hat G z``.

    ``a, b`` positive finite numbers (the aleatoric variance
    ``E_z[b u(z)^β] / (a − 1)`` is infinite for ``a ≤ 1``), ``β`` finite, and for ``β ≠ 0`` a symmetric
    positive semi-definite ``q×q`` ``\hat G`` of trace 1 (for ``β = 0`` it is not read).

    :param prefix: put before every message (the entry point's name).
    :param names: the entry point's names of ``a``, ``b``, ``β`` and ``\hat G``.
    :returns: ``(a, b, β, \hat G or None)``, numbers as floats and ``\hat G`` as a float64 tensor.
    """
    a_name, b_name, beta_name, gram_name = names
    values = []
    for value in (concentration, rate):
        if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
            value = value.item()
        values.append(value)
    a, b = values
    if not all(isinstance(v, Real) and not isinstance(v, (bool, np.bool_)) and 0 < float(v) < math.inf for v in (a, b)):
        raise ValueError(f"{prefix}{a_name} and {b_name} must be positive finite numbers, got {concentration!r}, {rate!r} "
                         "(pyro_dlf.noise.fit_factor_inverse_gamma fits them)")
    a, b = float(a), float(b)
    beta = check_real(exponent, f"{prefix}{beta_name}")
    if beta == 0.0:
        return a, b, beta, None  # the i.i.d. law: no gram is read
    g = None
    if isinstance(gram, (Tensor, np.ndarray, list, tuple)):
        try:
            g = torch.as_tensor(np.asarray(gram, dtype=np.float64) if not isinstance(gram, Tensor) else gram, dtype=torch.float64)
        except (TypeError, ValueError):
            g = None
    q = num_factors
    if g is None or tuple(g.shape) != (q, q) or not bool(torch.isfinite(g).all()) or not torch.allclose(g, g.T, atol=1e-8) \
            or abs(float(g.trace()) - 1.0) > 1e-6 or float(torch.linalg.eigvalsh(g).min()) < -1e-8:
        raise ValueError(f"{prefix}{beta_name} {beta:g} needs {gram_name}, a symmetric positive semi-definite ({q}, {q}) "
                         "matrix of trace 1 (pyro_dlf.noise.fit_factor_inverse_gamma gives it)")
    return a, b, beta, g


def check_finite_outputs(values: tuple[Tensor, ...], x: Tensor, dtype: torch.dtype, name: str = "x") -> None:
    """The network's outputs at ``x`` are finite; if not, ``x`` is too large for ``dtype`` (finite ``x`` assumed)."""
    if all(bool(torch.isfinite(v).all()) for v in values if v is not None):
        return
    size = f" up to {float(x.detach().abs().max()):.3g}" if x.is_floating_point() else ""
    kind = str(dtype).replace("torch.", "")
    fix = "rescale it (to the range of the design points)" + (", or convert the student with student.double() and pass "
                                                               "x in torch.float64" if dtype != torch.float64 else "")
    raise ValueError(f"{name} has values{size}: the student's outputs there overflow {kind} (infinite or NaN predictions); {fix}")


def check_path(path, name: str = "path", *, write: bool) -> Union[str, IO[bytes]]:
    """A file name (``str``, ``bytes``, :class:`os.PathLike`) as an absolute ``str``, or a binary file object.

    A file object must be open in binary mode and have ``write`` (``write=True``) or ``read`` and ``seek``.
    """
    if isinstance(path, (str, bytes, os.PathLike)):
        text = os.fsdecode(os.fspath(path))
        if not text:
            raise ValueError(f"{name} is empty; give a file name such as 'student.pt'")
        if "\0" in text:
            raise ValueError(f"{name} contains a NUL character; give a valid file name")
        if os.path.isdir(text):
            raise ValueError(f"{name} {text!r} is a folder; give a file name inside it, e.g. {os.path.join(text, 'student.pt')!r}")
        return os.path.abspath(text)
    needed = ("write",) if write else ("read", "seek")
    if not all(callable(getattr(path, attr, None)) for attr in needed):
        raise TypeError(f"{name} must be a file name (str or os.PathLike) or a binary file object with "
                        f"{' and '.join(n + '()' for n in needed)}, got {type(path).__name__}")
    mode = getattr(path, "mode", None)
    if isinstance(path, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise TypeError(f"{name} is a text-mode file; open it in binary mode ({'wb' if write else 'rb'}) or pass its name")
    able = getattr(path, "writable" if write else "readable", None)
    if callable(able) and not able():
        raise ValueError(f"{name} is a file object open only for {'reading' if write else 'writing'}; open it with "
                         f"{'wb' if write else 'rb'} or pass its name")
    return path


#: Device types a student's tensors can be loaded onto and computed on.
_LOAD_DEVICES = ("cpu", "cuda", "mps", "xpu")


def check_map_location(map_location) -> torch.device:
    """A device the file's tensors are loaded onto and the student moved to: a device string or a :class:`torch.device`."""
    if isinstance(map_location, torch.device):
        device = map_location
    elif isinstance(map_location, str):
        try:
            device = torch.device(map_location)
        except RuntimeError as err:
            raise ValueError(f"map_location {map_location!r} is not a device; pass a device such as 'cpu', 'cuda' or "
                             "'cuda:0' (or a torch.device)") from err
    else:
        raise TypeError(f"map_location must be a device such as 'cpu', 'cuda' or 'cuda:0' (or a torch.device), got "
                        f"{type(map_location).__name__}; the student is loaded whole onto one device")
    if device.type not in _LOAD_DEVICES:
        raise ValueError(f"map_location {str(device)!r} is not a device a student can be loaded onto; pass one of "
                         f"{', '.join(repr(d) for d in _LOAD_DEVICES)} (with an index such as 'cuda:0' where needed)")
    if device.type == "cpu":
        return torch.device("cpu")  # torch.load knows no "cpu:0"
    try:
        torch.empty(0, device=device)
    except Exception as err:  # each backend fails in its own way when absent
        raise ValueError(f"map_location {str(device)!r} is not available on this machine; pass map_location='cpu' "
                         "(the default) and move the student later") from err
    return device


def check_body_record(body, saved_class: Optional[str], saved_modules) -> None:
    """``body``'s class, and the classes of its submodules, are those recorded in the file.

    ``saved_class`` is ``module.qualname`` of the saved body, ``saved_modules``
    ``[[name, class], ...]`` over its submodules; files without the record
    (``None``) are not checked.
    """
    if saved_class is None:
        return
    found_class, found_modules = body_record(body)
    if found_class != saved_class:
        raise ValueError(f"body is a {found_class} but the student was saved with a {saved_class} body; pass an instance "
                         f"of {saved_class} (the same architecture; its weights are overwritten)")
    if saved_modules is not None:
        saved, found = dict(map(tuple, saved_modules)), dict(map(tuple, found_modules))
        for key in sorted(set(saved) | set(found)):
            if saved.get(key) != found.get(key):
                raise ValueError(f"body's submodule {key!r} is {found.get(key) or 'missing'} but the saved body's is "
                                 f"{saved.get(key) or 'absent'}; pass a {saved_class} built with the saved architecture")


def check_network_fields(fields: dict, state: dict[str, Tensor], where: str) -> None:
    """Width and count fields of a file's configuration fit the size of its state dict.

    Every width of a saved network is the length of one of its tensors' axes
    (a bias, a weight's row or column, a buffer), so none can exceed the
    largest axis in the state dict, and a network has at most as many layers
    as tensors. Checked before any module is built (even on the ``meta``
    device), so a field claiming ``10⁹`` units or layers is rejected at once.

    :param fields: field name -> an int or a list of ints (``None`` skipped).
    """
    largest = max((max(t.shape, default=1) for t in state.values()), default=0)
    for name, value in fields.items():
        if value is None:
            continue
        widths = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(widths) > len(state):
            raise ValueError(f"{where}: configuration field {name} lists {len(widths)} layers but the file holds "
                             f"{len(state)} tensors; the file is corrupted")
        for i, width in enumerate(widths):
            label = f"{name}[{i}]" if isinstance(value, (list, tuple)) else name
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"{where}: configuration field {label} must be a positive int, got {width!r}")
            if width > largest:
                raise ValueError(f"{where}: configuration field {label} = {width} is larger than any tensor axis in the "
                                 f"saved weights ({largest}); the file is corrupted")


def check_state_shapes(expected: dict[str, tuple], found: dict[str, tuple], where: str, what: str) -> None:
    """The saved tensors' names and shapes are those the configuration implies (compared without allocating)."""
    if expected != found:
        key = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))[0]
        raise ValueError(f"{where}: the saved {what} do not fit the saved architecture ({key}: file {found.get(key)}, "
                         f"configuration {expected.get(key)}); the file is corrupted")



def check_targets(y: Any, shape: tuple[int, ...], num_classes: Optional[int] = None, name: str = "y") -> Tensor:
    """Observed targets: a finite real tensor of ``shape`` (regression), or integer class labels in
    ``0..num_classes − 1`` of ``shape`` (classification, ``num_classes`` given)."""
    if isinstance(y, np.ndarray) and y.dtype.kind in "fiub":
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, Tensor) or y.is_complex():
        raise TypeError(f"{name} must be None or a real torch.Tensor of shape {shape}, got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (one target per input), got {tuple(y.shape)}")
    if num_classes is not None:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"{name} holds class labels: pass an integer tensor ({name}.long()), got {y.dtype}")
        if bool(((y < 0) | (y >= num_classes)).any()):
            raise ValueError(f"{name}: class labels must be integers in 0..{num_classes - 1}; found {int(y.min())}..{int(y.max())}")
        return y
    _check_finite(y if y.is_floating_point() else y.double(), name, "drop the inputs whose targets are missing")
    return y


def check_generator(generator: Any, name: str = "generator") -> Optional[torch.Generator]:
    """``None`` (the global random state) or a :class:`torch.Generator`."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be None or a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    return generator


def _available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device`` (physical memory on the CPU), or ``None`` where it cannot be told."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return None


def check_memory(num_bytes: float, device: torch.device, name: str, value: Any, fix: str) -> None:
    """Refuse a request whose arrays alone would exceed the memory of ``device`` (named by the argument ``name``)."""
    available = _available_bytes(torch.device(device))
    if available is not None and num_bytes > available:
        raise ValueError(f"{name}={value!r} needs about {num_bytes / 2 ** 30:.3g} GiB, more than the {available / 2 ** 30:.3g} GiB "
                         f"of {torch.device(device).type} memory here; {fix}")


def _dense_layers(sizes: Sequence[int]) -> int:
    """Weights and biases of a chain of dense layers of the given widths."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def check_network_size(in_features: Optional[int], hidden: Sequence[int], loading_hidden: Optional[Sequence[int]],
                       num_factors: int, head_outputs: tuple[int, int], batch_size: int, dtype: torch.dtype,
                       device: torch.device) -> None:
    """Refuse a network whose weights with their gradients and Adam's two moments, plus one minibatch's
    activations forward and backward, would exceed the memory of ``device``; the error names the largest part
    (``hidden``, ``loading_hidden`` or ``num_factors``). ``in_features`` is ``None`` for a custom body (its
    own size is the caller's); ``head_outputs`` are the mean head's and the loading head's output counts."""
    itemsize = torch.finfo(dtype).bits // 8
    parts: dict[str, tuple[float, Any]] = {}
    features = 0
    if in_features is not None:
        hidden = tuple(hidden)
        parts["hidden"] = (4 * _dense_layers((in_features, *hidden)) + 2 * batch_size * sum(hidden), hidden)
        features = hidden[-1] if hidden else in_features
        if loading_hidden is not None:
            loading = tuple(loading_hidden)
            parts["loading_hidden"] = (4 * _dense_layers((in_features + 1, *loading)) + 2 * batch_size * sum(loading), loading)
            features += loading[-1]
    mean_outputs, loading_outputs = head_outputs
    # The E-step's float64 statistics and posterior hold a few q × q matrices.
    factor_words = 4 * (features + 1) * (mean_outputs + loading_outputs) + 2 * batch_size * loading_outputs
    parts["num_factors"] = (factor_words + 4 * num_factors ** 2 * 8 / itemsize, num_factors)
    name = max(parts, key=lambda k: parts[k][0])
    fixes = {"hidden": "use narrower or fewer layers, e.g. one layer of 50", "loading_hidden": "use a narrower loading body, e.g. one layer of 50",
             "num_factors": "use fewer factors, e.g. 5"}
    check_memory(itemsize * sum(v for v, _ in parts.values()), device, name, parts[name][1], fixes[name])


def check_body_output(body: nn.Module, x: Tensor, body_features: int) -> None:
    """A custom ``body`` maps the first rows of ``x`` (two where there are two, so that a body that mixes or drops
    rows is caught) to one ``(rows, body_features)`` tensor; otherwise one line naming ``body``/``body_features``
    instead of a shape error deep inside the heads."""
    rows = x[:2]
    try:
        with torch.no_grad():
            out = body(rows)
    except Exception as error:  # the user's module: any failure is its own, reported in one line
        first = str(error).splitlines()[0] if str(error) else "no message"
        raise ValueError(f"body: the custom body fails on x_design[:{len(rows)}] of shape {tuple(rows.shape)} "
                         f"({type(error).__name__}: {first}); give a body that takes (m, ...) inputs") from error
    if not isinstance(out, Tensor):
        raise ValueError(f"body: the custom body returns a {type(out).__name__}; it must return one tensor of shape "
                         f"(m, body_features)")
    if out.dim() != 2 or out.shape[0] != len(rows):
        raise ValueError(f"body: the custom body maps x_design[:{len(rows)}] to shape {tuple(out.shape)}; it must "
                         f"return one row of features per input, shape ({len(rows)}, body_features)")
    if out.shape[1] != body_features:
        raise ValueError(f"body_features={body_features} but body maps x_design[:{len(rows)}] to {out.shape[1]} "
                         f"features; pass body_features={out.shape[1]}")


def check_not_input(path: str, name: str, inputs: dict[str, Optional[str]]) -> None:
    """``path`` (an output, named ``name``) is none of the ``inputs`` (name -> path): writing it would destroy an input."""
    for other, source in inputs.items():
        if source is None or not os.path.exists(source) or not os.path.exists(path):
            continue
        if os.path.samefile(path, source):
            raise ValueError(f"{name} {path!r} is the {other} file: writing it would overwrite the input; give {name} a new file name")


# ------------------------------------------------------------------ networks and their training
def check_networks(nets) -> None:
    """A non-empty sequence of modules of one architecture with trainable parameters (:func:`pyro_dlf.training.fit_networks`)."""
    if isinstance(nets, nn.Module) or not isinstance(nets, Sequence) or not nets:
        raise TypeError("nets must be a non-empty sequence of torch.nn.Module (e.g. a list or nn.ModuleList)")
    for k, net in enumerate(nets):
        if not isinstance(net, nn.Module):
            raise TypeError(f"nets[{k}] must be a torch.nn.Module, got {type(net).__name__}")
    shapes = [(name, p.shape) for name, p in nets[0].named_parameters()]
    if not any(p.requires_grad for p in nets[0].parameters()):
        raise ValueError("net has no trainable parameters (requires_grad=True); nothing to fit")
    for k, net in enumerate(nets[1:], start=1):
        if [(name, p.shape) for name, p in net.named_parameters()] != shapes:
            raise ValueError(f"nets[{k}] has different parameters from nets[0]; all nets must share one architecture")


def check_training_inputs(t: object, name: str, integer_ok: bool = False) -> Tensor:
    """Inputs or targets of :func:`pyro_dlf.training.fit_networks`: a finite floating tensor with rows (int64 ids or
    labels when ``integer_ok``)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if not t.is_floating_point() and not (integer_ok and t.dtype == torch.long):
        kind = "a floating dtype" if not integer_ok else (
            "a floating dtype (or int64 token ids with vectorize=False)" if name == "x" else "a floating dtype (or int64 labels for the cross-entropy)")
        raise TypeError(f"{name} must have {kind}, got {t.dtype}; convert it with {name}.float()")
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean or impute them first")
    return t


def check_output_structure(task: str, num_outputs: Optional[int], covariance: str, centered: Optional[bool],
                           center_logits: bool) -> bool:
    """The teachers' outputs fit the asked structure (at least 2 classes; ``covariance="full"`` and centred
    loadings for several outputs only); returns whether full loadings are centred (default: for centred logits)."""
    if num_outputs is not None and num_outputs < 2:
        raise ValueError(f"teacher_outputs: classification needs at least 2 classes, got {num_outputs}")
    if task == "regression" and centered:
        raise ValueError("centered_loadings applies to classification logits (centred per input); drop it for regression")
    if task == "regression" and covariance != "separable" and num_outputs is None:
        raise ValueError("covariance='full' is an output-covariance structure for (n, m, c) teachers; drop it for one regression output")
    if centered is None:
        return covariance == "full" and task == "classification" and center_logits
    if centered and covariance != "full":
        raise ValueError("centered_loadings=True applies to covariance='full' only")
    return centered


def check_noise_given_factors(value: Any, task: str, num_outputs: Optional[int], noise_variances: Optional[Tensor]) -> None:
    """``noise_given_factors=True`` asks for the noise law that follows the factors (mathematics §6.3), which exists for
    regression teachers with one output and one noise variance each; refused elsewhere rather than ignored."""
    if value is not True:
        return
    if task != "regression" or num_outputs is not None:
        raise ValueError("noise_given_factors: the noise law that follows the factors is for regression teachers with one "
                         "output and one noise variance each; "
                         f"these are {'classification logits' if task != 'regression' else f'regression teachers with {num_outputs} outputs'}: "
                         "drop it (or pass noise_given_factors='auto', which applies it only where it exists)")
    if noise_variances is not None and noise_variances.dim() == 2:
        raise ValueError("noise_given_factors: the noise law that follows the factors needs one noise variance per teacher, "
                         "not per point: with (n, m) teacher_noise_variances the noise follows the inputs instead; drop it")


# ------------------------------------------------------------------ design points
def check_images(x: object) -> Tensor:
    """A floating tensor of images ``(N, C, H, W)``, ``N ≥ 1``, finite, in ``[0, 1]``."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"x must be a floating tensor of images (N, C, H, W) with N >= 1, got {getattr(x, 'shape', type(x).__name__)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values; clean the images first")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ValueError(f"x must lie in [0, 1], got values in [{low:g}, {high:g}]; rescale the images (e.g. divide 8-bit pixels by 255)")
    return x


def check_image_families(families: object, known: Sequence[str], shifts: Sequence[str]) -> tuple[str, ...]:
    """``families`` as a tuple of distinct names from ``known`` (:data:`pyro_dlf.design.images.IMAGE_FAMILIES`); the
    benchmark's ``shifts`` (rotation and noise) are refused."""
    if isinstance(families, str) or not isinstance(families, Sequence) or len(families) == 0:
        raise ValueError(f"families must be a non-empty sequence of names from {known}, got {families!r}; "
                         f"e.g. families=('translate', 'mix')")
    for name in families:
        if isinstance(name, str) and name.lower() in shifts:
            raise ValueError(f"families: {name!r} is not an augmentation family: rotation and additive Gaussian noise are "
                             f"the shifts the image benchmark tests; choose from {known}")
        if name not in known:
            raise ValueError(f"families: unknown family {name!r}; choose from {known}")
    if len(set(families)) != len(families):
        raise ValueError(f"families: {tuple(families)!r} repeats a name; list each family once")
    return tuple(families)


def check_strength(strength: object) -> float:
    """``strength`` as a float in ``(0, 1]``."""
    if isinstance(strength, bool) or not isinstance(strength, Real) or not 0 < float(strength) <= 1:
        raise ValueError(f"strength must be a number in (0, 1] (1: the full magnitudes), got {strength!r}")
    return float(strength)


def check_rows(x: Tensor, name: str = "x") -> None:
    """Data rows a design set is built from: a finite floating ``(n, D)`` tensor with ``n ≥ 2``."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a floating tensor of shape (n, D) with n >= 2, got {getattr(x, 'shape', x)!r}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean or impute them first")


# ------------------------------------------------------------------ covariances and diagnostics
def check_square_matrix(K: Tensor, name: str) -> None:
    """A finite real square matrix ``(m, m)``."""
    if not isinstance(K, Tensor) or K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square matrix (m, m), got {getattr(K, 'shape', type(K).__name__)}")
    check_design_points(K, name, fix="a covariance has finite entries")  # a real floating-point matrix without NaN or Inf


def check_array(value: Any, name: str, dim: int, shape: str) -> Tensor:
    """A finite real floating tensor with ``dim`` dimensions (``shape`` says which, e.g. ``"(m, q)"``)."""
    value = _as_float_tensor(value, name)
    if value.dim() != dim:
        raise ValueError(f"{name} must be a floating tensor {shape}, got shape {tuple(value.shape)}")
    _check_finite(value, name, "pass finite values")
    return value


def check_inference_data(idata: Any, groups: dict[str, str], var_names: Any = None, group: str = "posterior") -> None:
    """``idata`` is an ``arviz.InferenceData`` holding every group in ``groups`` (name -> how to get it), and the
    ``var_names`` asked for (a name or a list) are variables of ``group``: one line naming the argument instead of
    arviz's error or its attempt to open a string as a file."""
    if not callable(getattr(idata, "groups", None)):
        raise TypeError(f"idata must be an arviz.InferenceData, e.g. from pyro_dlf.diagnostics.to_inference_data, "
                        f"got {type(idata).__name__}")
    present = set(idata.groups())
    for name, fix in groups.items():
        if name not in present:
            raise ValueError(f"idata has no {name!r} group ({', '.join(sorted(present)) or 'none'}); {fix}")
    if group not in present:
        raise ValueError(f"group: idata has no {group!r} group; choose one of {', '.join(sorted(present))}")
    if var_names is not None:
        names = [var_names] if isinstance(var_names, str) else list(var_names)
        known = set(getattr(idata, group).data_vars)
        # arviz reads a leading "~" as "all but this variable".
        missing = [n for n in names if not isinstance(n, str) or n.removeprefix("~") not in known]
        if missing:
            raise ValueError(f"var_names: {missing} not in idata's {group!r} group; choose from {sorted(known)}")


def check_observed_targets(observed: Any, task: str, function: Optional[Tensor], draws: Optional[Tensor]) -> None:
    """One-line errors for held-out targets that do not fit the draws (``function``, else ``y``)."""
    if function is not None:
        expected = tuple(function.shape[1:2]) if task == "classification" else tuple(function.shape[1:])
    else:
        expected = tuple(draws.shape[1:]) if draws is not None else None
    if not isinstance(observed, Tensor) or (expected is not None and tuple(observed.shape) != expected):
        raise ValueError(f"observed must be a tensor of shape {expected or '(m,)'}, one target per input")
    if not torch.isfinite(observed.double()).all():
        raise ValueError("observed must be finite; drop the inputs whose targets are missing")
    if task == "classification" and function is not None:
        labels = observed.double()
        if (labels != labels.round()).any() or (labels < 0).any() or (labels >= function.shape[-1]).any():
            raise ValueError(f"observed: class labels must be integers in 0..{function.shape[-1] - 1}")


# ------------------------------------------------------------------ the model
def check_factor_model(num_factors, num_outputs, in_features, centered_loadings, covariance, covariances: Sequence[str],
                       activation, activations, noise_variance, distance_anchors) -> tuple:
    """The structure of a :class:`~pyro_dlf.models.DeepLatentFactor`: ``(num_factors, num_outputs, in_features,
    centered_loadings, distance_anchors)``, normalized, with the covariance and activation among their choices."""
    num_factors = check_int(num_factors, "num_factors", 1, fix="e.g. num_factors=10")
    num_outputs = check_int(num_outputs, "num_outputs", 1, allow_none=True, fix="None for one output, or the number of classes")
    in_features = check_int(in_features, "in_features", 1, allow_none=True, fix="the width of the inputs (m, d): d")
    centered_loadings = check_flag(centered_loadings, "centered_loadings")
    if covariance not in covariances:
        raise ValueError(f"covariance must be one of {covariances}, got {covariance!r}")
    if covariance != "separable" and num_outputs is None:
        raise ValueError(f"covariance={covariance!r} is a class-covariance structure: it needs num_outputs=c (a multivariate model)")
    if covariance == "full" and num_outputs is not None and num_outputs < 2:
        raise ValueError("num_outputs=1 with covariance='full' is the univariate model: use num_outputs=None")
    if centered_loadings and (num_outputs is None or covariance != "full"):
        raise ValueError("centered_loadings applies to the full multivariate model only (num_outputs=c, covariance='full')")
    if activation not in activations:
        raise ValueError(f"activation must be one of {sorted(activations)}, got {activation!r}")
    check_real(noise_variance, "noise_variance", 0, fix="the initial nugget σ_f², e.g. noise_variance=1.0")
    distance_anchors = check_int(distance_anchors, "distance_anchors", 1, allow_none=True,
                                 fix="the number of data rows the distance feature measures from, e.g. 256")
    return num_factors, num_outputs, in_features, centered_loadings, distance_anchors
