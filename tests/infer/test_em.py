"""EM: the SVI-like contract, monotone likelihood under an exact M-step, exact vs minibatch E-step."""

import math

import pyro
import pyro.optim
import pytest
import torch

from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM
from pyro_dlf.models import DeepLatentFactor
from pyro_dlf.sufficient_statistics import expected_squared_error

from synthetic import random_dlf, synthetic_teachers


def _kind(num_outputs):
    """``"full"``: three classes with the full class covariance; else (num_outputs, separable)."""
    return (3, "full") if num_outputs == "full" else (num_outputs, "separable")


def _student(in_features=1, num_factors=3, hidden=(32,), seed=1, dtype=torch.float32, noise=1.0):
    torch.manual_seed(seed)
    return DeepLatentFactor(in_features, num_factors, hidden, activation="Tanh", noise_variance=noise).to(dtype)


def test_marginal_likelihood_never_decreases_with_exact_m_step():
    """Linear heads on a frozen random body: each EM iteration is an exact ECM step (mathematics §4)."""
    truth, x, f = synthetic_teachers(40, num_points=50)
    x, f = x.double(), f.double()
    model = _student(dtype=torch.float64)
    for p in model.body.parameters():
        p.requires_grad_(False)
    em = EM(model, ExactFactorPosterior(model), None, mstep="linear_heads")
    losses = [em.step(x, f) for _ in range(40)]
    losses.append(em.evaluate_loss(x, f))
    diffs = torch.tensor(losses).diff()
    # Round-off only: the likelihood is a float64 sum of ~2000 terms.
    assert (diffs <= 1e-8 * abs(losses[0])).all(), diffs.max()
    assert losses[-1] < losses[0] - 100  # and it actually moved


def _forward_roundoff(model, x):
    r"""Componentwise bound on the round-off of ``μ(x)`` and ``Φ(x)`` from the model's own precision.

    Higham (Accuracy and Stability of Numerical Algorithms, §3.1, §3.5): an affine map
    ``W h + b`` of length ``k`` computed in unit round-off ``u`` has error at most
    ``γ_{k+1} (|W||h| + |b|)`` plus ``|W|`` times the error already in ``h``, with
    ``γ_k = k u / (1 − k u)``; a 1-Lipschitz activation (tanh, ReLU) passes the incoming
    error on and adds ``u`` of its output; a scaling or shift adds ``u`` of its result.
    """
    u = torch.finfo(model.loading_head.weight.dtype).eps / 2
    gamma = lambda k: k * u / (1 - k * u)  # noqa: E731
    with torch.no_grad():
        loc, scale = model.input_loc.double(), model.input_scale.double()
        value = (x.double() - loc) / scale
        error = 2 * u * (x.double().abs() + loc.abs()) / scale.abs()

        def affine(layer, value, error):
            W, b = layer.weight.double(), layer.bias.double()
            out = value @ W.T + b
            bound = gamma(W.shape[1] + 1) * (value.abs() @ W.abs().T + b.abs()) + error @ W.abs().T
            return out, bound

        for layer in model.body:
            if isinstance(layer, torch.nn.Linear):
                value, error = affine(layer, value, error)
            else:  # an elementwise 1-Lipschitz activation
                value = layer(value)
                error = error + u * value.abs()
        s, shift = model.output_scale.double(), model.output_loc.double()
        out = {}
        for name, head, offset in (("mean", model.mean_head, shift), ("loading", model.loading_head, 0.0)):
            value_h, error_h = affine(head, value, error)
            scaled = s * value_h
            error_h = s.abs() * error_h + u * scaled.abs()
            total = scaled + offset
            out[name] = error_h + u * total.abs()
        return out["mean"].squeeze(-1), out["loading"]


