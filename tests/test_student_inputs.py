"""Property-based checks of the student's public entry points: every bad value raises a ValueError or
TypeError that names the argument, never another exception and never a silent result."""

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_dlf import Student

from synthetic import random_dlf

FAST = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Values of the wrong kind for any numeric argument (no bytes: those are file names).
OTHER_KINDS = st.one_of(st.none(), st.text(max_size=4), st.lists(st.integers(), max_size=2), st.just(object()),
                        st.just(1 + 2j), st.just(torch.tensor([1.0, 2.0])))


def _regression_student():
    return Student(random_dlf(dtype=torch.float32), "regression", 5.0, 4.0)


def _raises_naming(call, *names):
    """Run ``call``; it must raise a ValueError or TypeError whose message names one of ``names``."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert any(name in str(info.value) for name in names), str(info.value)
    assert "\n" not in str(info.value)


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1


@FAST
@given(st.one_of(st.integers(-5, 12), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), OTHER_KINDS))
def test_num_samples(value):
    student, x = _regression_student(), torch.randn(3, 2)
    if _is_count(value) or value is None:  # None: no draws for the summaries, 1,000 for return_samples
        pred = student.predict(x, value, return_samples=True)
        assert pred.function_samples.shape == (value or 1000, 3) and torch.isfinite(pred.total_variance).all()
    else:
        _raises_naming(lambda: student.predict(x, value), "num_samples")


@FAST
@given(st.one_of(st.none(), st.integers(-3, 8), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), OTHER_KINDS))
def test_batch_size(value):
    student, x = _regression_student(), torch.randn(5, 2)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        torch.manual_seed(0)
        pred = student.predict(x, 4, batch_size=value, return_samples=True)
        torch.manual_seed(0)
        whole = student.predict(x, 4, batch_size=5, return_samples=True)
        torch.testing.assert_close(pred.function_samples, whole.function_samples)
        torch.testing.assert_close(pred.epistemic_variance, whole.epistemic_variance)
    else:
        _raises_naming(lambda: student.predict(x, 4, batch_size=value), "batch_size")


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 6), st.booleans(), OTHER_KINDS)


def _valid_number(value, low: float, above: bool = True) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > low if above else value >= low))


@FAST
@given(NUMBERS, NUMBERS)
def test_noise_prior(concentration, rate):
    """Builds exactly when a > 0 and b > 0 are finite numbers; E[σ²] = b/(a − 1), infinite for a <= 1."""
    dlf = random_dlf(dtype=torch.float32)
    if _valid_number(concentration, 0.0) and _valid_number(rate, 0.0):
        student = Student(dlf, "regression", concentration, rate)
        expected = rate / (concentration - 1) if concentration > 1 else math.inf
        assert student.aleatoric_variance == pytest.approx(expected)
    else:
        _raises_naming(lambda: Student(dlf, "regression", concentration, rate), "noise_concentration", "noise_rate")


@FAST
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.booleans(), OTHER_KINDS),
       st.one_of(st.none(), st.just(torch.eye(3) / 3), st.just(torch.eye(3)), st.just([[1.0]]), st.text(max_size=2)))
def test_noise_factor_law(exponent, gram):
    """β = 0 without a gram is the i.i.d. law; β ≠ 0 needs a valid gram; anything else is named."""
    dlf = random_dlf(dtype=torch.float32)
    call = lambda: Student(dlf, "regression", 5.0, 4.0, noise_factor_exponent=exponent, noise_factor_gram=gram)  # noqa: E731
    finite = _valid_number(exponent, -math.inf)
    valid_gram = isinstance(gram, torch.Tensor) and abs(float(gram.trace()) - 1.0) < 1e-6
    if finite and ((exponent == 0 and gram is None) or (exponent != 0 and valid_gram)):
        student = call()
        assert student.noise_factor_exponent == exponent and math.isfinite(student.aleatoric_variance)  # a = 5
    else:
        _raises_naming(call, "noise_factor_exponent", "noise_factor_gram")


NOT_PATHS = st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2), st.just(object()),
                      st.just(io.StringIO()), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@FAST
@given(NOT_PATHS)
def test_save_and_load_paths(value):
    student = _regression_student()
    _raises_naming(lambda: student.save(value), "path")
    _raises_naming(lambda: Student.load(value), "path")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "s.pt"
    _regression_student().save(path)
    return path


@FAST
@given(st.one_of(st.text(max_size=8), st.sampled_from(["cpu", "cpu:0", "cuda", "cuda:1", "meta", "gpu", "", "mps"]),
                 st.integers(), st.none(), st.just({"cuda:0": "cpu"}), st.just(lambda storage, location: storage)))
def test_map_location(saved, value):
    try:
        device = torch.device(value) if isinstance(value, str) else None
    except RuntimeError:
        device = None
    if device is not None and device.type == "cpu":
        assert Student.load(saved, map_location=value).dlf.loading_head.weight.device.type == "cpu"
    elif device is not None and device.type == "cuda" and torch.cuda.is_available() \
            and (device.index or 0) < torch.cuda.device_count():
        assert Student.load(saved, map_location=value).dlf.loading_head.weight.device.type == "cuda"
    else:
        _raises_naming(lambda: Student.load(saved, map_location=value), "map_location")


@FAST
@given(st.one_of(st.booleans(), st.integers(-1, 2), st.floats(), st.none(), st.text(max_size=3)))
def test_function_dist_include_nugget(value):
    student, x = _regression_student(), torch.randn(4, 2)
    if isinstance(value, bool):
        d = student.function_dist(x, include_nugget=value)
        assert d.event_shape == (4,) and torch.isfinite(d.covariance_matrix).all()
    else:
        _raises_naming(lambda: student.function_dist(x, include_nugget=value), "include_nugget")


@FAST
@given(st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.just(float("nan")), st.just(float("inf")),
                 st.just(-float("inf")), st.just(1e30), st.just(-1e30), st.just(-1e38), st.just(3e38)))
def test_prediction_inputs(value):
    """Moderate inputs give finite predictions, non-finite ones are named; huge ones give finite predictions
    (where the network saturates) or an error that names x -- never infinities."""
    student = _regression_student()
    x = torch.zeros(3, 2)
    x[1, 0] = value
    if not math.isfinite(value):
        _raises_naming(lambda: student.predict(x, 5), "x contains")
        return
    try:
        pred = student.predict(x, 5)
    except ValueError as err:
        assert abs(value) > 1e6 and str(err).startswith("x has values up to") and "overflow float32" in str(err)
    else:
        assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.total_variance).all()

