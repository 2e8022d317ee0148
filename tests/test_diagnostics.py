"""Tests for pyro_dlf.diagnostics (the arviz adapter)."""

import dataclasses
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import pyro
import pytest
import torch
from pyro.infer import Predictive

from pyro_dlf import distill
from pyro_dlf.diagnostics import plot_ppc, summary, to_inference_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23's import-time notice of its 1.x refactor
    import arviz as az

#: Draws and held-out inputs of the loo / waic checks.
NUM_DRAWS, NUM_HELD_OUT = 1000, 200


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 30).unsqueeze(-1)
    f = torch.sin(3 * x.T) + 0.3 * torch.randn(12, 1) * x.T
    noise = torch.linspace(0.01, 0.02, 12)
    return x, f, distill(x, f, num_factors=2, teacher_noise_variances=noise, num_iterations=5, mmd_steps=20,
                         progress=False, seed=0)


@pytest.fixture(scope="module")
def classifier():
    from synthetic import synthetic_teachers

    truth, x, f = synthetic_teachers(6, num_points=15, num_outputs=3, num_factors=2)
    return x, f, distill(x, f, num_factors=2, num_iterations=3, mmd_steps=10, progress=False, seed=0)


@pytest.fixture(scope="module")
def held_out_inputs():
    return torch.rand(NUM_HELD_OUT, 1, generator=torch.Generator().manual_seed(1)) * 4 - 2


def _leave_one_out_reference(log_density):
    """log (1/(S-1)) Σ_{t≠s} p_t by brute force: a logsumexp over the other draws for every s."""
    num_draws = log_density.shape[0]
    others = [torch.cat([log_density[:s], log_density[s + 1:]]).logsumexp(0) for s in range(num_draws)]
    return torch.stack(others) - math.log(num_draws - 1)


def _direct(log_density):
    """Held-out log predictive density Σ_j log (1/S) Σ_s p_sj and its Monte Carlo standard error.

    Every draw is shared by all targets (one z per draw), so the per-target errors are correlated:
    the delta method on the sum, Σ_j log p̄_j ≈ const + (1/S) Σ_s Σ_j p_sj / p_j, gives the error
    as the standard deviation over draws of Σ_j p_sj / p̄_j, over √S.
    """
    num_draws = log_density.shape[0]
    per_target = log_density.logsumexp(0) - math.log(num_draws)
    ratios = (log_density - per_target).exp().sum(1)
    return float(per_target.sum()), float(ratios.std() / math.sqrt(num_draws))


def _class_log_density(logits, labels):
    return logits.double().log_softmax(-1).gather(-1, labels.reshape(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)


def _unexpected_warnings(caught):
    """Caught warnings, less arviz 0.23's compare calling pandas 3's deprecated ``sort_values(inplace=True)``
    (a DeprecationWarning about arviz's own code, raised whatever the data)."""
    return [w for w in caught if not (issubclass(w.category, DeprecationWarning) and "sort_values" in str(w.message))]


def test_from_prediction(student):
    x, f, st = student
    prediction = st.predict(x, 400, return_samples=True)
    idata = to_inference_data(prediction, observed=f[0], num_chains=4, generator=torch.Generator().manual_seed(0))
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "log_likelihood"}
    assert set(idata.posterior.data_vars) == {"function", "noise_variance"}
    assert set(idata.posterior_predictive.data_vars) == {"y"}
    assert dict(idata.posterior["function"].sizes) == {"chain": 4, "draw": 100, "point": 30}
    assert idata.posterior["noise_variance"].shape == (4, 100)
    # The draws are the prediction's, reshaped: same mean; y adds noise of the drawn variance.
    function = torch.as_tensor(idata.posterior["function"].values).reshape(400, 30)
    torch.testing.assert_close(function, prediction.function_samples)
    resid = torch.as_tensor(idata.posterior_predictive["y"].values).reshape(400, 30) - function
    ratio = (resid.pow(2).mean(1) / prediction.noise_variance_samples).mean()
    # E[resid^2 / sigma^2] = 1; mean of 400 chi2_30/30 has sd sqrt(2/30/400) = 0.013.
    assert abs(float(ratio) - 1) < 5 * (2 / 30 / 400) ** 0.5
    table = summary(idata, group="posterior", var_names=["function"])
    assert len(table) == 30 and (table["r_hat"] < 1.05).all()  # independent draws: R-hat near 1
    axes = plot_ppc(idata, num_pp_samples=20)
    assert axes is not None