def test_step_returns_the_loss_before_the_update_and_evaluate_loss_matches():
    truth, x, f = synthetic_teachers(20, num_points=30)
    model = _student()
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=3, batch_size=8)
    before = em.evaluate_loss(x, f)
    assert em.step(x, f) == pytest.approx(before, rel=1e-6)
    # evaluate_loss runs the float32 network in batches of 8, the direct call in one batch:
    # the two differ only by the round-off of the network's forward pass (BLAS kernels
    # differ with the batch size). Bound it to first order: |Δℓ| ≤ Σ |∂ℓ/∂μ_j| δμ_j +
    # Σ |∂ℓ/∂Φ_ja| δΦ_ja for each of the two evaluations, with δ the componentwise
    # forward bound; the float64 accumulation adds a few ulps of float64.
    from pyro_dlf.sufficient_statistics import batch_statistics, factor_posterior, log_marginal_likelihood

    with torch.no_grad():
        mean, loading = (t.double() for t in model.mean_and_loading(x))
    mean.requires_grad_(), loading.requires_grad_()
    stats = batch_statistics(mean, loading, f)
    noise = model.noise_variance.detach().double()
    loss = -log_marginal_likelihood(stats, factor_posterior(stats, noise), noise).sum()
    grad_mean, grad_loading = torch.autograd.grad(loss, (mean, loading))
    error_mean, error_loading = _forward_roundoff(model, x)
    bound = 2 * float((grad_mean.abs() * error_mean).sum() + (grad_loading.abs() * error_loading).sum())
    bound += 1e-12 * abs(float(loss.detach()))
    direct = -float(model.log_marginal_likelihood(x, f).sum())
    # (A worst-case bound: here about 2e-4 of the loss, while a missing term would move it by O(1).)
    assert abs(em.evaluate_loss(x, f) - direct) <= bound, (em.evaluate_loss(x, f), direct, bound)


@pytest.mark.parametrize("num_outputs", [None, 3, "full"])
def test_noise_update_is_the_closed_form_maximizer(num_outputs):
    """After the σ_f² update, dQ/dσ_f² = 0 at the new value (autograd, float64)."""
    c, covariance = _kind(num_outputs)
    truth, x, f = synthetic_teachers(20, num_points=30, num_outputs=c, num_factors=2)
    x, f = x.double(), f.double()
    torch.manual_seed(0)
    model = DeepLatentFactor(1, 2, (8,), c, activation="Tanh", covariance=covariance).double()
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=0)
    em.step(x, f)
    # −Q/(nmc) as a function of σ_f² alone, the posterior and θ held fixed.
    noise = model.noise_variance.detach().clone().requires_grad_()
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
        L = model.separable_class_factor
        sq = expected_squared_error(mean, loading, f, em.guide.posterior, L)
    neg_q = 0.5 * torch.log(noise) + sq / (2 * noise * f.numel())
    (grad,) = torch.autograd.grad(neg_q, noise)
    # Each term of the derivative is of size 1/σ_f²; round-off leaves ~1e-12 of that.
    assert abs(grad.item()) < 1e-9 / noise.item(), grad.item()


def test_step_recomputes_when_the_data_or_parameters_are_replaced():
    truth, x, f = synthetic_teachers(20, num_points=30)
    truth2, x2, f2 = synthetic_teachers(10, num_points=25, seed=5)
    model = _student()
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=2)
    em.step(x, f)
    # New data (even a different number of teachers): the loss is that of the new data.
    expected = -float(model.log_marginal_likelihood(x2, f2).sum())
    assert em.step(x2, f2) == pytest.approx(expected, rel=1e-6)
    # Parameters replaced without an in-place update (p.data = ...): no stale statistics.
    with torch.no_grad():
        model.loading_head.weight.data = 3 * model.loading_head.weight.data.clone()
    expected = -float(model.log_marginal_likelihood(x2, f2).sum())
    assert em.step(x2, f2) == pytest.approx(expected, rel=1e-6)


