"""Tests for pyro_dlf_bench.baselines.students (one-to-one distilled regression baselines)."""

import math

import pytest
import torch
from torch import nn

from pyro_dlf_bench.baselines import (
    BatchEnsembleLinear,
    BatchEnsembleStudent,
    DistilledEnsemble,
    HydraStudent,
    SmallEnsembleStudent,
)
from pyro_dlf_bench.metrics import count_parameters, mixture_crps, mixture_nll
from pyro_dlf.nn import MLP

N, M = 4, 200
STUDENTS = (SmallEnsembleStudent, HydraStudent, BatchEnsembleStudent)
NOISE = torch.tensor([0.01, 0.02, 0.04, 0.08])


def _teachers(seed=0):
    """f_i(x) = sin(3x) + a_i x + b_i at M design points on [-1, 2] (non-centred, so x is standardised)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1.0, 2.0, M).unsqueeze(-1)
    a = torch.randn(N, 1, generator=g)
    b = 3.0 + torch.randn(N, 1, generator=g)  # offset: the targets need standardising too
    return x, torch.sin(3.0 * x[:, 0]) + a * x[:, 0] + b


def _rms(u, v):
    return (u - v).square().mean(-1).sqrt()


@pytest.fixture(scope="module")
def students():
    x, f = _teachers()
    # The fit defaults (1000 full-batch Adam steps, lr 1e-2) are what is tested.
    return {cls: cls(1, N).fit(x, f, NOISE, progress=False) for cls in STUDENTS}, x, f


@pytest.fixture(params=STUDENTS, ids=lambda c: c.__name__)
def fitted(request, students):
    by_class, x, f = students
    return by_class[request.param], x, f


def test_members_reproduce_their_teachers(fitted):
    student, x, f = fitted
    g = student.member_predictions(x)
    assert g.shape == (N, M) and not g.requires_grad
    err = _rms(g, f)  # (N,): RMSE of member i to teacher i
    dist = _rms(f.unsqueeze(1), f.unsqueeze(0))  # (N, N) teacher-to-teacher RMS distances
    min_dist = dist[~torch.eye(N, dtype=torch.bool)].min()
    assert min_dist > 0.3, min_dist  # the teachers are well separated (else the test says nothing)
    # 10% of the closest pair's distance. By the triangle inequality every student
    # pairwise distance then lies within e_i + e_j <= 20% of the teachers' one, i.e.
    # the between-member spread that distillation is meant to keep is kept to 20%.
    # A member fitted to the teachers' mean instead is off by ~half a pair distance.
    assert torch.all(err < 0.1 * min_dist), (err, min_dist)


def test_one_to_one_correspondence(fitted):
    student, x, f = fitted
    g = student.member_predictions(x)
    cross = _rms(g.unsqueeze(1), f.unsqueeze(0))  # cross[i, j] = RMS(g_i - f_j)
    off = ~torch.eye(N, dtype=torch.bool)
    # Member i is closer to teacher i than to any other teacher (with a margin of 3x).
    assert torch.all(cross.diagonal().unsqueeze(1) * 3 < torch.where(off, cross, math.inf)), cross


def test_predictive_is_the_teacher_noise_mixture(fitted):
    student, x, f = fitted
    grid = torch.linspace(-1.0, 2.0, 37, dtype=torch.float64).unsqueeze(-1)  # cast internally
    means, variances = student.predictive(grid)
    assert means.shape == variances.shape == (N, 37)
    torch.testing.assert_close(variances, NOISE.unsqueeze(-1).expand(N, 37), rtol=0, atol=0)
    torch.testing.assert_close(student(grid), means.mean(0))
    torch.testing.assert_close(means, student.member_predictions(grid), rtol=0, atol=0)

    # Mixture metrics at draws y_j = f_k(x_j) + eps from the teacher mixture.
    gen = torch.Generator().manual_seed(1)
    k = torch.randint(0, N, (M,), generator=gen)
    y = f[k, torch.arange(M)] + NOISE[k].sqrt() * torch.randn(M, generator=gen)
    s_means, s_vars = student.predictive(x)
    t_vars = NOISE.unsqueeze(-1).expand(N, M)
    nll = mixture_nll(s_means, s_vars, y, reduction="none")
    assert nll.shape == (M,) and torch.isfinite(nll).all()
    crps_s, crps_t = mixture_crps(s_means, s_vars, y), mixture_crps(f, t_vars, y)
    # Same component variances, component means shifted by e_i = g_i - f_i: coupling
    # X_g = X_f + e_K gives |dE|X - y|| <= mean_i |e_i| and |d(1/2)E|X - X'|| <= mean_i |e_i|,
    # so the CRPS can move by at most 2 mean_i |e_i(x_j)| at each x_j.
    bound = 2 * (s_means - f).abs().mean()
    assert abs(crps_s - crps_t) <= bound + 1e-6, (crps_s, crps_t, bound)
    # No such bound for the NLL; an empirical sanity margin (observed: <= 0.015 nats).
    assert abs(mixture_nll(s_means, s_vars, y) - mixture_nll(f, t_vars, y)) < 0.1


@pytest.mark.parametrize("cls", STUDENTS, ids=lambda c: c.__name__)
def test_fit_is_deterministic_and_leaves_global_rng_alone(cls):
    x, f = _teachers()
    kw = dict(epochs=4, batch_size=32, progress=False)
    state = torch.get_rng_state()
    a = cls(1, N).fit(x, f, NOISE, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = cls(1, N)
    b.fit(x, f, NOISE, seed=9, **kw)
    b.fit(x, f, NOISE, seed=5, **kw)  # a re-fit starts afresh: no memory of the first fit
    c = cls(1, N).fit(x, f, NOISE, seed=6, **kw)
    assert torch.equal(a.member_predictions(x), b.member_predictions(x))
    assert not torch.equal(a.member_predictions(x), c.member_predictions(x))


def test_small_ensemble_members_are_independent_mlps():
    s = SmallEnsembleStudent(3, N)
    assert len(s.members) == N and all(isinstance(mm, MLP) and mm.hidden == (50,) for mm in s.members)
    assert count_parameters(s) == N * count_parameters(MLP(3, (50,), 1))


def test_hydra_shares_one_body():
    d, h = 3, 50
    hydra = HydraStudent(d, N)
    body, heads = count_parameters(hydra.body), count_parameters(hydra.heads)
    assert body == d * h + h  # one Linear(d, 50) + ReLU, shared
    assert heads == N * (h + 1)  # n linear heads 50 -> 1
    assert count_parameters(hydra) == body + heads
    assert count_parameters(hydra) < count_parameters(SmallEnsembleStudent(d, N))
    # The members really read the same body features: perturbing the body changes every member.
    x, f = _teachers()
    hydra = HydraStudent(1, N).fit(x, f, NOISE, epochs=3, progress=False)
    before = hydra.member_predictions(x)
    with torch.no_grad():
        hydra.body[0].bias.add_(0.5)
    assert torch.all((hydra.member_predictions(x) - before).abs().amax(dim=1) > 0)


def test_batch_ensemble_parameter_count():
    d, hidden = 8, (100, 100)
    be = BatchEnsembleStudent(d, N, hidden)
    widths = (d, *hidden, 1)
    expected = sum(i * o + N * (i + 2 * o) for i, o in zip(widths[:-1], widths[1:]))
    assert count_parameters(be) == expected
    separate = count_parameters(SmallEnsembleStudent(d, N, hidden))
    assert separate == N * count_parameters(MLP(d, hidden, 1))
    assert count_parameters(be) < 0.35 * separate, (count_parameters(be), separate)


def _member_loop(layers, xs, i):
    """Member i computed alone from the definition ((h o r_i) W^T) o s_i + b_i."""
    h = xs
    for k, layer in enumerate(layers):
        h = (h * layer.r[i]) @ layer.weight.T * layer.s[i] + layer.bias[i]
        if k < len(layers) - 1:
            h = torch.relu(h)
    return h.squeeze(-1)


def test_batch_ensemble_batched_forward_equals_member_loop(students):
    # A deeper, multi-input, untrained network...
    be = BatchEnsembleStudent(3, N, (16, 8))
    xs = torch.randn(25, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = be.net(xs)
        assert batched.shape == (25, N)
        for i in range(N):
            torch.testing.assert_close(batched[:, i], _member_loop(be.layers, xs, i))
    # ... and the fitted one, through member_predictions in original units.
    by_class, x, _ = students
    student = by_class[BatchEnsembleStudent]
    xs = student.x_standardizer.transform(x)
    with torch.no_grad():
        loop = torch.stack([_member_loop(student.layers, xs, i) for i in range(N)])
    torch.testing.assert_close(student.member_predictions(x), student.y_standardizer.inverse(loop))


def test_batch_ensemble_fast_weight_init():
    signs = BatchEnsembleStudent(2, N, (16,))
    for layer in signs.layers:
        assert isinstance(layer, BatchEnsembleLinear)
        for fast in (layer.r, layer.s):
            assert torch.all(fast.abs() == 1)
            assert (fast > 0).any() and (fast < 0).any()
    normal = BatchEnsembleStudent(2, N, (16,), fast_weight_init="normal")
    r = normal.layers[0].s
    assert not torch.all(r.abs() == 1) and 0.5 < r.mean() < 1.5
    with pytest.raises(ValueError, match="fast_weight_init"):
        BatchEnsembleStudent(2, N, fast_weight_init="ones")


def test_state_dict_round_trip(fitted):
    student, x, _ = fitted
    clone = type(student)(1, N)
    clone.load_state_dict(student.state_dict())
    torch.testing.assert_close(clone.predictive(x), student.predictive(x), rtol=0, atol=0)


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        DistilledEnsemble(1, N)


@pytest.mark.parametrize("cls", STUDENTS, ids=lambda c: c.__name__)
def test_bad_inputs_name_the_argument(cls):
    x, f = _teachers()
    student = cls(1, N)
    with pytest.raises(RuntimeError, match="not fitted"):
        student.predictive(x)
    fit = lambda *a, **k: student.fit(*a, progress=False, epochs=1, **k)  # noqa: E731
    bad_f = f.clone()
    bad_f[2, 7] = float("nan")
    bad_x = x.clone()
    bad_x[3, 0] = float("inf")
    cases = [
        ((x, f[:3], NOISE), ValueError, r"teacher_values must have shape \(num_members, m\) = \(4, 200\)"),
        ((x, f[:, :-1], NOISE), ValueError, r"teacher_values must have shape"),
        ((x, f[0], NOISE), ValueError, r"teacher_values must have shape"),
        ((x, f, NOISE[:3]), ValueError, r"teacher_noise_variances must have shape"),
        ((x, f, torch.tensor([0.1, 0.0, 0.1, 0.1])), ValueError, "teacher_noise_variances must be strictly positive"),
        ((x, f, torch.tensor([0.1, math.inf, 0.1, 0.1])), ValueError, "teacher_noise_variances contains NaN"),
        ((x, bad_f, NOISE), ValueError, "teacher_values contains NaN"),
        ((bad_x, f, NOISE), ValueError, "x_design contains NaN"),
        ((x, f.long(), NOISE), TypeError, "teacher_values must have a floating dtype"),
        ((x.int(), f, NOISE), TypeError, "x_design must have a floating dtype"),
        ((torch.randn(M, 2), f, NOISE), ValueError, r"x_design must have shape \(m, 1\)"),
        ((x[:, 0], f, NOISE), ValueError, r"x_design must have shape .*unsqueeze"),
        ((x, f.numpy(), NOISE), TypeError, "teacher_values must be a torch.Tensor"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            fit(*args)
    for kwargs, exc, match in [
        (dict(seed=-1), ValueError, "seed"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(epochs=0), ValueError, "epochs"),
    ]:
        with pytest.raises(exc, match=match):
            student.fit(x, f, NOISE, progress=False, **kwargs)
    with pytest.raises(TypeError, match="progress"):
        student.fit(x, f, NOISE, progress="no")
    assert not bool(student.fitted)  # nothing above got as far as training
    student.fit(x, f, NOISE, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"x must have shape \(m, 1\)"):
        student.member_predictions(torch.randn(5, 3))
    with pytest.raises(ValueError, match="x contains NaN"):
        student.predictive(torch.full((5, 1), math.nan))


def test_constructor_bad_inputs():
    for cls in STUDENTS:
        with pytest.raises(ValueError, match="num_members"):
            cls(1, 0)
        with pytest.raises(TypeError, match="in_features"):
            cls(1.5, N)
        with pytest.raises(TypeError, match="hidden"):
            cls(1, N, hidden="50")
        with pytest.raises(ValueError, match=r"hidden\[0\]"):
            cls(1, N, hidden=(0,))
        with pytest.raises(TypeError, match="activation"):
            cls(1, N, activation=nn.ReLU())
    with pytest.raises(ValueError, match="hidden must contain at least one width"):
        HydraStudent(1, N, hidden=())
