"""MMD initialization (mathematics §5)."""

import math

import pyro.optim
import pytest
import torch
from scipy.stats import chi2

from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM, mmd, mmd_initialize
from pyro_dlf.models import DeepLatentFactor

from synthetic import synthetic_teachers


def test_mmd_estimator_is_unbiased_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    same = torch.stack([mmd(torch.randn(50, 2, generator=g), torch.randn(60, 2, generator=g)) for _ in range(200)])
    # Unbiased: the mean over replications is within 4 standard errors of 0.
    assert abs(same.mean()) < 4 * same.std() / math.sqrt(len(same))
    shifted = mmd(torch.randn(50, 2, generator=g) + 1.0, torch.randn(60, 2, generator=g))
    assert shifted > same.mean() + 5 * same.std()
    with pytest.raises(ValueError, match="reference"):
        mmd(torch.randn(5, 2), torch.randn(5, 3))


def test_fitted_codes_look_like_prior_draws():
    n, q = 200, 3
    truth, x, f = synthetic_teachers(n, num_points=60)
    torch.manual_seed(1)
    model = DeepLatentFactor(1, q, (32,), activation="Tanh")
    codes = mmd_initialize(model, x, f, num_steps=300, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (n, q)
    # Mean: n‖z̄‖² ~ χ²_q for prior draws; compare with its 0.999 quantile.
    assert n * codes.mean(0).pow(2).sum() < chi2.ppf(0.999, q)
    # Covariance: for prior draws E‖Ĉ − I‖²_F = (q² + q)/n (Var Ĉ_jk = (1 + δ_jk)/n); allow 3× its root.
    err = (torch.cov(codes.T) - torch.eye(q)).norm()
    assert err < 3 * math.sqrt((q * q + q) / n), err
    # σ_f² was set to the profiled maximizer, close to the true nugget (0.01) here.
    assert 0.5 * 0.01 < float(model.noise_variance.detach()) < 2.0 * 0.01


@pytest.fixture(scope="module")
def ensemble_teachers():
    """Real network teachers: a 10-MLP deep ensemble on the diabetes data, at held-out design points."""
    from sklearn.datasets import load_diabetes

    from pyro_dlf_bench.baselines import DeepEnsembleRegressor
    from pyro_dlf_bench.datasets import train_design_test_split

    data = load_diabetes()
    x, y = torch.as_tensor(data.data, dtype=torch.float32), torch.as_tensor(data.target, dtype=torch.float32)
    parts = train_design_test_split(x, y, (0.6, 0.2, 0.2), seed=0)
    ensemble = DeepEnsembleRegressor(10, num_members=10, hidden=(50, 50))
    ensemble.fit(*parts["train"], epochs=200, weight_decay=1e-4, progress=False, validation_fraction=0.2)
    xd = parts["design"][0]
    f = ensemble.member_predictions(xd)
    return (xd - xd.mean(0)) / xd.std(0), (f - f.mean()) / f.std()


def test_mmd_initialization_beats_random_on_a_fixed_budget(ensemble_teachers):
    """Same number of gradient steps: 300 MMD steps then 60 EM iterations, or 360 EM iterations from random weights.

    Real ensemble teachers, where EM from random weights stalls (the paper's
    ablation). On smooth synthetic DLF draws random initialization catches up
    at an equal budget; the benefit shows on teachers like these.
    """
    x, f = ensemble_teachers
    results = []
    for seed in range(3):
        nll = {}
        for init in ("mmd", "random"):
            torch.manual_seed(seed)
            model = DeepLatentFactor(x.shape[1], 5, (32,), activation="Tanh", noise_variance=float(f.var()))
            g = torch.Generator().manual_seed(seed)
            iterations = 60
            if init == "mmd":
                mmd_initialize(model, x, f, num_steps=300, generator=g)
            else:
                iterations += 300
            em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 3e-3}), num_m_steps=1, generator=g)
            for _ in range(iterations):
                em.step(x, f)
            nll[init] = em.evaluate_loss(x, f) / f.numel()
        results.append(nll)
    print("\n" + "\n".join(f"seed {i}: NLL per scalar, mmd {r['mmd']:.4f}  random {r['random']:.4f}" for i, r in enumerate(results)))
    assert all(r["mmd"] < r["random"] for r in results), results


def test_bad_arguments():
    truth, x, f = synthetic_teachers(5, num_points=10)
    model = DeepLatentFactor(1, 2, (4,))
    with pytest.raises(ValueError, match="penalty"):
        mmd_initialize(model, x, f, penalty=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        mmd_initialize(model, x, f, num_steps=-1)


def test_initialization_arguments_are_named():
    model = DeepLatentFactor(2, num_factors=1, hidden=(8,))
    x, f = torch.randn(6, 2), torch.randn(3, 6)
    cases = [(dict(model=None), TypeError, "model must be a pyro_dlf.models.DeepLatentFactor"),
             (dict(noise_floor=-1), ValueError, "noise_floor must be"),
             (dict(progress="yes"), TypeError, "progress must be True or False"),
             (dict(generator="seed"), TypeError, "generator must be None or a torch.Generator")]
    for change, error, text in cases:
        kwargs = dict(model=model, x=x, f=f, num_steps=1) | change
        with pytest.raises(error, match=text):
            mmd_initialize(**kwargs)
