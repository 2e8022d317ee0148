"""Tests for pyro_dlf_bench.baselines.ensemble (fit_regressor and DeepEnsembleRegressor)."""

import math

import pytest
import torch
from torch import nn

from pyro_dlf_bench.baselines import DeepEnsembleRegressor, fit_regressor, fit_regressors
from pyro_dlf.nn import MLP

NOISE_SD = 0.1


def _linear_data(n=200, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.tensor([1.5, -2.0, 0.5])[:d]
    return x, x @ w + 0.5


def _seeded_linear(d=3, seed=0):
    torch.manual_seed(seed)
    return MLP(d, (), 1)


# ------------------------------------------------------------------ fit_regressor


def test_fit_regressor_fits_noiseless_linear_function():
    x, y = _linear_data()
    net = _seeded_linear()
    mse = fit_regressor(net, x, y, epochs=100, batch_size=32, lr=0.05, generator=torch.Generator().manual_seed(0))
    assert mse < 1e-4
    with torch.no_grad():
        assert math.isclose(mse, (net(x).squeeze(-1) - y).square().mean().item(), rel_tol=1e-5)
    assert net.training  # the training mode is restored


def test_fit_regressor_accepts_column_targets():
    x, y = _linear_data()
    mse = fit_regressor(_seeded_linear(), x, y.unsqueeze(-1), epochs=200, lr=0.05)
    assert mse < 1e-3


def test_fit_regressor_deterministic_given_generator():
    x, y = _linear_data()
    kw = dict(epochs=5, batch_size=16, lr=0.01)
    nets = [_seeded_linear() for _ in range(3)]
    losses = [
        fit_regressor(net, x, y, generator=torch.Generator().manual_seed(s), **kw)
        for net, s in zip(nets, (7, 7, 8))
    ]
    p0, p1, p2 = (torch.cat([p.flatten() for p in net.parameters()]) for net in nets)
    assert torch.equal(p0, p1) and losses[0] == losses[1]
    # A different minibatch order must change the trajectory (so the test can fail).
    assert not torch.equal(p0, p2)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(epochs=0), ValueError, "epochs"),
        (dict(epochs=1.5), TypeError, "epochs"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(generator=0), TypeError, "generator"),
        (dict(progress="yes"), TypeError, "progress"),
    ],
)
def test_fit_regressor_bad_options(kwargs, exc, match):
    x, y = _linear_data(n=20)
    with pytest.raises(exc, match=match):
        fit_regressor(_seeded_linear(), x, y, **kwargs)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_fit_regressors_matches_training_each_net_alone(batch_size):
    # Jointly trained nets follow the trajectories they would follow alone: same
    # rows, same minibatch orders (per-net generators), elementwise Adam.
    x, _ = _linear_data(n=60)
    g = torch.Generator().manual_seed(5)
    y = torch.randn(3, 60, generator=g)
    rows = torch.stack([torch.randperm(60, generator=g)[:45] for _ in range(3)])
    make = lambda k: (torch.manual_seed(k), MLP(3, (8,), 1))[1]  # noqa: E731
    joint = [make(k) for k in range(3)]
    mses = fit_regressors(joint, x, y, rows=rows, epochs=30, batch_size=batch_size, lr=0.02,
                          generators=[torch.Generator().manual_seed(10 + k) for k in range(3)])
    for k in range(3):
        alone = make(k)
        mse = fit_regressor(alone, x[rows[k]], y[k, rows[k]], epochs=30, batch_size=batch_size, lr=0.02,
                            generator=torch.Generator().manual_seed(10 + k))
        assert mses[k] == pytest.approx(mse, rel=1e-4)
        for a, b in zip(joint[k].parameters(), alone.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fit_regressors_bad_inputs():
    x, y = _linear_data(n=20)
    nets = [MLP(3, (4,), 1), MLP(3, (4,), 1)]
    with pytest.raises(TypeError, match="nets must be a non-empty sequence"):
        fit_regressors(nets[0], x, y.expand(1, 20))
    with pytest.raises(ValueError, match="share one architecture"):
        fit_regressors([nets[0], MLP(3, (5,), 1)], x, y.expand(2, 20))
    with pytest.raises(ValueError, match=r"y must have shape \(len\(nets\), n, ...\)"):
        fit_regressors(nets, x, y)
    with pytest.raises(ValueError, match="rows must be a LongTensor"):
        fit_regressors(nets, x, y.expand(2, 20), rows=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"each in \[0, 20\)"):
        fit_regressors(nets, x, y.expand(2, 20), rows=torch.full((2, 5), 20))
    with pytest.raises(TypeError, match="generators must be None or a sequence of 2"):
        fit_regressors(nets, x, y.expand(2, 20), generators=[None])


def test_fit_regressor_bad_data():
    x, y = _linear_data(n=20)
    net = _seeded_linear()
    with pytest.raises(ValueError, match="same number of rows"):
        fit_regressor(net, x, y[:-1])
    with pytest.raises(TypeError, match="x has dtype"):
        fit_regressor(net, x.double(), y)
    with pytest.raises(ValueError, match="does not match y"):
        fit_regressor(net, x, torch.zeros(20, 2))
    with pytest.raises(ValueError, match="NaN"):
        fit_regressor(net, x, torch.full((20,), float("nan")))
    with pytest.raises(TypeError, match="net"):
        fit_regressor(lambda t: t, x, y)


# ------------------------------------------------------------------ DeepEnsembleRegressor


def _sine_data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.rand(n, 1, generator=g) - 1.5
    y = torch.sin(3.0 * x[:, 0]) + NOISE_SD * torch.randn(n, generator=g)
    return x, y


@pytest.fixture(scope="module")
def sine_ensemble():
    x, y = _sine_data()
    model = DeepEnsembleRegressor(1, num_members=3, hidden=(32, 32))
    # 400 rows, 100 held out per member.
    model.fit(x, y, epochs=500, lr=1e-2, seed=0, progress=False, validation_fraction=0.25)
    return model, x, y


def test_noise_variances_match_true_noise(sine_ensemble):
    model, _, _ = sine_ensemble
    assert model.noise_variances.shape == (3,)
    ratio = model.noise_variances / NOISE_SD**2
    # Each sigma^2_i is a held-out MSE over n_val = 100 residuals. For pure noise,
    # n_val * MSE / sigma^2 ~ chi^2_{n_val}, relative sd sqrt(2 / n_val) = 0.14.
    # Fit error only adds to the expected MSE, so the lower bound is pure sampling
    # error: 1 - 3.5 * 0.14 ~= 0.5. The upper bound allows 3.5 sd (~1.5) plus a
    # fit-error term of up to 0.5 sigma^2 (RMS function error <= 0.07, i.e. 7% of
    # the sine's amplitude): 2.0.
    assert torch.all(ratio > 0.5), ratio
    assert torch.all(ratio < 2.0), ratio


def test_held_out_mask_is_the_rows_each_member_did_not_train_on(sine_ensemble):
    """Each member's noise variance is its MSE on exactly the rows held_out_mask marks (and only those)."""
    model, x, y = sine_ensemble
    mask = model.held_out_mask(len(y), 0.25, seed=0)
    assert mask.shape == (3, 400) and (mask.sum(1) == 100).all()
    with torch.no_grad():
        predictions = model.member_predictions(x)
    for i in range(3):
        mse = (predictions[i][mask[i]] - y[mask[i]]).square().mean()
        torch.testing.assert_close(model.noise_variances[i], mse, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="holds out no row"):
        model.held_out_mask(400, 0.0, seed=0)


def test_members_differ_and_ensemble_fits(sine_ensemble):
    model, _, _ = sine_ensemble
    grid = torch.linspace(-1.4, 1.4, 101).unsqueeze(-1)
    preds = model.member_predictions(grid)
    assert preds.shape == (3, 101) and not preds.requires_grad
    for i in range(3):
        for j in range(i + 1, 3):
            assert (preds[i] - preds[j]).abs().max() > 1e-3
    truth = torch.sin(3.0 * grid[:, 0])
    # Same fit-error budget as above: RMS error of the mean function <= 0.07.
    assert (model(grid) - truth).square().mean().sqrt() < 0.07


def test_predictive_and_teacher_functions(sine_ensemble):
    model, _, _ = sine_ensemble
    grid = torch.linspace(-1.0, 1.0, 17, dtype=torch.float64).unsqueeze(-1)  # cast internally
    means, variances = model.predictive(grid)
    assert means.shape == variances.shape == (3, 17)
    torch.testing.assert_close(variances, model.noise_variances.unsqueeze(-1).expand(3, 17))
    torch.testing.assert_close(model(grid), means.mean(0))
    teachers = model.teacher_functions()
    assert len(teachers) == 3
    for i, f in enumerate(teachers):
        out = f(grid)
        assert out.shape == (17,)
        torch.testing.assert_close(out, means[i], rtol=0, atol=0)


def test_state_dict_round_trip(sine_ensemble):
    model, x, _ = sine_ensemble
    clone = DeepEnsembleRegressor(1, num_members=3, hidden=(32, 32))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.predictive(x[:10]), model.predictive(x[:10]), rtol=0, atol=0)


