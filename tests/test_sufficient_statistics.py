"""The closed-form algebra against dense Gaussian computations (small sizes, float64)."""

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal, MultivariateNormal

from pyro_dlf.sufficient_statistics import (
    batch_statistics,
    expected_squared_error,
    expected_squared_error_from_statistics,
    factor_posterior,
    log_marginal_likelihood,
)

from synthetic import random_dlf


# Model kinds: univariate (None), separable with 3 classes (3), full with 3 classes ("full").
KINDS = [None, 3, "full"]


def _problem(num_outputs, n=4, m=7, seed=0):
    model = random_dlf(num_outputs=num_outputs, seed=seed)
    x = torch.randn(m, 2, dtype=torch.float64)
    shape = (n, m) if model.num_outputs is None else (n, m, model.num_outputs)
    f = 2.0 * torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
    L = model.class_factor.detach() if model.separable else None
    return model, x, f, mean, loading, L


def _dense(mean, loading, L, noise, f):
    """Joint Gaussian of (vec z, vec f): the factor loading matrix W and residuals.

    Multivariate teachers are column-stacked, ``vec(F)`` (all points of class 1, then class 2, ...).
    """
    if loading.dim() == 3:
        # Full: row (k, j) of W is Φ(x_j)'s row for class k.
        W = loading.permute(1, 0, 2).reshape(-1, loading.shape[-1])
        r = (f - mean).transpose(-1, -2).reshape(f.shape[0], -1)
    elif L is None:
        W = loading
        r = f - mean
    else:
        W = torch.kron(L, loading)  # column-stacked vec(F) vs row-major vec(Z)
        r = (f - mean).transpose(-1, -2).reshape(f.shape[0], -1)
    K = W @ W.T + noise * torch.eye(W.shape[0], dtype=W.dtype)
    return W, r, K