def test_fit_is_equivariant_to_the_teachers_units():
    """Teachers in other units (×1e-3): the same fit, rescaled (the σ_f² floor is relative)."""
    truth, x, f = synthetic_teachers(20, num_points=30)
    x, f = x.double(), f.double()
    fits = {}
    for scale in (1.0, 1e-3):
        torch.manual_seed(0)
        model = DeepLatentFactor(1, 2, (8,), activation="Tanh").double()
        with torch.no_grad():
            model.output_scale.fill_(scale)
        model.set_noise_variance(scale ** 2)
        em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=2, generator=torch.Generator().manual_seed(0))
        for _ in range(20):
            em.step(x, scale * f)
        fits[scale] = (model.covariance(x).detach() / scale ** 2, float(model.noise_variance.detach()) / scale ** 2)
    torch.testing.assert_close(fits[1e-3][0], fits[1.0][0], rtol=1e-6, atol=1e-9)
    assert fits[1e-3][1] == pytest.approx(fits[1.0][1], rel=1e-6)


def test_exact_and_minibatch_e_steps_both_converge(record_property):
    """Report the likelihood gap between exact EM and the paper's minibatch E-step (Algorithm 1)."""
    truth, x, f = synthetic_teachers(60, num_points=200, seed=3)
    true_nll = -float(truth.log_marginal_likelihood(x, f).sum()) / f.numel()
    finals = {}
    for estep in ("exact", "minibatch"):
        model = _student(seed=2, noise=float(f.var()))
        em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 5e-3}), num_m_steps=10, batch_size=20,
                estep=estep, generator=torch.Generator().manual_seed(0))
        start = em.evaluate_loss(x, f) / f.numel()
        for _ in range(60):
            em.step(x, f)
        finals[estep] = em.evaluate_loss(x, f) / f.numel()
        # Converged: most of the way from the start to the true parameters' likelihood.
        assert finals[estep] - true_nll < 0.1 * (start - true_nll), (estep, start, finals[estep], true_nll)
    gap = finals["minibatch"] - finals["exact"]
    record_property("nll_per_scalar_exact", finals["exact"])
    record_property("nll_per_scalar_minibatch", finals["minibatch"])
    record_property("nll_gap_minibatch_minus_exact", gap)
    print(f"\nNLL per scalar: exact {finals['exact']:.4f}, minibatch {finals['minibatch']:.4f}, truth {true_nll:.4f}, gap {gap:+.4f}")


@pytest.mark.parametrize("covariance, estep", [("separable", "exact"), ("full", "exact"), ("full", "minibatch")])
def test_multivariate_em_improves_likelihood(covariance, estep):
    truth, x, f = synthetic_teachers(15, num_points=40, num_outputs=3, num_factors=2, covariance=covariance)
    torch.manual_seed(0)
    model = DeepLatentFactor(1, 2, (16,), 3, activation="Tanh", noise_variance=float(f.var()), covariance=covariance)
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=5, estep=estep,
            batch_size=None if estep == "exact" else 20, generator=torch.Generator().manual_seed(0))
    true_nll = -float(truth.log_marginal_likelihood(x, f).sum())
    start = em.evaluate_loss(x, f)
    for _ in range(30):
        em.step(x, f)
    # Most of the way from the start to the true parameters' likelihood.
    assert em.evaluate_loss(x, f) - true_nll < 0.2 * (start - true_nll)


