"""Teachers observed on different design points (mathematics §4): the masked algebra against dense Gaussians,
EM under a mask, distill(observed=...) and its input checks."""

import pyro.optim
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import MultivariateNormal

import pyro_dlf
from pyro_dlf.covariance_checks import relative_frobenius_error, sample_covariance_rate
from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM
from pyro_dlf.models import DeepLatentFactor
from pyro_dlf.sufficient_statistics import batch_statistics, expected_squared_error, factor_posterior, log_marginal_likelihood

from synthetic import random_dlf, synthetic_teachers


def _problem(kind, n=5, m=9, seed=0):
    model = random_dlf(num_outputs=kind, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, 2, generator=g, dtype=torch.float64)
    shape = (n, m) if model.num_outputs is None else (n, m, model.num_outputs)
    f = 2.0 * torch.randn(shape, generator=g, dtype=torch.float64)
    observed = torch.rand(n, m, generator=g) < 0.6
    observed[:, 0] = True  # every teacher seen somewhere
    f = torch.where(observed if f.dim() == 2 else observed.unsqueeze(-1), f, torch.full_like(f, float("nan")))
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
    return model, x, f, observed, mean, loading


def _dense_teacher(mean, loading, noise, f_i, seen):
    """Teacher i's observed entries: design rows W (point, class) and residual r, covariance W Wᵀ + σ² I."""
    rows = loading.reshape(loading.shape[0], -1, loading.shape[-1])[seen].reshape(-1, loading.shape[-1])
    r = (f_i - mean)[seen].reshape(-1)
    K = rows @ rows.T + noise * torch.eye(rows.shape[0], dtype=rows.dtype)
    return rows, r, K


@pytest.mark.parametrize("kind", [None, "full"])
def test_masked_estep_and_likelihood_match_dense_conditioning_per_teacher(kind):
    model, x, f, observed, mean, loading = _problem(kind)
    noise = model.noise_variance.detach()
    stats = batch_statistics(mean, loading, f, observed=observed)
    post = factor_posterior(stats, noise)
    ll = log_marginal_likelihood(stats, post, noise)
    for i in range(f.shape[0]):
        W, r, K = _dense_teacher(mean, loading, noise, f[i], observed[i])
        torch.testing.assert_close(post.mean[i], torch.linalg.solve(K, r) @ W, rtol=1e-9, atol=1e-10)
        dense_cov = torch.eye(W.shape[1], dtype=W.dtype) - W.T @ torch.linalg.solve(K, W)
        torch.testing.assert_close(post.covariance[i], dense_cov, rtol=1e-9, atol=1e-10)
        reference = MultivariateNormal(torch.zeros_like(r), covariance_matrix=K).log_prob(r)
        torch.testing.assert_close(ll[i], reference, rtol=1e-10, atol=1e-9)
    # Streamed in batches (the model's own method), the same.
    torch.testing.assert_close(model.log_marginal_likelihood(x, f, batch_size=4, observed=observed), ll, rtol=1e-10, atol=1e-9)
    # Expected squared error: Σ_i Σ_{j∈O_i} (r_ij − Φ_j E z_i)² + Φ_j S_i Φ_jᵀ, densely.
    dense = 0.0
    for i in range(f.shape[0]):
        W, r, K = _dense_teacher(mean, loading, noise, f[i], observed[i])
        dense += (r - W @ post.mean[i]).pow(2).sum() + torch.trace(W @ post.covariance[i] @ W.T)
    torch.testing.assert_close(expected_squared_error(mean, loading, f, post, observed=observed), dense, rtol=1e-10, atol=1e-9)


def test_a_full_mask_is_the_unmasked_algebra():
    model, x, f, observed, mean, loading = _problem(None)
    f = torch.nan_to_num(f, nan=0.5)
    everywhere = torch.ones_like(observed)
    noise = model.noise_variance.detach()
    masked, plain = batch_statistics(mean, loading, f, observed=everywhere), batch_statistics(mean, loading, f)
    torch.testing.assert_close(log_marginal_likelihood(masked, factor_posterior(masked, noise), noise),
                               log_marginal_likelihood(plain, factor_posterior(plain, noise), noise), rtol=1e-12, atol=1e-10)


def test_the_pyro_model_masks_the_unobserved_values():
    model, x, f, observed, mean, loading = _problem(None)
    z = torch.randn(f.shape[0], 1, 3, dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model, {"z": z})).get_trace(x, f, observed=observed)
    trace.compute_log_prob()
    fitted = mean + z.squeeze(1) @ loading.T
    keep = torch.where(observed, f, torch.zeros_like(f))
    expected = (torch.distributions.Normal(fitted, model.noise_variance.sqrt()).log_prob(keep) * observed).sum()
    torch.testing.assert_close(trace.nodes["f"]["log_prob_sum"], expected)