def test_from_predictive_dict(student):
    x, _, st = student
    draws = Predictive(st, num_samples=60)(x)
    idata = to_inference_data(draws, num_chains=3, point_coords=[f"x{k}" for k in range(30)])
    assert set(idata.posterior.data_vars) == {"z", "noise_variance", "function"}
    assert set(idata.posterior_predictive.data_vars) == {"y"}
    assert idata.posterior["z"].shape == (3, 20, 2)
    assert dict(idata.posterior["function"].sizes) == {"chain": 3, "draw": 20, "point": 30}
    assert list(idata.posterior_predictive["y"].coords["point"].values[:2]) == ["x0", "x1"]
    assert list(idata.posterior["function"].coords["point"].values[:2]) == ["x0", "x1"]


def test_predictive_dict_of_a_prefixed_student(student):
    """A student composed into a larger model names its sites prefix + "z", ...: the adapter reads them
    under their plain names, so the log-likelihood is there too."""
    import copy

    x, f, st = student
    prefixed = copy.deepcopy(st)
    prefixed.prefix = "dlf."
    draws = Predictive(prefixed, num_samples=60)(x)
    assert "dlf.function" in draws
    idata = to_inference_data(draws, observed=f[0], num_chains=3)
    assert set(idata.posterior.data_vars) == {"z", "noise_variance", "function"}
    assert set(idata.posterior_predictive.data_vars) == {"y"}
    assert dict(idata.log_likelihood["y"].sizes) == {"chain": 3, "draw": 20, "point": 30}


def test_bad_inputs(student, classifier):
    x, f, st = student
    prediction = st.predict(x, 10, return_samples=True)
    with pytest.raises(ValueError, match="num_chains=3"):
        to_inference_data(prediction, num_chains=3)
    with pytest.raises(ValueError, match="num_chains must be a positive int"):
        to_inference_data(prediction, num_chains=0)
    with pytest.raises(ValueError, match=r"observed must be a tensor of shape \(30,\)"):
        to_inference_data(prediction, observed=f[0, :5])
    with pytest.raises(ValueError, match="observed must be finite"):
        to_inference_data(prediction, observed=torch.full((30,), float("nan")))
    with pytest.raises(ValueError, match="at least 2 draws"):
        to_inference_data(st.predict(x, 1, return_samples=True), observed=f[0])
    with pytest.raises(ValueError, match="point_coords has 2 labels for 30 inputs"):
        to_inference_data(prediction, point_coords=["a", "b"])
    with pytest.raises(ValueError, match="return_samples=True"):
        to_inference_data(st.predict(x, 10, return_samples=False))
    with pytest.raises(TypeError, match="RegressionPrediction, a ClassificationPrediction or the dict"):
        to_inference_data([1, 2])
    xc, _, sc = classifier
    logits = sc.predict(xc, 10, return_samples=True)
    with pytest.raises(ValueError, match=r"class labels must be integers in 0\.\.2"):
        to_inference_data(logits, observed=torch.full((15,), 3))
    with pytest.raises(ValueError, match=r"class labels must be integers in 0\.\.2"):
        to_inference_data(Predictive(sc, num_samples=4)(xc), observed=torch.full((15,), 0.5))


