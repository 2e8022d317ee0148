"""Tests for pyro_dlf.diagnostics (the arviz adapter)."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from pyro.infer import Predictive

from pyro_dlf import distill
from pyro_dlf.diagnostics import plot_ppc, summary, to_inference_data


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 30).unsqueeze(-1)
    f = torch.sin(3 * x.T) + 0.3 * torch.randn(12, 1) * x.T
    noise = torch.linspace(0.01, 0.02, 12)
    return x, f, distill(x, f, num_factors=2, teacher_noise_variances=noise, num_iterations=5, mmd_steps=20,
                         progress=False, seed=0)


def test_from_prediction(student):
    x, f, st = student
    prediction = st.predict(x, 400, return_samples=True)
    idata = to_inference_data(prediction, observed=f[0], num_chains=4, generator=torch.Generator().manual_seed(0))
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "log_likelihood"}
    pp = idata.posterior_predictive
    assert dict(pp["function"].sizes) == {"chain": 4, "draw": 100, "point": 30}
    assert idata.posterior["noise_variance"].shape == (4, 100)
    # The draws are the prediction's, reshaped: same mean; y adds noise of the drawn variance.
    torch.testing.assert_close(torch.as_tensor(pp["function"].values).reshape(400, 30), prediction.function_samples)
    resid = torch.as_tensor(pp["y"].values - pp["function"].values).reshape(400, 30)
    ratio = (resid.pow(2).mean(1) / prediction.noise_variance_samples).mean()
    # E[resid^2 / sigma^2] = 1; mean of 400 chi2_30/30 has sd sqrt(2/30/400) = 0.013.
    assert abs(float(ratio) - 1) < 5 * (2 / 30 / 400) ** 0.5
    table = summary(idata, group="posterior_predictive", var_names=["function"])
    assert len(table) == 30 and (table["r_hat"] < 1.05).all()  # independent draws: R-hat near 1
    axes = plot_ppc(idata, num_pp_samples=20)
    assert axes is not None


def test_from_predictive_dict(student):
    x, _, st = student
    draws = Predictive(st, num_samples=60)(x)
    idata = to_inference_data(draws, num_chains=3, point_coords=[f"x{k}" for k in range(30)])
    assert set(idata.posterior.data_vars) == {"z", "noise_variance"}
    assert set(idata.posterior_predictive.data_vars) == {"function", "y"}
    assert idata.posterior["z"].shape == (3, 20, 2)
    assert list(idata.posterior_predictive["y"].coords["point"].values[:2]) == ["x0", "x1"]


def test_bad_inputs(student):
    x, f, st = student
    prediction = st.predict(x, 10, return_samples=True)
    with pytest.raises(ValueError, match="num_chains=3"):
        to_inference_data(prediction, num_chains=3)
    with pytest.raises(ValueError, match="num_chains must be a positive int"):
        to_inference_data(prediction, num_chains=0)
    with pytest.raises(ValueError, match=r"observed must be a tensor of shape \(30,\)"):
        to_inference_data(prediction, observed=f[0, :5])
    with pytest.raises(ValueError, match="point_coords has 2 labels for 30 inputs"):
        to_inference_data(prediction, point_coords=["a", "b"])
    with pytest.raises(ValueError, match="return_samples=True"):
        to_inference_data(st.predict(x, 10, return_samples=False))
    with pytest.raises(TypeError, match="RegressionPrediction, a ClassificationPrediction or the dict"):
        to_inference_data([1, 2])


@pytest.mark.parametrize("covariance", ["separable", "full"])
def test_classification_students_of_both_structures(covariance):
    """Logit draws of either class covariance go to posterior_predictive with dims (point, class);
    the Predictive dict of a full student carries its q-vector z."""
    from synthetic import synthetic_teachers

    truth, x, f = synthetic_teachers(6, num_points=15, num_outputs=3, num_factors=2)
    st = distill(x, f, num_factors=2, covariance=covariance, num_iterations=3, mmd_steps=10, progress=False, seed=0)
    idata = to_inference_data(st.predict(x, 40, return_samples=True), num_chains=2)
    assert dict(idata.posterior_predictive["function"].sizes) == {"chain": 2, "draw": 20, "point": 15, "class": 3}
    draws = to_inference_data(Predictive(st, num_samples=8)(x), num_chains=2)
    assert draws.posterior["z"].shape == ((2, 4, 2) if covariance == "full" else (2, 4, 3, 2))


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
def test_log_likelihood_group_makes_az_compare_work(student):
    """Pointwise log p(y_j | draw s) for held-out targets; az.compare ranks a good and a bad target set."""
    import math

    import arviz as az

    x, f, st = student
    prediction = st.predict(x, 400, return_samples=True)
    idata = to_inference_data(prediction, observed=f[0], num_chains=4, generator=torch.Generator().manual_seed(0))
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(400, 30)
    expected = torch.distributions.Normal(prediction.function_samples.double(),
                                          prediction.noise_variance_samples.double().sqrt()[:, None]).log_prob(f[0].double())
    torch.testing.assert_close(ll, expected)
    shifted = to_inference_data(prediction, observed=f[0] + 3.0, num_chains=4)
    table = az.compare({"teacher 0": idata, "shifted": shifted}, ic="waic")
    assert list(table.index) == ["teacher 0", "shifted"]
    # The held-out log predictive density the docs say to read it as.
    lppd = float((ll.logsumexp(0) - math.log(400)).sum())
    assert abs(lppd - float(az.waic(idata).elpd_waic) - float(az.waic(idata).p_waic)) < 1e-6 * abs(lppd)


def test_classification_ppc_and_log_likelihood():
    from synthetic import synthetic_teachers

    truth, x, f = synthetic_teachers(6, num_points=15, num_outputs=3, num_factors=2)
    st = distill(x, f, num_factors=2, num_iterations=3, mmd_steps=10, progress=False, seed=0)
    labels = f.mean(0).argmax(-1)
    idata = to_inference_data(st.predict(x, 40, return_samples=True), observed=labels, num_chains=2,
                              generator=torch.Generator().manual_seed(1))
    assert dict(idata.posterior_predictive["y"].sizes) == {"chain": 2, "draw": 20, "point": 15}
    assert set(torch.as_tensor(idata.posterior_predictive["y"].values).unique().tolist()) <= {0, 1, 2}
    assert (idata.log_likelihood["y"].values <= 0).all()
    assert plot_ppc(idata, num_pp_samples=10) is not None
