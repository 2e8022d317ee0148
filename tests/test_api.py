"""pyro_dlf.distill: the one-call API and its input checks."""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch

import pyro_dlf
from pyro_dlf import Student

from synthetic import synthetic_teachers

FAST = dict(num_iterations=3, mmd_steps=5, progress=False)


def _regression_data(n=6):
    truth, x, f = synthetic_teachers(n, num_points=20)
    return x, f, torch.linspace(0.01, 0.02, n)


def test_regression_from_tensor_and_from_callables_agree():
    x, f, v = _regression_data()
    from_tensor = pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, **FAST)
    teachers = [lambda xb, i=i: f[i][: len(xb)] if len(xb) == len(x) else None for i in range(f.shape[0])]
    from_callables = pyro_dlf.distill(x, teachers, num_factors=2, teacher_noise_variances=v, design="given", **FAST)
    assert isinstance(from_tensor, Student) and from_tensor.task == "regression"
    assert torch.equal(from_tensor.dlf.loading(x), from_callables.dlf.loading(x))  # same seed, same data
    assert len(from_tensor.history) == FAST["num_iterations"] + 1


def test_callables_are_evaluated_in_batches():
    x, f, v = _regression_data()
    calls = []

    def teacher(i):
        def fn(xb):
            calls.append(len(xb))
            return torch.sin(3 * xb).squeeze(-1) * (1 + 0.1 * i)
        return fn

    values = pyro_dlf.evaluate_teachers([teacher(i) for i in range(3)], x, batch_size=8)
    assert values.shape == (3, 20) and max(calls) == 8


def test_classification_centres_logits():
    truth, x, f = synthetic_teachers(5, num_points=20, num_outputs=3, num_factors=2)
    student = pyro_dlf.distill(x, f + 7.0, num_factors=2, **FAST)
    assert student.task == "classification"
    # The teachers are centred per input before fitting (a +7 shift is removed), and the student says so.
    assert student.dlf.output_loc.sum().abs() < 1e-5
    assert student.centered_logits
    pred = student.predict(x, 20)
    assert pred.probs.shape == (20, 3)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda x, f, v: (x, f.clone().index_put_((torch.tensor(0), torch.tensor(3)), torch.tensor(float("nan"))), v), ValueError, "teacher_outputs contains 1 non-finite"),
        (lambda x, f, v: (x, f.clone().fill_(float("inf")), v), ValueError, "non-finite"),
        (lambda x, f, v: (x[:-1], f, v), ValueError, "must match the first of x"),
        (lambda x, f, v: (x, f[:1], v[:1]), ValueError, "at least 2"),
        (lambda x, f, v: (x[:0], f[:, :0], v), ValueError, "x_design is empty"),
        (lambda x, f, v: (x, f.long(), v), TypeError, "teacher_outputs must have a floating-point dtype"),
        (lambda x, f, v: (x.int(), f, v), TypeError, "x_design must have a floating-point dtype"),
        (lambda x, f, v: (x, f.tolist(), v), TypeError, "teacher_outputs\\[0\\] is a list, not a callable"),
        (lambda x, f, v: (x, f, None), ValueError, "teacher_noise_variances"),
        (lambda x, f, v: (x, f, v[:2]), ValueError, "teacher_noise_variances has 2 values"),
        (lambda x, f, v: (x, f[..., None, None], v), ValueError, "shape"),
    ],
)
def test_bad_inputs_name_the_argument(mutate, error, match):
    x, f, v = _regression_data()
    x, f, v = mutate(x, f, v)
    with pytest.raises(error, match=match):
        pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, **FAST)


def test_too_many_factors_warns():
    x, f, v = _regression_data(n=3)
    with pytest.warns(UserWarning, match="num_factors=3 >= number of teachers=3"):
        pyro_dlf.distill(x, f, num_factors=3, teacher_noise_variances=v, **FAST)