def test_bad_arguments():
    model = _student()
    guide = ExactFactorPosterior(model)
    adam = pyro.optim.Adam({"lr": 1e-2})
    with pytest.raises(ValueError, match="PyroOptim"):
        EM(model, guide, torch.optim.Adam)
    with pytest.raises(ValueError, match="estep"):
        EM(model, guide, adam, estep="approximate")
    with pytest.raises(ValueError, match="guide"):
        EM(model, ExactFactorPosterior(_student()), adam)
    with pytest.raises(ValueError, match="batch_size"):
        EM(model, guide, adam, batch_size=0)
    mv = DeepLatentFactor(1, 2, (4,), 3)
    with pytest.raises(NotImplementedError, match="univariate"):
        EM(mv, ExactFactorPosterior(mv), None, mstep="linear_heads")
    two = DeepLatentFactor(1, 2, (4,), loading_hidden=(3,))
    with pytest.raises(NotImplementedError, match="separate loading body"):
        EM(two, ExactFactorPosterior(two), None, mstep="linear_heads")
    em = EM(model, guide, adam)
    x = torch.randn(10, 1)
    with pytest.raises(ValueError, match="at least 2"):
        em.step(x, torch.randn(1, 10))
    with pytest.raises(TypeError, match="floating-point"):
        em.step(x, torch.ones(3, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x must have shape \(num_points, 1\)"):
        em.step(torch.randn(10, 2), torch.randn(3, 10))
    with pytest.raises(TypeError, match="f has dtype torch.float64"):
        em.step(x, torch.randn(3, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_m_steps"):
        EM(model, guide, adam, estep="minibatch", num_m_steps=0)
    with pytest.warns(UserWarning, match="num_factors=3 >= number of teachers=3"):
        em.step(x, torch.randn(3, 10))


@pytest.mark.parametrize("num_outputs", [None, 3, "full", "full centred", "loading body", "full, loading body"])
def test_parameter_expansion_keeps_each_teachers_fit_and_centres_the_codes(num_outputs):
    """After the expansion step: mean_i E[z_i] = 0 and μ + Φ E[z_i] is unchanged for every teacher (exact);
    with a separate loading body too, since the mean head reads the loading features."""
    centred = num_outputs == "full centred"
    loading_hidden = (5,) if isinstance(num_outputs, str) and "loading body" in num_outputs else None
    if loading_hidden:
        num_outputs = "full" if num_outputs.startswith("full") else None
    c, covariance = _kind("full" if centred else num_outputs)
    truth, x, f = synthetic_teachers(12, num_points=25, num_outputs=c, num_factors=2)
    x, f = x.double(), f.double() + 0.7  # a shared offset the initial mean does not have
    if centred:
        f = f - f.mean(-1, keepdim=True)
    torch.manual_seed(0)
    model = DeepLatentFactor(1, 2, (8,), c, activation="Tanh", covariance=covariance, centered_loadings=centred,
                             loading_hidden=loading_hidden).double()
    guide = ExactFactorPosterior(model)
    em = EM(model, guide, pyro.optim.Adam({"lr": 1e-2}))
    guide.update(x, f)
    from pyro_dlf.sufficient_statistics import combine

    def fits():
        with torch.no_grad():
            mean, loading = model.mean_and_loading(x)
            z = guide.mean.unsqueeze(-1 - len(model.factor_shape))
            return combine(mean, loading, z, model.separable_class_factor)

    before = fits()
    assert guide.mean.mean(0).abs().max() > 1e-3  # there was an offset to move
    em._expand()
    torch.testing.assert_close(fits(), before, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(guide.mean.mean(0), torch.zeros_like(guide.mean[0]), atol=1e-12, rtol=0)
    if not model.separable:
        # The folded covariance: the codes' average second moment is now the prior's, I.
        second = guide.mean.T @ guide.mean / guide.mean.shape[0] + guide.covariance
        torch.testing.assert_close(second, torch.eye(2, dtype=second.dtype), atol=1e-10, rtol=0)


def test_parameter_expansion_shrinks_an_overstated_factor():
    """Teachers that barely vary, loadings that start far too large: the variance must come down to the teachers' spread."""
    truth, x, f = synthetic_teachers(50, num_points=60, seed=6)
    f = f.mean(0) + 0.02 * (f - f.mean(0))  # teachers that agree closely
    spread = float(f.var(0).mean())
    results = {}
    for expand in (False, True):
        torch.manual_seed(0)
        model = DeepLatentFactor(1, 3, (32,), activation="Tanh", noise_variance=1e-4)
        with torch.no_grad():
            model.loading_head.weight.mul_(5.0)
        em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 3e-3}), num_m_steps=5, expand=expand,
                generator=torch.Generator().manual_seed(0))
        for _ in range(40):
            em.step(x, f)
        with torch.no_grad():
            results[expand] = float(model.loading(x).pow(2).sum(-1).mean()) / spread
    print(f"\nepistemic variance / teacher spread: with expansion {results[True]:.2f}, without {results[False]:.2f}")
    # ‖Φ‖² cannot exceed the total spread by more than sampling error (50 teachers: a few ×1/√50).
    assert results[True] < 1.5, results
    assert results[False] > 10 * results[True], results


def test_parameter_expansion_lets_the_mean_fit_the_teachers():
    """A mean misfit shared by all teachers: with expansion μ takes it; without, the loadings absorb it."""
    truth, x, f = synthetic_teachers(40, num_points=60, seed=4)
    f = f + 1.0  # shift every teacher: only the mean function should change
    results = {}
    for expand in (False, True):
        torch.manual_seed(0)
        model = DeepLatentFactor(1, 3, (32,), activation="Tanh", noise_variance=float(f.var()))
        em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 3e-3}), num_m_steps=5, expand=expand,
                generator=torch.Generator().manual_seed(0))
        for _ in range(60):
            em.step(x, f)
        with torch.no_grad():
            misfit = (model.mean(x) - f.mean(0)).pow(2).mean()
        results[expand] = (float(misfit), em.evaluate_loss(x, f))
    # The sample mean of 40 teachers has variance ≈ tr(K)/(40 m) per point; the expanded fit
    # must be within a few times that, and better than plain EM in misfit and likelihood.
    K = truth.covariance(x).detach()
    sampling = float(K.diagonal().mean()) / 40
    print(f"\nmean misfit² with expansion {results[True][0]:.2e}, without {results[False][0]:.2e}, sampling {sampling:.2e}")
    assert results[True][0] < 5 * sampling, (results, sampling)
    assert results[True][0] < results[False][0]
    assert results[True][1] < results[False][1]


