"""Heteroscedastic teachers (SPEC §6): the predictive's variance decomposition matches the ensemble's."""

import math

import pytest
import torch
from pyro.infer import Predictive

import pyro_dlf
from pyro_dlf import Student

from synthetic import synthetic_teachers

N = 200


@pytest.fixture(scope="module")
def fitted():
    """Teacher means from a known DLF; teacher i's variance s_i²(x) = s²(x)·exp(0.3 ε_i), s(x) = 0.05 + 0.3 sigmoid(2x)."""
    truth, x, means = synthetic_teachers(N, num_points=60, seed=3)
    g = torch.Generator().manual_seed(4)
    base = (0.05 + 0.3 * torch.sigmoid(2 * x[:, 0])) ** 2
    variances = base * torch.exp(0.3 * torch.randn(N, 1, generator=g))
    student = pyro_dlf.distill(x, means, num_factors=3, teacher_noise_variances=variances, hidden=(32,), activation="Tanh",
                               num_iterations=150, mmd_steps=300, progress=False, seed=0)
    return x, means, variances, student


def test_variance_decomposition_matches_the_ensemble_mixture(fitted):
    """At each input, aleatoric E[σ²(x)] against mean_i s_i²(x), and epistemic + aleatoric against the
    ensemble's mixture variance var_i m_i(x) + mean_i s_i²(x), within 5 standard errors of the ensemble
    side (its sampling error over 200 teachers)."""
    x, means, variances, student = fitted
    pred = student.predict(x, 10)
    ensemble_aleatoric = variances.double().mean(0)
    se_aleatoric = variances.double().std(0) / math.sqrt(N)
    ensemble_epistemic = means.double().var(0)
    # Sample variance of N Gaussian draws: standard error var·√(2/(N−1)).
    se_total = (se_aleatoric ** 2 + (ensemble_epistemic * math.sqrt(2 / (N - 1))) ** 2).sqrt()
    assert ((pred.aleatoric_variance.double() - ensemble_aleatoric).abs() <= 5 * se_aleatoric).all()
    total = pred.epistemic_variance.double() + pred.aleatoric_variance.double()
    assert ((total - (ensemble_epistemic + ensemble_aleatoric)).abs() <= 5 * se_total).all()
    # The noise really depends on x: its variance grows about 6.7-fold across the inputs.
    assert float(pred.aleatoric_variance[-1] / pred.aleatoric_variance[0]) > 4


def test_draws_mixture_pyro_site_and_save_load(fitted, tmp_path):
    x, means, variances, student = fitted
    pred = student.predict(x, 4000, return_samples=True)
    assert pred.noise_variance_samples.shape == (4000, 60)
    # Monte Carlo mean of the drawn σ²(x) against E[σ²(x)]: 5 standard errors.
    draws = pred.noise_variance_samples.double()
    assert ((draws.mean(0) - pred.aleatoric_variance.double()).abs() <= 5 * draws.std(0) / math.sqrt(4000)).all()
    assert pred.sample_observations().shape == (4000, 60)
    m, v = student.predictive_mixture(x, 32)
    assert v.shape == (32, 60) and (v[1:] >= v[:-1]).all()  # quantile nodes, increasing at every input
    out = Predictive(student, num_samples=5)(x)
    assert out["noise_variance"].shape == (5, 60) and out["noise_level"].numel() == 5
    student.save(tmp_path / "s.pt")
    loaded = Student.load(tmp_path / "s.pt")
    torch.testing.assert_close(loaded.predict(x, 3).aleatoric_variance, pred.aleatoric_variance)
    with pytest.raises(ValueError, match="depends on x"):
        loaded.aleatoric_variance


def test_arviz_takes_per_input_noise_draws(fitted):
    from pyro_dlf.diagnostics import to_inference_data

    x, means, variances, student = fitted
    pred = student.predict(x, 40, return_samples=True)
    idata = to_inference_data(pred, observed=means[0], num_chains=2, generator=torch.Generator().manual_seed(0))
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(40, 60)
    expected = torch.distributions.Normal(pred.function_samples.double(), pred.noise_variance_samples.double().sqrt()).log_prob(
        means[0].double())
    torch.testing.assert_close(ll, expected)