def test_multivariate_factor_limit_counts_every_output():
    # (n − 1)·c columns span col(Φ): 3 teachers × 3 classes identify up to 6 factors.
    from pyro_dlf._validation import check_num_factors

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_num_factors(6, 3, num_outputs=3)
    with pytest.warns(UserWarning, match=r"num_factors=7 exceeds .* at most 6 directions"):
        check_num_factors(7, 3, num_outputs=3)


def test_full_covariance_factor_limit_is_teachers_minus_one():
    """Full: each teacher's whole (point, class) residual is one vector Φ z_i, so q ≤ n − 1 whatever c."""
    from pyro_dlf._validation import check_num_factors

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_num_factors(2, 3, num_outputs=3, covariance="full")
    with pytest.warns(UserWarning, match="num_factors=3 >= number of teachers=3"):
        check_num_factors(3, 3, num_outputs=3, covariance="full")
    truth, x, f = synthetic_teachers(4, num_points=20, num_outputs=3, num_factors=2)
    with pytest.warns(UserWarning, match="num_factors=4 >= number of teachers=4"):
        pyro_dlf.distill(x, f, num_factors=4, covariance="full", **FAST)


def test_full_covariance_distill_and_its_options():
    truth, x, f = synthetic_teachers(6, num_points=20, num_outputs=3, num_factors=2, covariance="full")
    student = pyro_dlf.distill(x, f, num_factors=2, covariance="full", **FAST)
    assert student.dlf.covariance_type == "full" and student.dlf.centered_loadings  # centred logits → projected loadings
    assert student.dlf.loading(x).shape == (20, 3, 2)
    assert student.predict(x, 10).probs.shape == (20, 3)
    plain = pyro_dlf.distill(x, f, num_factors=2, covariance="full", centered_loadings=False, **FAST)
    assert not plain.dlf.centered_loadings
    with pytest.raises(ValueError, match="covariance must be 'separable' or 'full'"):
        pyro_dlf.distill(x, f, num_factors=2, covariance="diagonal", **FAST)
    with pytest.raises(ValueError, match="centered_loadings=True applies to covariance='full' only"):
        pyro_dlf.distill(x, f, num_factors=2, covariance="separable", centered_loadings=True, **FAST)
    # Classification defaults to the full covariance (chosen by the image benchmark's numbers).
    assert pyro_dlf.distill(x, f, num_factors=2, **FAST).dlf.covariance_type == "full"
    xr, fr, v = _regression_data()
    with pytest.raises(ValueError, match="covariance='full' is an output-covariance structure"):
        pyro_dlf.distill(xr, fr, num_factors=2, teacher_noise_variances=v, covariance="full", **FAST)


def test_classification_rejects_noise_variances_and_one_class():
    truth, x, f = synthetic_teachers(5, num_points=20, num_outputs=3, num_factors=2)
    with pytest.raises(ValueError, match="teacher_noise_variances is for regression"):
        pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=torch.ones(5), **FAST)
    with pytest.raises(ValueError, match="at least 2 classes"):
        pyro_dlf.distill(x, f[..., :1], num_factors=2, task="classification", **FAST)


class _Lambda(torch.nn.Module):
    """A custom body whose output is ``fn(linear(x))``: a stand-in for a user's module gone wrong."""

    def __init__(self, fn, in_features=1):
        super().__init__()
        self.linear, self.fn = torch.nn.Linear(in_features, 4), fn

    def forward(self, x):
        return self.fn(self.linear(x))