def test_em_under_a_mask_keeps_its_closed_forms():
    """σ_f² update is the maximizer of Q over the observed entries; PX-EM keeps every teacher's fit."""
    truth, x, f = synthetic_teachers(12, num_points=30, num_factors=2)
    x, f = x.double(), f.double()
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(12, 30, generator=g) < 0.5
    observed[:, :2] = True
    f = torch.where(observed, f, torch.full_like(f, float("nan")))
    torch.manual_seed(0)
    model = DeepLatentFactor(1, 2, (8,), activation="Tanh").double()
    guide = ExactFactorPosterior(model)
    em = EM(model, guide, pyro.optim.Adam({"lr": 1e-2}), num_m_steps=0)
    em.step(x, f, observed)
    noise = model.noise_variance.detach().clone().requires_grad_()
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
        sq = expected_squared_error(mean, loading, f, guide.posterior, observed=observed)
    neg_q = 0.5 * torch.log(noise) + sq / (2 * noise * int(observed.sum()))
    (grad,) = torch.autograd.grad(neg_q, noise)
    assert abs(grad.item()) < 1e-9 / noise.item(), grad.item()
    # Parameter expansion under per-teacher posteriors: μ + Φ E z_i unchanged, codes centred.
    guide.update(x, f, observed=observed)
    before = (mean + guide.mean @ loading.T).detach()
    em._expand()
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
    torch.testing.assert_close(mean + guide.mean @ loading.T, before, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(guide.mean.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    # And EM decreases the loss from its start; the guide draws per-teacher posteriors as a Pyro guide.
    em = EM(model, guide, pyro.optim.Adam({"lr": 1e-2}), num_m_steps=5)
    start = em.evaluate_loss(x, f, observed)
    for _ in range(20):
        em.step(x, f, observed)
    assert em.evaluate_loss(x, f, observed) < start
    guide.update(x, f, observed=observed)
    assert poutine.trace(guide).get_trace(x, f).nodes["z"]["value"].shape == (12, 1, 2)


def test_distill_recovers_the_covariance_from_partially_observed_teachers():
    """Each teacher observed at a random 70 % of the points: the covariance error stays within twice the
    oracle rate of the number of teachers that observe a pair of points (the fewest, over pairs)."""
    n = 300
    truth, x, f = synthetic_teachers(n, num_points=60, seed=1)
    g = torch.Generator().manual_seed(2)
    observed = torch.rand(n, 60, generator=g) < 0.7
    f = torch.where(observed, f, torch.full_like(f, float("nan")))
    student = pyro_dlf.distill(x, f, num_factors=3, teacher_noise_variances=torch.linspace(0.05, 0.1, n), observed=observed,
                               hidden=(32,), activation="Tanh", num_iterations=200, mmd_steps=300, progress=False, seed=0)
    K = truth.covariance(x).detach()
    pairs = observed.double().T @ observed.double()  # teachers observing both points
    effective = int(pairs.min())
    error = relative_frobenius_error(student.dlf.covariance(x).detach(), K)
    print(f"\nrelative error {error:.3f}, oracle rate at {effective} teachers {sample_covariance_rate(K, effective):.3f}")
    assert error < 2 * sample_covariance_rate(K, effective)
    assert torch.isfinite(torch.tensor(student.history)).all()


def test_observed_inputs_are_checked():
    truth, x, f = synthetic_teachers(4, num_points=10)
    v = torch.linspace(0.09, 0.11, 4)
    mask = torch.ones(4, 10, dtype=torch.bool)
    kwargs = dict(num_factors=1, teacher_noise_variances=v, num_iterations=1, mmd_steps=1, progress=False)
    with pytest.raises(TypeError, match="observed must be a boolean"):
        pyro_dlf.distill(x, f, observed=mask.float(), **kwargs)
    with pytest.raises(ValueError, match=r"observed must have shape \(4, 10\)"):
        pyro_dlf.distill(x, f, observed=mask[:, :5], **kwargs)
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match="teacher 2 is observed at no design point"):
        pyro_dlf.distill(x, f, observed=empty, **kwargs)
    bad = f.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        pyro_dlf.distill(x, bad, observed=mask, **kwargs)  # NaN where the teacher counts
    partial = mask.clone()
    partial[1, 3] = False
    pyro_dlf.distill(x, bad, observed=partial, **kwargs)  # ... and fine where it does not
    logits = synthetic_teachers(4, num_points=10, num_outputs=3)[2]
    with pytest.raises(ValueError, match="supported for regression"):
        pyro_dlf.distill(x, logits, num_factors=1, observed=mask, num_iterations=1, mmd_steps=1, progress=False)
    sep = random_dlf(in_features=1, num_outputs=3)
    with pytest.raises(NotImplementedError, match="univariate and full"):
        sep.log_marginal_likelihood(x.double(), logits.double(), observed=mask)


def test_teachers_that_share_no_design_point_are_distilled():
    """Each point seen by one teacher only: no spread across teachers at any point, yet the values
    vary, so the fit runs (the scale check takes the observed values' spread)."""
    import pyro_dlf

    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    f = torch.sin(2 * x[:, 0]).expand(8, 40) + 0.3 * torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    observed = torch.zeros(8, 40, dtype=torch.bool)
    observed[torch.arange(40) % 8, torch.arange(40)] = True
    student = pyro_dlf.distill(x, f, num_factors=2, teacher_noise_variances=torch.linspace(0.05, 0.1, 8), observed=observed,
                               hidden=(8,), num_iterations=3, mmd_steps=5, progress=False)
    assert torch.isfinite(torch.tensor(student.history)).all()