@pytest.mark.parametrize("covariance", ["separable", "full"])
def test_classification_students_of_both_structures(covariance):
    """Logit draws of either class covariance go to posterior with dims (point, class);
    the Predictive dict of a full student carries its q-vector z."""
    from synthetic import synthetic_teachers

    truth, x, f = synthetic_teachers(6, num_points=15, num_outputs=3, num_factors=2)
    st = distill(x, f, num_factors=2, covariance=covariance, num_iterations=3, mmd_steps=10, progress=False, seed=0)
    idata = to_inference_data(st.predict(x, 40, return_samples=True), num_chains=2)
    assert dict(idata.posterior["function"].sizes) == {"chain": 2, "draw": 20, "point": 15, "class": 3}
    draws = to_inference_data(Predictive(st, num_samples=8)(x), num_chains=2)
    assert draws.posterior["z"].shape == ((2, 4, 2) if covariance == "full" else (2, 4, 3, 2))
    assert dict(draws.posterior["function"].sizes) == {"chain": 2, "draw": 4, "point": 15, "class": 3}


# Teacher 0's targets lie where few of 40 draws have density, so WAIC's variance check fires.
@pytest.mark.filterwarnings("ignore:For one or more samples the posterior variance:UserWarning")
def test_log_likelihood_is_the_density_from_the_other_draws(student, classifier):
    """log_likelihood[s, j] = log (1/(S-1)) Σ_{t≠s} p(y_j | draw t), for a regression and a
    classification student; WAIC's lppd is then exactly Σ_j log (1/S) Σ_s p(y_j | draw s)."""
    x, f, st = student
    prediction = st.predict(x, 40, return_samples=True)
    idata = to_inference_data(prediction, observed=f[0], num_chains=4, generator=torch.Generator().manual_seed(0))
    log_density = torch.distributions.Normal(prediction.function_samples.double(),
                                             prediction.noise_variance_samples.double().sqrt()[:, None]).log_prob(f[0].double())
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(40, 30)
    torch.testing.assert_close(ll, _leave_one_out_reference(log_density), rtol=1e-12, atol=1e-12)
    waic = az.waic(idata)
    direct, _ = _direct(log_density)
    assert abs(float(waic.elpd_waic) + float(waic.p_waic) - direct) < 1e-9 * abs(direct)

    xc, fc, sc = classifier
    labels = fc.mean(0).argmax(-1)
    logits = sc.predict(xc, 40, return_samples=True)
    idata = to_inference_data(logits, observed=labels, num_chains=2, generator=torch.Generator().manual_seed(1))
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(40, 15)
    reference = _leave_one_out_reference(_class_log_density(logits.logit_samples, labels))
    torch.testing.assert_close(ll, reference, rtol=1e-12, atol=1e-12)