@pytest.mark.parametrize("body, body_features, match", [
    (torch.nn.Linear(1, 4), 3, r"body_features=3 but body maps x_design\[:2\] to 4 features; pass body_features=4"),
    (_Lambda(lambda h: h.unsqueeze(1)), 4, r"body: the custom body maps x_design\[:2\] to shape \(2, 1, 4\); it must return one row"),
    (_Lambda(lambda h: h[:1]), 4, r"body: the custom body maps x_design\[:2\] to shape \(1, 4\)"),
    (_Lambda(lambda h: (h,)), 4, r"body: the custom body returns a tuple; it must return one tensor"),
    (_Lambda(lambda h: h, in_features=5), 4, r"body: the custom body fails on x_design\[:2\] of shape \(2, 1\) \(RuntimeError: "),
])
def test_custom_body_that_does_not_fit_the_inputs_is_reported(body, body_features, match):
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match=match):
        pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, body=body, body_features=body_features, **FAST)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mmd_penalty=float("nan")), ValueError, r"mmd_penalty must be a finite number > 0"),
    (dict(estep="stochastic"), ValueError, r"estep must be 'exact' or 'minibatch'"),
    (dict(init="zeros"), ValueError, r"init must be 'mmd' or 'random'"),
    (dict(epochs=3), TypeError, r"unexpected keyword argument 'epochs'"),
])
def test_ablation_switches_are_checked_by_the_options_not_offered_by_distill(kwargs, error, match):
    """``estep``, ``init`` and ``mmd_penalty`` switch ablations (the lab reaches them through ``check_options``);
    ``distill`` does not take them."""
    import inspect

    from pyro_dlf.fitting import check_options

    from pyro_dlf.fitting.options import ARGUMENTS

    with pytest.raises(error, match=match):
        check_options(**kwargs)
    assert not {"estep", "init", "mmd_penalty"} & set(inspect.signature(pyro_dlf.distill).parameters)
    data = {"x_design", "teacher_outputs", "teacher_noise_variances", "observed", "held_out"}
    assert set(ARGUMENTS) == set(inspect.signature(pyro_dlf.distill).parameters) - data
    with pytest.raises(TypeError, match="unexpected keyword argument 'hidden_candidates'"):
        check_options(hidden_candidates=((4,),))  # a derived field, not an option


@pytest.mark.parametrize("kwargs, match", [(dict(dtype=torch.float16), "dtype"), (dict(num_iterations=-1), "num_iterations"), (dict(lr_decay=0.0), "lr_decay"), (dict(warmup=2.0), "warmup"), (dict(task="survival"), "task")])
def test_bad_options(kwargs, match):
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match=match):
        pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, **{**FAST, **kwargs})


def test_empty_teacher_list():
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match="empty list"):
        pyro_dlf.distill(x, [], num_factors=2, teacher_noise_variances=v, **FAST)


def test_distill_leaves_the_callers_random_state_alone_and_is_reproducible():
    x, f, v = _regression_data()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, seed=4, **FAST)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is where it was
    b = pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, seed=4, **FAST)
    assert a.history == b.history
    assert torch.equal(a.dlf.loading(x), b.dlf.loading(x))


def test_numpy_arrays_are_accepted_and_module_teachers_are_evaluated_in_eval_mode():
    x, f, v = _regression_data()
    from_numpy = pyro_dlf.distill(x.numpy(), f.numpy(), num_factors=2, teacher_noise_variances=v.numpy(), seed=1, **FAST)
    from_torch = pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, seed=1, **FAST)
    assert from_numpy.history == pytest.approx(from_torch.history, rel=1e-6)
    assert from_numpy.predict(x.numpy(), 5).mean.shape == (x.shape[0],)

    torch.manual_seed(0)
    teachers = [torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1)) for _ in range(3)]
    first = pyro_dlf.evaluate_teachers(teachers, x)
    second = pyro_dlf.evaluate_teachers(teachers, x)
    assert torch.equal(first, second)  # dropout off: one function per teacher
    assert all(t.training for t in teachers)  # and put back in training mode


