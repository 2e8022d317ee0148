"""Property-based checks of the public entry points' input checks (hypothesis).

For any bad value of one argument of :func:`pyro_dlf.distill` (or :func:`pyro_dlf.distributed.distill_stream`),
the rest of the call being valid, the call raises ``ValueError`` or ``TypeError`` whose message names the
argument -- never another exception type, never a fit. The data are tiny and every search is derandomized,
so the examples are the same on every run.
"""

import math
import numbers
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pyro_dlf
from pyro_dlf.data import TensorStream
from pyro_dlf.distributed import distill_stream

SETTINGS = settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])

N, M = 4, 20  # M below the 23 points a held-out body comparison needs: hidden="auto" is refused
_g = torch.Generator().manual_seed(0)
X = torch.linspace(-2, 2, M).unsqueeze(-1)
F = torch.sin(X.T) + 0.3 * torch.randn(N, 1, generator=_g) * torch.cos(X.T) + 0.05 * torch.randn(N, M, generator=_g)
V = torch.linspace(0.01, 0.02, N)
BASE = dict(num_factors=1, teacher_noise_variances=V, num_iterations=1, mmd_steps=1, progress=False)

#: Scalars a caller might pass by mistake.
BAD_SCALARS = [math.nan, math.inf, -math.inf, -1, -0.5, 0, 0.0, 1.5, 7, True, False, None, "", "x", "auto", "cpu", b"1",
               np.float64(math.nan), np.int64(-3)]


def _int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))


def _flag(v):
    return isinstance(v, (bool, np.bool_))


#: Which values of each argument are valid in BASE's call (a valid value is not a counterexample).
VALID = {
    "x_design": lambda v: False,
    "teacher_outputs": lambda v: False,
    "num_factors": lambda v: v == "auto" or (_int(v) and v >= 1),
    "teacher_noise_variances": lambda v: False,
    "observed": lambda v: v is None,
    "held_out": lambda v: v is None,
    "task": lambda v: v is None or v == "regression",
    "covariance": lambda v: v is None or v == "separable",
    "centered_loadings": lambda v: v is None or v is False or v is np.False_,
    "hidden": lambda v: False,  # no scalar is a list of widths; "auto" needs more design points than M
    "validation_fraction": lambda v: _real(v) and 0 < v < 1,
    "training_length": lambda v: _real(v) and 0 < v <= 1,
    "loading_hidden": lambda v: v is None,
    "body": lambda v: v is None,
    "body_features": lambda v: v is None,
    "activation": lambda v: False,
    "num_iterations": lambda v: _int(v) and v >= 0,
    "num_m_steps": lambda v: v is None or (_int(v) and v >= 1),
    "batch_size": lambda v: _int(v) and v >= 1,
    "lr": lambda v: _real(v) and v > 0,
    "lr_decay": lambda v: _real(v) and 0 < v <= 1,
    "warmup": lambda v: _real(v) and 0 <= v <= 1,
    "estep": lambda v: v in ("exact", "minibatch") if isinstance(v, str) else False,
    "init": lambda v: v in ("mmd", "random") if isinstance(v, str) else False,
    "mmd_steps": lambda v: _int(v) and v >= 0,
    "mmd_penalty": lambda v: _real(v) and v > 0,
    "center_logits": _flag,
    "include_nugget": _flag,
    "noise_given_factors": lambda v: _flag(v) or v == "auto",
    "teacher_batch_size": lambda v: _int(v) and v >= 1,
    "seed": lambda v: _int(v) and v >= 0,
    "progress": _flag,
    "device": lambda v: v is None or v == "cpu",
    "dtype": lambda v: False,
}


#: Ablation switches: not arguments of distill, checked by the same options (pyro_dlf.fitting.check_options).
ABLATION = ("estep", "init", "mmd_penalty")


def _call(name, value):
    arguments = {"x_design": X, "teacher_outputs": F, **BASE, name: value}
    if name in ABLATION:
        from pyro_dlf.api import distill_with
        from pyro_dlf.fitting import TeacherInputs

        noise = arguments.pop("teacher_noise_variances")
        return distill_with(arguments.pop("x_design"), arguments.pop("teacher_outputs"), arguments, TeacherInputs(noise))
    return pyro_dlf.distill(arguments.pop("x_design"), arguments.pop("teacher_outputs"), **arguments)


