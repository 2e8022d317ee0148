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


def test_multi_output_regression_teachers_use_one_noise_law_per_output():
    """(n, m, d) teachers with per-output noise: the predictive at every input and output is
    N(μ_k(x), Σ_a Φ(x)_{ka}² + σ²_k) with σ²_k from output k's inverse gamma (dense reference)."""
    from pyro_dlf.noise import inverse_gamma_quantiles

    truth, x, f = synthetic_teachers(30, num_points=25, num_outputs=2, num_factors=2, covariance="full")
    noise = torch.stack([torch.linspace(0.01, 0.02, 30), torch.linspace(0.5, 0.9, 30)], -1)  # (n, d), very different outputs
    student = pyro_dlf.distill(x, f, task="regression", covariance="full", num_factors=2, teacher_noise_variances=noise,
                               hidden=(16,), num_iterations=5, mmd_steps=20, progress=False)
    assert student.task == "regression" and student.dlf.num_outputs == 2 and len(student.noise_concentration) == 2
    pred = student.predict(x, 50, return_samples=True)
    assert pred.mean.shape == pred.epistemic_variance.shape == pred.aleatoric_variance.shape == (25, 2)
    assert pred.noise_variance_samples.shape == (50, 2) and pred.sample_observations().shape == (50, 25, 2)
    means, variances = student.predictive_mixture(x, 8)
    with torch.no_grad():
        phi = student.dlf.loading(x)  # (m, d, q)
    for k in range(2):
        nodes = inverse_gamma_quantiles(student.noise_concentration[k], student.noise_rate[k], 8).float()
        dense = phi[:, k].pow(2).sum(-1)[None, :] + nodes[:, None]
        torch.testing.assert_close(variances[..., k], dense)
    assert float(pred.aleatoric_variance[0, 1]) > 10 * float(pred.aleatoric_variance[0, 0])
    out = Predictive(student, num_samples=4)(x)
    assert out["y"].shape == (4, 25, 2) and out["noise_variance"].shape[-1] == 2
    student2 = Student.load(_saved(student))
    torch.testing.assert_close(student2.predictive_mixture(x, 8)[1], variances)


def _saved(student):
    import io

    buffer = io.BytesIO()
    student.save(buffer)
    buffer.seek(0)
    return buffer


def test_body_selection_slices_per_point_noise_variances():
    """Heteroscedastic (n, m) variances go with the design points into each candidate's fit."""
    truth, x, means = synthetic_teachers(10, num_points=40, seed=3)
    variances = (0.05 + 0.1 * torch.sigmoid(x[:, 0])) ** 2 * torch.ones(10, 1)
    student = pyro_dlf.distill(x, means, num_factors=2, teacher_noise_variances=variances, hidden=[(4,), (8,)],
                               num_iterations=3, mmd_steps=10, progress=False)
    assert student.body_selection.chosen in ((4,), (8,)) and student.noise_model is not None