def test_silent_garbage_is_reported():
    """Values that overflow float32 sums of squares are refused; a diverged fit (learning rate 1e6) warns."""
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match=r"teacher_outputs has values up to .* overflow float32 .* dtype=torch.float64"):
        pyro_dlf.distill(x, f * 1e18, num_factors=2, teacher_noise_variances=v, **FAST)
    with pytest.raises(ValueError, match="x_design has values up to"):
        pyro_dlf.distill(x * 1e19, f, num_factors=2, teacher_noise_variances=v, **FAST)
    pyro_dlf.distill(x.double(), (f * 1e18).double(), num_factors=2, teacher_noise_variances=v, dtype=torch.float64, **FAST)
    with pytest.warns(RuntimeWarning, match="the fit looks diverged"):
        pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, lr=1e6, num_iterations=10, mmd_steps=20, progress=False)


def test_integer_design_points_reach_a_custom_body_unchanged():
    """Token ids (m, L) are the natural input of a text body: integer x passes to a custom body as it is,
    through distill, the Pyro model, the predictive and save/load; the default MLP body still refuses it."""
    import io

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(40, 6, mode="mean", padding_idx=0)

        def forward(self, ids):
            assert ids.dtype == torch.long
            return self.embed(ids)

    torch.manual_seed(0)
    ids = torch.randint(1, 40, (80, 5))
    logits = torch.randn(4, 80, 3) + torch.nn.functional.one_hot(ids[:, 0] % 3, 3)
    student = pyro_dlf.distill(ids, logits, num_factors=3, body=Bag(), body_features=6, num_iterations=3, mmd_steps=3, progress=False)
    assert student.predict(ids[:7]).probs.shape == (7, 3)
    draws = pyro.infer.Predictive(student, num_samples=4)(ids[:7])["y"]
    assert draws.shape == (4, 7) and draws.dtype == torch.long
    buffer = io.BytesIO()
    student.save(buffer)
    buffer.seek(0)
    again = Student.load(buffer, body=Bag())
    torch.testing.assert_close(again.dlf.mean(ids[:7]), student.dlf.mean(ids[:7]))
    with pytest.raises(TypeError, match="x_design must have a floating-point dtype"):
        pyro_dlf.distill(ids, logits, num_factors=3, num_iterations=1, progress=False)


# ------------------------------------------------------------------ bad inputs, said clearly and once
def _callables(f, transform=lambda out: out):
    return [lambda xb, i=i: transform(f[i, : len(xb)]) for i in range(f.shape[0])]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=float("nan")), ValueError, r"lr must be a finite number > 0, got nan"),
        (dict(lr=float("inf")), ValueError, r"lr must be a finite number > 0, got inf"),
        (dict(lr=0.0), ValueError, r"lr must be a finite number > 0"),
        (dict(lr=True), TypeError, r"lr must be a finite number > 0, got True"),
        (dict(device="tpu9"), ValueError, r"device='tpu9' is not a device torch knows; pass device='cpu'"),
        (dict(teacher_batch_size=0), ValueError, r"teacher_batch_size must be a positive int, got 0"),
        (dict(teacher_batch_size=True), TypeError, r"teacher_batch_size must be a positive int, got True"),
        (dict(num_factors=0), ValueError, r"num_factors must be 'auto' .* or a positive int such as 2, got 0"),
        (dict(num_factors=2.5), TypeError, r"num_factors must be 'auto' .* got 2.5"),
        (dict(num_factors="3"), ValueError, r"num_factors must be 'auto' .* got '3'"),
        (dict(num_iterations=True), TypeError, r"num_iterations must be a non-negative int, got True"),
        (dict(seed=-1), ValueError, r"seed must be a non-negative int"),
        (dict(include_nugget="yes"), TypeError, r"include_nugget must be True or False"),
        (dict(body_features=4), ValueError, r"body_features is the output width of a custom body"),
        (dict(hidden=(50, 0)), ValueError, r"hidden must be positive widths"),
        (dict(teacher_noise_variances=torch.tensor([0.01, 0.02, float("inf"), 0.01, 0.01, 0.01])), ValueError,
         r"teacher_noise_variances must be positive and finite, but 1 value\(s\) are not \(the first, at index 2, is inf\)"),
        (dict(teacher_noise_variances=torch.tensor([0.01, float("nan"), 0.02, 0.01, 0.01, 0.01])), ValueError,
         r"teacher_noise_variances must be positive and finite.*index 1, is nan"),
        (dict(teacher_noise_variances=torch.tensor([0.01, 0.0, 0.02, 0.01, 0.01, 0.01])), ValueError,
         r"teacher_noise_variances must be positive and finite.*index 1, is 0"),
        (dict(teacher_noise_variances="0.01"), TypeError, r"teacher_noise_variances must be 6 positive numbers"),
        # Sizes the memory here cannot hold are refused before the network is built (not an allocator's error).
        (dict(hidden=(10 ** 12,)), ValueError, r"hidden=\(1000000000000,\) needs about .* GiB, more than .*; use narrower"),
        (dict(loading_hidden=(10 ** 12,)), ValueError, r"loading_hidden=\(1000000000000,\) needs about .*; use a narrower"),
        (dict(num_factors=10 ** 7), ValueError, r"num_factors=10000000 needs about .*; use fewer factors"),
        # Asked for where it does not exist, the noise law that follows the factors is refused, not ignored.
        (dict(teacher_noise_variances=torch.full((6, 20), 0.01), noise_given_factors=True), ValueError,
         r"noise_given_factors: .* needs one noise variance per teacher, not per point"),
    ],
)
def test_bad_options_are_refused_before_any_work_with_their_name_and_fix(kwargs, error, match):
    x, f, v = _regression_data()
    with pytest.raises(error, match=match):
        pyro_dlf.distill(x, f, **{"num_factors": 2, "teacher_noise_variances": v, **FAST, **kwargs})