def test_training_mse_noise_estimate_is_in_original_units():
    x, y = _sine_data(n=120, seed=1)
    y = 10.0 + 4.0 * y  # non-trivial standardisation
    model = DeepEnsembleRegressor(1, num_members=2, hidden=(8,))
    model.fit(x, y, epochs=30, progress=False)
    residual_mse = (model.member_predictions(x) - y).square().mean(dim=1)
    torch.testing.assert_close(model.noise_variances, residual_mse, rtol=1e-4, atol=0)


def test_fit_is_deterministic_and_leaves_global_rng_alone():
    x, y = _sine_data(n=60, seed=2)
    kw = dict(epochs=5, batch_size=16, progress=False, validation_fraction=0.2)
    state = torch.get_rng_state()
    a = DeepEnsembleRegressor(1, num_members=2, hidden=(8,)).fit(x, y, seed=3, **kw)
    # Neither construction nor fitting draws from the caller's global RNG.
    assert torch.equal(torch.get_rng_state(), state)
    b = DeepEnsembleRegressor(1, num_members=2, hidden=(8,)).fit(x, y, seed=3, **kw)
    c = DeepEnsembleRegressor(1, num_members=2, hidden=(8,)).fit(x, y, seed=4, **kw)
    assert torch.equal(a.member_predictions(x), b.member_predictions(x))
    assert torch.equal(a.noise_variances, b.noise_variances)
    assert not torch.equal(a.member_predictions(x), c.member_predictions(x))


def test_ensemble_bad_inputs():
    with pytest.raises(ValueError, match="num_members"):
        DeepEnsembleRegressor(1, num_members=0)
    with pytest.raises(TypeError, match="activation"):
        DeepEnsembleRegressor(1, activation=nn.ReLU())
    model = DeepEnsembleRegressor(2, num_members=2, hidden=(4,))
    x, y = torch.randn(20, 2), torch.randn(20)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predictive(x)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        model.fit(torch.randn(20, 3), y, progress=False)
    with pytest.raises(ValueError, match="y must have shape"):
        model.fit(x, torch.randn(20, 2), progress=False)
    with pytest.raises(ValueError, match="validation_fraction"):
        model.fit(x, y, progress=False, validation_fraction=1.0)
    with pytest.raises(ValueError, match="validation_fraction"):
        model.fit(x, y, progress=False, validation_fraction=0.01)
    with pytest.raises(ValueError, match="seed"):
        model.fit(x, y, progress=False, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        model.fit(x, y, progress=False, seed=0.5)
    one_d = DeepEnsembleRegressor(1, num_members=1, hidden=())
    with pytest.raises(ValueError, match="unsqueeze"):
        one_d.fit(torch.randn(5), torch.randn(5), progress=False)