def test_optimizer_state_is_kept_per_named_parameter_and_survives_save_and_load(tmp_path):
    """As with SVI: one Adam state per named parameter (σ_f² has its closed form and is not among them)."""
    truth, x, f = synthetic_teachers(10, num_points=30, num_outputs=3, num_factors=2)
    model = DeepLatentFactor(1, 2, (8,), 3, activation="Tanh")
    optim = pyro.optim.Adam({"lr": 1e-2})
    em = EM(model, ExactFactorPosterior(model), optim, num_m_steps=3)
    for _ in range(3):
        em.step(x, f)
    state = optim.get_state()
    name = model._pyro_name
    assert set(state) == {f"{name}.class_factor"} | {f"{name}.{m}$$${p}" for m, p in
                                                      [("body", "0.weight"), ("body", "0.bias"), ("mean_head", "weight"),
                                                       ("mean_head", "bias"), ("loading_head", "weight"), ("loading_head", "bias")]}
    assert all(s["state"] for s in state.values())  # every parameter has moments
    optim.save(tmp_path / "optim.pt")
    fresh = pyro.optim.Adam({"lr": 1e-2})
    fresh.load(tmp_path / "optim.pt", map_location="cpu")
    em2 = EM(model, ExactFactorPosterior(model), fresh, num_m_steps=3)
    em2.step(x, f)  # the loaded moments are consumed by the first step
    assert set(fresh.get_state()) == set(state)