def test_noise_given_factors_true_is_refused_for_logits_and_numpy_scalars_are_options():
    _, x, logits = synthetic_teachers(6, num_points=20, num_outputs=3)
    with pytest.raises(ValueError, match=r"noise_given_factors: .* these are classification logits: drop it"):
        pyro_dlf.distill(x, logits, num_factors=2, noise_given_factors=True, **FAST)
    x, f, v = _regression_data()
    # NumPy scalars are numbers like any other (the options' checks take numbers.Real / numbers.Integral).
    student = pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, training_length=np.float32(0.5),
                               loading_hidden=(np.int64(4),), **FAST)
    assert student.dlf.loading_hidden == (4,)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so():
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match=r"device='cuda' but torch.cuda.is_available\(\) is False; pass device='cpu'"):
        pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, device="cuda", **FAST)


def test_teacher_callables_that_return_no_tensor_or_complex_values_are_named():
    x, f, v = _regression_data()
    for transform, error, match in [
        (lambda out: None, TypeError, r"teacher_outputs\[0\] returned None, not a tensor"),
        (lambda out: out.tolist(), TypeError, r"teacher_outputs\[0\] returned list, not a tensor"),
        (lambda out: out[:-1], ValueError, r"teacher_outputs\[0\] returned shape \(19,\) for a batch of 20 design points"),
        (lambda out: out.to(torch.complex64), TypeError, r"teacher_outputs\[0\]\(x\) holds complex values"),
    ]:
        with pytest.raises(error, match=match):
            pyro_dlf.distill(x, _callables(f, transform), num_factors=2, teacher_noise_variances=v, **FAST)
    # NumPy outputs are real values too: accepted, and the same fit as the tensor's.
    from_numpy = pyro_dlf.distill(x, _callables(f, lambda out: out.numpy()), num_factors=2, teacher_noise_variances=v,
                                  design="given", **FAST)
    assert from_numpy.history == pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=v, **FAST).history


def test_complex_teacher_values_are_refused_not_truncated():
    x, f, v = _regression_data()
    for values in (f.to(torch.complex64), f.numpy().astype(np.complex64)):
        with pytest.raises(TypeError, match=r"teacher_outputs holds complex values .* pass teacher_outputs.real"):
            pyro_dlf.distill(x, values, num_factors=2, teacher_noise_variances=v, **FAST)


