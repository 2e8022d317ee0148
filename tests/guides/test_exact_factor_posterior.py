"""ExactFactorPosterior: the exact posterior as a Pyro guide."""

import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

from pyro_dlf.guides import ExactFactorPosterior

from synthetic import random_dlf


def _data(num_outputs, n=5, m=9):
    model = random_dlf(num_outputs=num_outputs)
    x = torch.randn(m, 2, dtype=torch.float64)
    with torch.no_grad():
        f = model.sample(x, n, include_noise=True)
    return model, x, f


@pytest.mark.parametrize("num_outputs", [None, 3])
def test_elbo_with_exact_posterior_is_the_marginal_likelihood(num_outputs):
    """With q(z) = p(z | f), log p(f, z) − log q(z) = log p(f) for every z: the ELBO is exact."""
    model, x, f = _data(num_outputs)
    guide = ExactFactorPosterior(model)
    guide.update(x, f, batch_size=4)
    exact = model.log_marginal_likelihood(x, f).sum()
    for _ in range(3):  # any draw of z gives the same value
        elbo = -Trace_ELBO().differentiable_loss(model, guide, x, f)
        torch.testing.assert_close(elbo, exact, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("num_outputs", [None, 3])
def test_streaming_update_does_not_depend_on_batch_size(num_outputs):
    model, x, f = _data(num_outputs)
    guide = ExactFactorPosterior(model)
    one = guide.update(x, f)
    mean, cov = one.mean.clone(), guide.covariance.clone()
    guide.update(x, f, batch_size=2)
    torch.testing.assert_close(guide.mean, mean)
    torch.testing.assert_close(guide.covariance, cov)


def test_guide_in_predictive_reconstructs_teachers():
    model, x, f = _data(None, n=4)
    guide = ExactFactorPosterior(model)
    guide.update(x, f)
    S = 4000
    out = Predictive(model, guide=guide, num_samples=S, parallel=True, return_sites=["z", "function"])(x, num_members=guide.num_members)
    assert out["z"].shape == (S, 4, 1, 3)
    assert out["function"].shape == (S, 4, 9)
    # Each teacher's reconstruction has mean μ + Φ E[z_i] and covariance Φ S Φᵀ:
    # 5 standard errors (√(diag/S)) for every entry.
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
        expected = mean + guide.mean @ loading.T
        var = (loading @ guide.covariance * loading).sum(-1)
    assert ((out["function"].mean(0) - expected).abs() <= 5 * (var / S).sqrt()).all()


def test_guide_errors():
    model, x, f = _data(None, n=4)
    guide = ExactFactorPosterior(model)
    with pytest.raises(RuntimeError, match="update"):
        guide(x, f)
    guide.update(x, f)
    with pytest.raises(ValueError, match="fitted to 4"):
        guide(x, f[:3])
    with pytest.raises(TypeError, match="DeepLatentFactor"):
        ExactFactorPosterior(torch.nn.Linear(2, 2))