def test_leave_one_out_sums_are_stable():
    """Densities spanning 400 orders of magnitude (one draw near the target, the rest far away):
    the prefix/suffix sums match the brute-force logsumexp over the other draws."""
    from pyro_dlf.diagnostics import _leave_one_out_log_mean

    generator = torch.Generator().manual_seed(0)
    log_density = -1000 * torch.rand(50, 7, generator=generator, dtype=torch.float64)
    log_density[3] = 0.0  # the draw that carries every target
    result = _leave_one_out_log_mean(log_density)
    torch.testing.assert_close(result, _leave_one_out_reference(log_density), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(result).all()


def _held_out_case(task, source, student, classifier, inputs):
    """(idata of the targets, idata of shifted targets, per-draw log densities of the targets).

    The targets are ones the student describes: one independent draw of its own predictive
    (another z, another noise draw or class draw) at the held-out inputs.
    """
    st = student[2] if task == "regression" else classifier[2]
    pyro.set_rng_seed(5)
    targets = Predictive(st, num_samples=1)(inputs)["y"][0]
    shifted = targets + 0.5 if task == "regression" else (targets + 1) % 3
    if source == "predict":
        torch.manual_seed(2)
        draws = st.predict(inputs, NUM_DRAWS, return_samples=True)
        generator = torch.Generator().manual_seed(3)
        function = draws.function_samples if task == "regression" else draws.logit_samples
        noise = draws.noise_variance_samples[:, None] if task == "regression" else None
    else:
        pyro.set_rng_seed(2)
        draws = Predictive(st, num_samples=NUM_DRAWS)(inputs)
        generator = None
        function, noise = draws["function"], draws.get("noise_variance")
    if task == "regression":
        log_density = torch.distributions.Normal(function.double(), noise.double().sqrt()).log_prob(targets.double())
    else:
        log_density = _class_log_density(function, targets)
    idata = to_inference_data(draws, observed=targets, num_chains=4, generator=generator)
    return idata, to_inference_data(draws, observed=shifted, num_chains=4, generator=generator), log_density


@pytest.mark.parametrize("source", ["predict", "Predictive"])
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_loo_and_waic_are_the_held_out_log_predictive_density(task, source, student, classifier, held_out_inputs):
    """On 200 held-out targets with 1000 draws, az.loo and az.waic give the directly computed
    Σ_j log (1/S) Σ_s p(y_j | draw s) within 3 Monte Carlo standard errors (or 1 %), with small
    Pareto k; loo, waic, compare and summary raise no warning; compare ranks the targets above shifted ones."""
    idata, shifted, log_density = _held_out_case(task, source, student, classifier, held_out_inputs)
    direct, standard_error = _direct(log_density)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loo = az.loo(idata, pointwise=True)
        waic = az.waic(idata)
        by_waic = az.compare({"targets": idata, "shifted": shifted}, ic="waic")
        summary(idata)
        az.summary(idata)
        summary(idata, group="posterior_predictive")
    assert _unexpected_warnings(caught) == [], [str(w.message) for w in caught]
    tolerance = max(3 * standard_error, 0.01 * abs(direct))
    assert abs(float(loo.elpd_loo) - direct) < tolerance
    assert abs(float(waic.elpd_waic) - direct) < tolerance
    assert abs(float(waic.elpd_waic) + float(waic.p_waic) - direct) < 1e-9 * abs(direct)  # lppd: the same sum
    assert 0 <= float(waic.p_waic) < standard_error and abs(float(loo.p_loo)) < standard_error
    assert float(loo.pareto_k.max()) < 0.7
    assert list(by_waic.index) == ["targets", "shifted"]
    with warnings.catch_warnings():
        # Shifted targets sit where few draws have density: PSIS rightly flags them (large k).
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*sort_values.*")
        by_loo = az.compare({"shifted": shifted, "targets": idata})
    assert list(by_loo.index) == ["targets", "shifted"]


def test_certain_classes_summarize_quietly_and_keep_loo_finite():
    """A confident classifier: class draws every draw agrees on have no spread (R-hat undefined,
    NaN) and summary says so without numpy warnings; labels certain to float precision keep
    az.loo finite and equal to the held-out density."""
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    logits = torch.stack([3 * x[:, 0], -3 * x[:, 0], torch.full((40,), -8.0)], -1)
    teachers = logits + 0.3 * torch.randn(8, 1, 3) * (1 + x)
    st = distill(x, teachers, num_factors=2, num_iterations=5, mmd_steps=20, progress=False, seed=0)
    inputs = torch.rand(NUM_HELD_OUT, 1, generator=torch.Generator().manual_seed(1)) * 4 - 2
    pyro.set_rng_seed(4)
    labels = Predictive(st, num_samples=1)(inputs)["y"][0]
    torch.manual_seed(3)
    prediction = st.predict(inputs, NUM_DRAWS, return_samples=True)
    idata = to_inference_data(prediction, observed=labels, num_chains=4, generator=torch.Generator().manual_seed(1))
    class_draws = torch.as_tensor(idata.posterior_predictive["y"].values).reshape(NUM_DRAWS, -1)
    constant = (class_draws == class_draws[:1]).all(0)
    assert constant.sum() >= 10  # the case under test: many inputs whose class every draw agrees on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = summary(idata, group="posterior_predictive")
        az.summary(idata)
        loo = az.loo(idata)
    assert _unexpected_warnings(caught) == [], [str(w.message) for w in caught]
    assert table["r_hat"].isna().to_numpy().tolist() == constant.tolist()
    direct, standard_error = _direct(_class_log_density(prediction.logit_samples, labels))
    assert abs(float(loo.elpd_loo) - direct) < max(3 * standard_error, 0.01 * abs(direct))

    # Five times the logits: labels certain to float precision, whose columns PSIS cannot resolve.
    certain = dataclasses.replace(prediction, logit_samples=5 * prediction.logit_samples)
    idata = to_inference_data(certain, observed=labels, num_chains=4, generator=torch.Generator().manual_seed(1))
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(NUM_DRAWS, -1)
    flat = (ll == ll[:1]).all(0)
    assert flat.sum() >= 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        waic = az.waic(idata)
    assert _unexpected_warnings(caught) == []
    with warnings.catch_warnings():
        # arviz cannot fit a tail to a constant column: k = inf there (documented), the term exact.
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        loo = az.loo(idata, pointwise=True)
    assert torch.isinf(torch.as_tensor(loo.pareto_k.values)).tolist() == flat.tolist()
    direct, standard_error = _direct(_class_log_density(certain.logit_samples, labels))
    for elpd in (float(loo.elpd_loo), float(waic.elpd_waic)):
        assert abs(elpd - direct) < max(3 * standard_error, 0.01 * abs(direct))


def test_multi_output_and_heteroscedastic_regression(student):
    """(m, d) targets of a multi-output student: log densities summed over outputs, dims (point, output);
    per-input noise draws of a heteroscedastic student: noise_variance has dims (point,)."""
    from synthetic import synthetic_teachers

    truth, x, f = synthetic_teachers(30, num_points=25, num_outputs=2, num_factors=2, covariance="full")
    noise = torch.stack([torch.linspace(0.01, 0.02, 30), torch.linspace(0.5, 0.9, 30)], -1)
    st = distill(x, f, task="regression", covariance="full", num_factors=2, teacher_noise_variances=noise, hidden=(16,),
                 num_iterations=5, mmd_steps=20, progress=False)
    prediction = st.predict(x, 40, return_samples=True)
    idata = to_inference_data(prediction, observed=f[0], num_chains=2)
    assert dict(idata.posterior["function"].sizes) == {"chain": 2, "draw": 20, "point": 25, "output": 2}
    assert dict(idata.posterior["noise_variance"].sizes) == {"chain": 2, "draw": 20, "output": 2}
    assert dict(idata.posterior_predictive["y"].sizes) == {"chain": 2, "draw": 20, "point": 25, "output": 2}
    assert dict(idata.observed_data["y"].sizes) == {"point": 25, "output": 2}
    log_density = torch.distributions.Normal(prediction.function_samples.double(),
                                             prediction.noise_variance_samples.double().sqrt()[:, None]).log_prob(f[0].double()).sum(-1)
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(40, 25)
    torch.testing.assert_close(ll, _leave_one_out_reference(log_density), rtol=1e-12, atol=1e-12)
    pyro.set_rng_seed(0)
    draws = Predictive(st, num_samples=40)(x)
    ll = torch.as_tensor(to_inference_data(draws, observed=f[0], num_chains=2).log_likelihood["y"].values).reshape(40, 25)
    log_density = torch.distributions.Normal(draws["function"].double(),
                                             draws["noise_variance"].double().sqrt()).log_prob(f[0].double()).sum(-1)
    torch.testing.assert_close(ll, _leave_one_out_reference(log_density), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"observed must be a tensor of shape \(25, 2\)"):
        to_inference_data(prediction, observed=f[0, :, 0])
    # One inverse gamma shared by both outputs: one σ² per draw, (S,), broadcast over points and outputs.
    shared = distill(x, f, task="regression", covariance="full", num_factors=2, teacher_noise_variances=noise[:, 1], hidden=(16,),
                     num_iterations=5, mmd_steps=20, progress=False).predict(x, 40, return_samples=True)
    assert shared.noise_variance_samples.shape == (40,) and shared.sample_observations().shape == (40, 25, 2)
    ll = torch.as_tensor(to_inference_data(shared, observed=f[0], num_chains=2).log_likelihood["y"].values).reshape(40, 25)
    log_density = torch.distributions.Normal(shared.function_samples.double(), shared.noise_variance_samples.double().sqrt()[:, None, None]
                                             ).log_prob(f[0].double()).sum(-1)
    torch.testing.assert_close(ll, _leave_one_out_reference(log_density), rtol=1e-12, atol=1e-12)

    x, teachers, _ = student
    variances = 0.01 * (1 + x.T.abs()).expand(12, 30)
    hetero = distill(x, teachers, num_factors=2, teacher_noise_variances=variances, num_iterations=3, mmd_steps=10,
                     progress=False, seed=0)
    prediction = hetero.predict(x, 40, return_samples=True)
    idata = to_inference_data(prediction, observed=teachers[0], num_chains=2)
    assert dict(idata.posterior["noise_variance"].sizes) == {"chain": 2, "draw": 20, "point": 30}
    log_density = torch.distributions.Normal(prediction.function_samples.double(),
                                             prediction.noise_variance_samples.double().sqrt()).log_prob(teachers[0].double())
    ll = torch.as_tensor(idata.log_likelihood["y"].values).reshape(40, 30)
    torch.testing.assert_close(ll, _leave_one_out_reference(log_density), rtol=1e-12, atol=1e-12)


def test_classification_ppc_and_log_likelihood(classifier):
    x, f, st = classifier
    labels = f.mean(0).argmax(-1)
    idata = to_inference_data(st.predict(x, 40, return_samples=True), observed=labels, num_chains=2,
                              generator=torch.Generator().manual_seed(1))
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "log_likelihood"}
    assert dict(idata.posterior_predictive["y"].sizes) == {"chain": 2, "draw": 20, "point": 15}
    assert set(torch.as_tensor(idata.posterior_predictive["y"].values).unique().tolist()) <= {0, 1, 2}
    assert (idata.log_likelihood["y"].values <= 0).all()
    assert plot_ppc(idata, num_pp_samples=10) is not None


def test_a_generator_that_is_not_one_is_named(student):
    x, _, fitted = student
    prediction = fitted.predict(x, num_samples=4, return_samples=True)
    with pytest.raises(TypeError, match="generator must be None or a torch.Generator"):
        to_inference_data(prediction, generator="seed")


def test_summary_and_plot_ppc_name_what_idata_lacks(student):
    x, _, fitted = student
    idata = to_inference_data(fitted.predict(x, num_samples=4, return_samples=True))
    with pytest.raises(TypeError, match="idata must be an arviz.InferenceData.*got str"):
        summary("posterior.nc")
    with pytest.raises(ValueError, match=r"var_names: \['nope'\] not in idata's 'posterior' group; choose from \['function', 'noise_variance'\]"):
        summary(idata, var_names=["nope"])
    with pytest.raises(ValueError, match="group: idata has no 'prior' group"):
        summary(idata, group="prior")
    with pytest.raises(ValueError, match="idata has no 'observed_data' group .*; pass observed="):
        plot_ppc(idata)
    # arviz's own name filters still reach arviz.
    assert list(summary(idata, var_names=["~function"]).index) == ["noise_variance"]
    assert len(summary(idata, var_names=["noise"], filter_vars="like")) == 1