def test_one_design_point_and_identical_teachers_are_refused():
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match=r"x_design has 1 design point: distilling needs at least 2"):
        pyro_dlf.distill(x[:1], f[:, :1], num_factors=2, teacher_noise_variances=v, **FAST)
    with pytest.raises(ValueError, match=r"teacher_outputs: every teacher gives the same values"):
        pyro_dlf.distill(x, f[:1].expand_as(f).clone(), num_factors=2, teacher_noise_variances=v, **FAST)


def test_auto_factors_for_teachers_that_share_no_point_say_why_there_is_no_spread():
    x, f, v = _regression_data()
    observed = torch.arange(20).unsqueeze(0) % 6 == torch.arange(6).unsqueeze(1)  # teacher i sees points i, i + 6, ...
    with pytest.raises(ValueError, match=r"no spread around their mean at any design point .* no point is observed by two"):
        pyro_dlf.distill(x, f, num_factors="auto", teacher_noise_variances=v, observed=observed, **FAST)


def test_tiny_teacher_values_fit_in_float64_and_are_refused_in_float32_with_the_fix():
    """The fit is scale-free: values 1e-30 times as large give the same student, up to the scale, in float64.

    The negative log-likelihood per value shifts by exactly log(1e30) (the density of values 1e-30 times as
    large), and every variance scales by 1e-60; float64 rounding is the only difference. In float32 their
    squares underflow: refused, naming the remedy."""
    x, f, v = _regression_data()
    options = dict(num_factors=2, dtype=torch.float64, num_iterations=5, mmd_steps=10, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "diverged" warning
        small = pyro_dlf.distill(x.double(), f.double() * 1e-30, teacher_noise_variances=v.double() * 1e-60, **options)
    plain = pyro_dlf.distill(x.double(), f.double(), teacher_noise_variances=v.double(), **options)
    shift = 30 * math.log(10)
    assert [h + shift for h in small.history] == pytest.approx(plain.history, rel=1e-6)
    xd = x.double()
    torch.testing.assert_close(small.dlf.loading(xd).pow(2).sum(-1) * 1e60, plain.dlf.loading(xd).pow(2).sum(-1), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"teacher_outputs: the teachers differ by only .* too small for float32.*dtype=torch.float64"):
        pyro_dlf.distill(x, f * 1e-30, num_factors=2, teacher_noise_variances=v, **FAST)


def test_design_inputs_whose_squares_overflow_are_refused_at_the_boundary():
    x, f, v = _regression_data()
    with pytest.raises(ValueError, match=r"x_design has values up to 2e\+30: their sums of squares overflow float32 .* dtype=torch.float64"):
        pyro_dlf.distill(x * 1e30, f, num_factors=2, teacher_noise_variances=v, **FAST)


def _noise(n):
    return torch.linspace(0.01, 0.02, n)


def _ranked_teachers(n, q, m=60, noise=0.02, seed=0, classes=None):
    """Teachers with exactly ``q`` factors of equal size (orthogonal sines over the design points) plus small
    independent noise: ``f_i = μ + Σ_k z_ik g_k + ε``; for ``classes``, each factor moves the logits along
    its own zero-sum class direction."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-2, 2, m).unsqueeze(-1)
    t = x.squeeze(-1)
    basis = torch.stack([0.5 * torch.sin(k * math.pi * (t + 2) / 4) for k in range(1, q + 1)])  # (q, m)
    z = torch.randn(n, q, generator=g)
    if classes is None:
        return x, 0.3 * torch.tanh(t) + z @ basis + noise * torch.randn(n, m, generator=g)
    directions = torch.randn(q, classes, generator=g)
    directions = directions - directions.mean(-1, keepdim=True)
    loadings = basis.unsqueeze(-1) * (directions / directions.norm(dim=-1, keepdim=True)).unsqueeze(1)  # (q, m, c)
    return x, torch.einsum("nq,qmc->nmc", z, loadings) + noise * torch.randn(n, m, classes, generator=g)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_auto_number_of_factors_recovers_a_clear_rank(q):
    """Equal factors far above the noise: the leading q directions explain > 99 % of the spread and q − 1 of them
    at most (q − 1)/q plus sampling error (< 90 %), so the 90 % rule must return q."""
    x, f = _ranked_teachers(20, q)
    student = pyro_dlf.distill(x, f, teacher_noise_variances=_noise(20), **FAST)  # num_factors="auto" by default
    choice = student.num_factors_choice
    assert choice.num_factors == q and student.dlf.num_factors == q
    assert choice.explained[q - 1] >= 0.99 and (q == 1 or choice.explained[q - 2] < choice.share == 0.9)
    assert (choice.cap, choice.limit) == (10, 18) and "clipped" in choice.rule
    assert pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=_noise(20), **FAST).num_factors_choice is None


def test_auto_number_of_factors_is_clipped_to_the_identified_range_and_the_cap():
    # Four teachers span three directions; the rule stays at n − 2 = 2 although three factors are present.
    x, f = _ranked_teachers(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing about unidentified factors
        student = pyro_dlf.distill(x, f, teacher_noise_variances=_noise(4), **FAST)
    assert student.num_factors_choice.num_factors == 2 and student.num_factors_choice.limit == 2
    # Independent noise spreads evenly over all 29 directions of 30 teachers: the cap of 10 applies.
    x, f = _ranked_teachers(30, 1, noise=1.0)
    assert pyro_dlf.distill(x, f, teacher_noise_variances=_noise(30), **FAST).dlf.num_factors == 10


def test_auto_number_of_factors_for_logits_counts_centred_class_directions():
    """Full covariance: two factors, each along its own zero-sum class direction; a shift common to all classes
    (which centring removes) must not count as a direction."""
    x, f = _ranked_teachers(10, 2, classes=4)
    shifted = f + 5.0 * torch.randn(10, 60, 1, generator=torch.Generator().manual_seed(1))
    student = pyro_dlf.distill(x, shifted, **FAST)
    assert student.num_factors_choice.num_factors == 2 and student.num_factors_choice.limit == 8


def test_each_warning_of_a_body_selection_is_said_once():
    """Three candidate fits and the refit each meet the unidentified factors and the equal noise variances:
    the call says each warning once."""
    x, f = _ranked_teachers(4, 1, m=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyro_dlf.distill(x, f, num_factors=4, teacher_noise_variances=torch.full((4,), 0.01), hidden=[(4,), (6,), (8,)], **FAST)
    messages = [str(w.message) for w in caught]
    assert sum("num_factors=4 >= number of teachers=4" in m for m in messages) == 1, messages
    assert sum("variances are all equal" in m for m in messages) == 1, messages


def test_seed_diverging_steps_and_failing_teachers_are_named():
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    f = torch.randn(4, 12, generator=torch.Generator().manual_seed(1)) + x[:, 0]
    fast = dict(teacher_noise_variances=torch.full((4,), 0.5), hidden=(8,), num_iterations=2, mmd_steps=2, progress=False,
                num_factors=1)
    with pytest.raises(ValueError, match="seed must be at most"):
        pyro_dlf.distill(x, f, **fast, seed=2 ** 70)
    with pytest.raises(ValueError, match=r"the fit diverged .* lower lr \(now 1e\+30"):
        pyro_dlf.distill(x, f, **{**fast, "lr": 1e30})

    def broken(xb):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ZeroDivisionError) as caught:
        pyro_dlf.distill(x, [broken, broken], **fast)
    assert "raised by teacher_outputs[0] on x_design rows 0..11" in caught.value.__notes__