def _refused(call, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. num_factors beyond the teachers: said, not the point here
        with pytest.raises((ValueError, TypeError), match=rf"(?<![\w-]){re.escape(name)}(?!\w)"):
            call()


@SETTINGS
@given(name=st.sampled_from(sorted(VALID)), value=st.sampled_from(BAD_SCALARS))
def test_a_bad_scalar_for_any_argument_of_distill_is_refused_by_name(name, value):
    assume(not VALID[name](value))
    _refused(lambda: _call(name, value), name)


NUMERIC = ["validation_fraction", "training_length", "lr", "lr_decay", "warmup", "mmd_penalty"]
COUNTS = ["num_factors", "num_iterations", "num_m_steps", "batch_size", "mmd_steps", "teacher_batch_size", "seed"]


@SETTINGS
@given(name=st.sampled_from(NUMERIC), value=st.floats(allow_nan=True, allow_infinity=True))
def test_any_out_of_range_float_is_refused_by_name(name, value):
    assume(not VALID[name](value))
    _refused(lambda: _call(name, value), name)


@SETTINGS
@given(name=st.sampled_from(COUNTS), value=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True, allow_infinity=True)))
def test_any_non_positive_or_fractional_count_is_refused_by_name(name, value):
    assume(not VALID[name](value))
    _refused(lambda: _call(name, value), name)


#: Bad shapes of the array arguments: (argument, shape); values are random floats (booleans for masks).
SHAPES = [
    ("x_design", (M,)), ("x_design", (M, 1, 1)), ("x_design", (0, 1)), ("x_design", (1, 1)), ("x_design", ()),
    ("x_design", (M - 1, 1)),
    ("teacher_outputs", (N,)), ("teacher_outputs", (N, M + 1)), ("teacher_outputs", (1, M)), ("teacher_outputs", (N, M, 1, 1)),
    ("teacher_outputs", ()), ("teacher_outputs", (N, 0)),
    ("teacher_noise_variances", (N + 1,)), ("teacher_noise_variances", (N - 1,)), ("teacher_noise_variances", (N, 2)),
    ("teacher_noise_variances", (N, M, 1)), ("teacher_noise_variances", ()),
    ("observed", (N, M + 1)), ("observed", (N,)), ("observed", (M, N)),
    ("held_out", (N, M - 1)), ("held_out", (N,)), ("held_out", (N, M, 1)),
]


@SETTINGS
@given(case=st.sampled_from(SHAPES), seed=st.integers(0, 2 ** 16))
def test_a_bad_shape_for_any_array_argument_is_refused_by_name(case, seed):
    name, shape = case
    g = torch.Generator().manual_seed(seed)
    if name in ("observed", "held_out"):
        value = torch.rand(shape, generator=g) < 0.7
    else:
        value = torch.rand(shape, generator=g) + 0.01  # positive: a variance would pass but for its shape
    _refused(lambda: _call(name, value), name)


STREAM_VALID = {
    "num_factors": VALID["num_factors"],
    "teacher_noise_variances": lambda v: False,
    "task": lambda v: v == "regression",
    "covariance": lambda v: v is None,
    "hidden": lambda v: False,
    "loading_hidden": lambda v: v is None,
    "num_iterations": lambda v: _int(v) and v >= 1,
    "lr": VALID["lr"],
    "lr_decay": VALID["lr_decay"],
    "warmup": VALID["warmup"],
    "seed": VALID["seed"],
    "progress": _flag,
    "device": VALID["device"],
    "dtype": lambda v: False,
}


@SETTINGS
@given(name=st.sampled_from(sorted(STREAM_VALID)), value=st.sampled_from(BAD_SCALARS))
def test_a_bad_scalar_for_any_argument_of_distill_stream_is_refused_by_name(name, value):
    assume(not STREAM_VALID[name](value))
    options = {"num_factors": 1, "teacher_noise_variances": V, "num_iterations": 1, "progress": False, name: value}
    _refused(lambda: distill_stream(TensorStream(X, F, 5), **options), name)


@SETTINGS
@given(value=st.sampled_from(BAD_SCALARS + [[1, 2], (X, F), [(X, None)], [(None, F)], [(X[:5], F)]]))
def test_a_bad_stream_is_refused_by_name(value):
    _refused(lambda: distill_stream(value, num_factors=1, teacher_noise_variances=V, num_iterations=1, progress=False), "stream")


@SETTINGS
@given(value=st.one_of(st.sampled_from(BAD_SCALARS), st.floats(allow_nan=True, allow_infinity=True)))
def test_a_bad_initial_nugget_of_the_model_is_refused_by_name(value):
    from pyro_dlf.models import DeepLatentFactor

    assume(not (_real(value) and value > 0))
    _refused(lambda: DeepLatentFactor(1, 2, (4,), noise_variance=value), "noise_variance")


@SETTINGS
@given(value=st.sampled_from(BAD_SCALARS))
def test_a_bad_teacher_batch_size_of_evaluate_teachers_is_refused_by_name(value):
    assume(not (_int(value) and value >= 1))
    teachers = [lambda xb, i=i: F[i, : len(xb)] for i in range(N)]
    _refused(lambda: pyro_dlf.evaluate_teachers(teachers, X, batch_size=value), "batch_size")
