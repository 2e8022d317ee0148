"""EM: the SVI-like contract, monotone likelihood under an exact M-step, exact vs minibatch E-step."""

import warnings

import pyro
import pyro.optim
import pytest
import torch

from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM
from pyro_dlf.models import DeepLatentFactor

from synthetic import synthetic_teachers


def _student(in_features=1, num_factors=3, hidden=(32,), seed=1, dtype=torch.float32, noise=1.0):
    torch.manual_seed(seed)
    return DeepLatentFactor(in_features, num_factors, hidden, activation="Tanh", noise_variance=noise).to(dtype)


def test_marginal_likelihood_never_decreases_with_exact_m_step():
    """Linear heads on a frozen random body: each EM iteration is an exact ECM step (SPEC §4)."""
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


def test_step_returns_the_loss_before_the_update_and_evaluate_loss_matches():
    truth, x, f = synthetic_teachers(20, num_points=30)
    model = _student()
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=3, batch_size=8)
    before = em.evaluate_loss(x, f)
    assert em.step(x, f) == pytest.approx(before, rel=1e-6)
    assert em.evaluate_loss(x, f) == pytest.approx(-float(model.log_marginal_likelihood(x, f).sum()), rel=1e-9)


def test_noise_update_is_the_closed_form_maximizer():
    """After a step with no θ change, σ_f² is the argmax of Q over σ_f² (dQ/dσ² = 0)."""
    truth, x, f = synthetic_teachers(20, num_points=30)
    x, f = x.double(), f.double()
    model = _student(dtype=torch.float64)
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=0)
    em.step(x, f)
    from pyro_dlf.infer import expected_complete_nll

    noise = model.noise_variance.detach().clone()
    values = []
    for factor in (0.9, 1.0, 1.1):
        model.noise_variance_unconstrained.data.copy_((noise * factor).log())
        values.append(float(expected_complete_nll(model, em.guide, x, f).detach()))
    assert values[1] < values[0] and values[1] < values[2]


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


def test_multivariate_em_improves_likelihood():
    truth, x, f = synthetic_teachers(15, num_points=40, num_outputs=3, num_factors=2)
    torch.manual_seed(0)
    model = DeepLatentFactor(1, 2, (16,), 3, activation="Tanh", noise_variance=float(f.var()))
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=5)
    start = em.evaluate_loss(x, f)
    for _ in range(30):
        em.step(x, f)
    assert em.evaluate_loss(x, f) < start - 0.5 * abs(start)


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
    em = EM(model, guide, adam)
    x = torch.randn(10, 1)
    with pytest.raises(ValueError, match="at least 2"):
        em.step(x, torch.randn(1, 10))
    with pytest.raises(TypeError, match="floating-point"):
        em.step(x, torch.ones(3, 10, dtype=torch.int64))
    with pytest.warns(UserWarning, match="num_factors=3 >= number of teachers=3"):
        em.step(x, torch.randn(3, 10))