def test_svi_takes_minibatch_steps_on_the_subsampled_plate():
    truth, x, f = synthetic_teachers(10, num_points=40, num_factors=2)
    model = DeepLatentFactor(1, 2, (8,), activation="Tanh")
    guide = ExactFactorPosterior(model)
    guide.update(x, f)
    trace = pyro.poutine.trace(model).get_trace(x, f, subsample_size=8)
    site = trace.nodes["f"]
    assert site["value"].shape == (10, 8) and site["scale"] == pytest.approx(40 / 8)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x, f, subsample_size=8) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_cached_statistics_notice_edits_through_data_and_numpy_views():
    """The loss of a step is that of the data and parameters as they are now, however they were edited."""
    truth, x, f = synthetic_teachers(10, num_points=30)
    model = _student()
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=0)
    em.step(x, f)  # leaves statistics cached for the unchanged parameters
    with torch.no_grad():
        model.loading_head.weight.data.mul_(2.0)  # no version bump on the parameter
    expected = -float(model.log_marginal_likelihood(x, f).sum())
    assert em.step(x, f) == pytest.approx(expected, rel=1e-6)
    f.numpy()[3, 7] += 5.0  # an edit through a NumPy view of the same storage
    expected = -float(model.log_marginal_likelihood(x, f).sum())
    assert em.step(x, f) == pytest.approx(expected, rel=1e-6)


def test_step_and_constructor_name_bad_arguments():
    model = DeepLatentFactor(2, num_factors=1, hidden=(8,))
    guide = ExactFactorPosterior(model)
    optim = pyro.optim.Adam({"lr": 1e-2})
    with pytest.raises(TypeError, match="generator must be None or a torch.Generator"):
        EM(model, guide, optim, generator="seed")
    with pytest.raises(TypeError, match="loss must be None"):
        EM(model, guide, optim, loss=3)
    em = EM(model, guide, optim, num_m_steps=1)
    x, f = torch.randn(6, 2), torch.randn(3, 6)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        em.step(None, f)
    with pytest.raises(TypeError, match="f must be a torch.Tensor"):
        em.step(x, f.tolist())
    assert math.isfinite(em.step(x, f))


def test_em_recovers_a_nugget_that_grows_with_the_distance():
    """Teachers drawn from a DLF whose nugget is σ_f² (1 + d(x))^β (mathematics §9.4), β = 2: EM (network frozen at
    the truth) recovers β and σ_f² within four standard errors of the maximum-likelihood estimate, the errors from
    the observed information of the dense likelihood."""
    truth = random_dlf(hidden=(8,), loading_hidden=(5,), distance_anchors=6, noise_variance=0.05)
    truth.nugget_growth = torch.tensor(2.0, dtype=torch.float64)
    x = torch.randn(60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    torch.manual_seed(2)
    f = truth.sample(x, 100, include_noise=True)
    model = random_dlf(hidden=(8,), loading_hidden=(5,), distance_anchors=6)
    model.load_state_dict(truth.state_dict())
    model.nugget_growth = torch.tensor(0.5, dtype=torch.float64)
    for name, p in model.named_parameters():
        p.requires_grad_("nugget_growth" in name)
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 0.05}), num_m_steps=5)
    losses = [em.step(x, f) for _ in range(150)]
    assert losses[-1] <= losses[0]
    beta, noise = float(model.nugget_growth), float(model.noise_variance)
    with torch.no_grad():
        mean, loading = truth.mean_and_loading(x)
        distance = truth.data_distance(x)[:, 0]

    def nll(params):
        b, log_s2 = params
        cov = loading @ loading.T + torch.diag(log_s2.exp() * (1 + distance).pow(b))
        return -torch.distributions.MultivariateNormal(mean, cov).log_prob(f).sum()

    estimate = torch.tensor([beta, math.log(noise)], dtype=torch.float64)
    se = torch.linalg.inv(torch.autograd.functional.hessian(nll, estimate)).diagonal().sqrt()
    assert abs(beta - 2.0) < 4 * se[0], (beta, se)
    assert abs(math.log(noise) - math.log(0.05)) < 4 * se[1], (noise, se)