@pytest.mark.parametrize("num_outputs", KINDS)
def test_estep_matches_dense_conditioning(num_outputs):
    model, x, f, mean, loading, L = _problem(num_outputs)
    noise = model.noise_variance.detach()
    post = factor_posterior(batch_statistics(mean, loading, f), noise, L)
    W, r, K = _dense(mean, loading, L, noise, f)
    # z | f ~ N(W^T K^{-1} r, I - W^T K^{-1} W)
    dense_mean = torch.linalg.solve(K, r.T).T @ W
    dense_cov = torch.eye(W.shape[1], dtype=W.dtype) - W.T @ torch.linalg.solve(K, W)
    torch.testing.assert_close(post.mean.reshape(f.shape[0], -1), dense_mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(post.dense_covariance(), dense_cov, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("num_outputs", KINDS)
def test_streamed_statistics_equal_one_pass(num_outputs):
    model, x, f, mean, loading, L = _problem(num_outputs, m=11)
    whole = batch_statistics(mean, loading, f)
    parts = batch_statistics(mean[:4], loading[:4], f[:, :4]) + batch_statistics(mean[4:], loading[4:], f[:, 4:])
    for a, b in [(whole.gram, parts.gram), (whole.cross, parts.cross), (whole.residual_sq, parts.residual_sq)]:
        torch.testing.assert_close(a, b)
    assert parts.num_points == 11
    assert parts.num_entries == whole.num_entries == 11 * (model.num_outputs or 1)


def test_log_marginal_matches_low_rank_mvn():
    model, x, f, mean, loading, L = _problem(None)
    noise = model.noise_variance.detach()
    stats = batch_statistics(mean, loading, f)
    ours = log_marginal_likelihood(stats, factor_posterior(stats, noise), noise)
    reference = LowRankMultivariateNormal(mean, loading, noise.expand(mean.shape)).log_prob(f)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-9)
    # and through the model's own streaming method
    torch.testing.assert_close(model.log_marginal_likelihood(x, f, batch_size=3), reference, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("num_outputs", [3, "full"])
def test_log_marginal_matches_dense_mvn_multivariate(num_outputs):
    model, x, f, mean, loading, L = _problem(num_outputs)
    noise = model.noise_variance.detach()
    W, r, K = _dense(mean, loading, L, noise, f)
    reference = MultivariateNormal(torch.zeros(K.shape[0], dtype=K.dtype), covariance_matrix=K).log_prob(r)
    torch.testing.assert_close(model.log_marginal_likelihood(x, f, batch_size=2), reference, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("num_outputs", KINDS)
def test_expected_squared_error_matches_monte_carlo_free_formula(num_outputs):
    """Σ_i E‖f_i − μ − W z_i‖² = Σ_i ‖r_i − W E z_i‖² + n tr(W S W^T), computed densely."""
    model, x, f, mean, loading, L = _problem(num_outputs)
    noise = model.noise_variance.detach()
    post = factor_posterior(batch_statistics(mean, loading, f), noise, L)
    W, r, K = _dense(mean, loading, L, noise, f)
    S = post.dense_covariance()
    dense = (r - post.mean.reshape(f.shape[0], -1) @ W.T).pow(2).sum() + f.shape[0] * torch.trace(W @ S @ W.T)
    torch.testing.assert_close(expected_squared_error(mean, loading, f, post, L), dense, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("num_outputs", KINDS)
def test_expected_squared_error_at_other_parameters(num_outputs):
    """The M-step evaluates the posterior of θ_old at θ_new: check the trace terms there too."""
    model, x, f, mean, loading, L = _problem(num_outputs)
    noise = model.noise_variance.detach()
    post = factor_posterior(batch_statistics(mean, loading, f), noise, L)
    other, _, _, mean2, loading2, L2 = _problem(num_outputs, seed=7)
    W2, r2, _ = _dense(mean2, loading2, L2, noise, f)
    S = post.dense_covariance()
    dense = (r2 - post.mean.reshape(f.shape[0], -1) @ W2.T).pow(2).sum() + f.shape[0] * torch.trace(W2 @ S @ W2.T)
    torch.testing.assert_close(expected_squared_error(mean2, loading2, f, post, L2), dense, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("num_outputs", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_expected_squared_error_from_statistics_is_the_residual_pass(num_outputs, weighted):
    """The σ_f² update's sum from the statistics at θ_new equals the pass over the residuals, for the
    posterior of θ_old (float64; the statistics' sums cancel to 1e-10 relative at these sizes)."""
    model, x, f, mean, loading, L = _problem(num_outputs)
    post = factor_posterior(batch_statistics(mean, loading, f), model.noise_variance.detach(), L)
    _, _, _, mean2, loading2, L2 = _problem(num_outputs, seed=7)
    weight = torch.rand(mean2.shape[0], dtype=torch.float64) + 0.5 if weighted else None
    halves = [slice(0, 3), slice(3, None)]  # summed over batches, as EM streams them
    stats = sum((batch_statistics(mean2[h], loading2[h], f[:, h], weight=None if weight is None else weight[h]) for h in halves[1:]),
                batch_statistics(mean2[halves[0]], loading2[halves[0]], f[:, halves[0]], weight=None if weight is None else weight[halves[0]]))
    torch.testing.assert_close(expected_squared_error_from_statistics(stats, post, L2),
                               expected_squared_error(mean2, loading2, f, post, L2, weight=weight), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("num_outputs", [None, "full"])
def test_expected_squared_error_from_masked_statistics(num_outputs):
    """Teachers observed on different points: per-teacher Grams and posterior covariances."""
    model, x, f, mean, loading, L = _problem(num_outputs)
    observed = torch.rand(f.shape[:2], generator=torch.Generator().manual_seed(3)) < 0.7
    observed[:, 0] = True
    post = factor_posterior(batch_statistics(mean, loading, f, observed=observed), model.noise_variance.detach(), L)
    _, _, _, mean2, loading2, _ = _problem(num_outputs, seed=7)
    stats = batch_statistics(mean2, loading2, f, observed=observed)
    torch.testing.assert_close(expected_squared_error_from_statistics(stats, post),
                               expected_squared_error(mean2, loading2, f, post, observed=observed), rtol=1e-10, atol=1e-9)
