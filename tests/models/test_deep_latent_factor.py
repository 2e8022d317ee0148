"""DeepLatentFactor: shapes, covariance, the Pyro model's sites and its input checks."""

import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

from pyro_dlf.models import DeepLatentFactor
from pyro_dlf.models.deep_latent_factor import DISTANCE_REFERENCE_TAIL

from synthetic import random_dlf


@pytest.mark.parametrize("num_outputs", [None, 3])
def test_shapes(num_outputs):
    model = random_dlf(num_outputs=num_outputs)
    x = torch.randn(5, 2, dtype=torch.float64)
    mean, loading = model.mean_and_loading(x)
    assert mean.shape == ((5,) if num_outputs is None else (5, 3))
    assert loading.shape == (5, 3)
    assert model.sample(x, 7).shape == ((7, 5) if num_outputs is None else (7, 5, 3))
    if num_outputs is None:
        torch.testing.assert_close(model.covariance(x), loading @ loading.T)
    else:
        k_x, k_c = model.covariance(x)
        L = model.class_factor
        torch.testing.assert_close(k_x, loading @ loading.T)
        torch.testing.assert_close(k_c, L @ L.T)


@pytest.mark.parametrize("num_outputs", [None, 3])
def test_observed_site_log_prob(num_outputs):
    """Conditioned on z, the site f is N(μ + Φᵀz, σ_f²) entrywise."""
    model = random_dlf(num_outputs=num_outputs)
    x = torch.randn(6, 2, dtype=torch.float64)
    n = 4
    f = torch.randn((n, 6) if num_outputs is None else (n, 6, 3), dtype=torch.float64)
    z = torch.randn((n, 1) + tuple(model.factor_shape), dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model, {"z": z})).get_trace(x, f)
    trace.compute_log_prob()
    mean, loading = model.mean_and_loading(x)
    if num_outputs is None:
        fitted = mean + z.squeeze(1) @ loading.T
    else:
        fitted = mean + torch.einsum("ncq,mq,kc->nmk", z.squeeze(1), loading, model.class_factor)
    expected = torch.distributions.Normal(fitted, model.noise_variance.sqrt()).log_prob(f).sum()
    torch.testing.assert_close(trace.nodes["f"]["log_prob_sum"], expected)
    torch.testing.assert_close(trace.nodes["function"]["value"], fitted)
    assert trace.nodes["z"]["value"].shape == z.shape


def test_predictive_over_model_draws_teachers():
    model = random_dlf(num_outputs=3)
    x = torch.randn(4, 2, dtype=torch.float64)
    out = Predictive(model, num_samples=5, parallel=True)(x, num_members=2)
    assert out["f"].shape == (5, 2, 4, 3)
    assert out["z"].shape == (5, 2, 1, 3, 3)


def test_full_model_shapes_and_covariance():
    """Full: Φ(x) is c×q per input; the covariance of the (point, class) pairs is Φ_stacked Φ_stackedᵀ."""
    model = random_dlf(num_outputs="full")
    x = torch.randn(5, 2, dtype=torch.float64)
    mean, loading = model.mean_and_loading(x)
    assert mean.shape == (5, 3) and loading.shape == (5, 3, 3)
    assert model.factor_shape == (3,) and not model.separable and model.separable_class_factor is None
    assert model.sample(x, 7).shape == (7, 5, 3)
    K = model.covariance(x)
    stacked = loading.reshape(15, 3)
    torch.testing.assert_close(K, stacked @ stacked.T)
    # Row j·c + k is class k at x_j (GPyTorch's interleaved multitask order).
    torch.testing.assert_close(K[1 * 3 + 2, 4 * 3 + 0], loading[1, 2] @ loading[4, 0])
    per_input = model.class_covariance(x)
    torch.testing.assert_close(per_input, loading @ loading.mT)
    torch.testing.assert_close(model.function_variance(x), per_input.diagonal(dim1=-2, dim2=-1))
    with pytest.raises(ValueError, match="depends on the input"):
        model.class_covariance()


def test_separable_function_variance_and_class_covariance_at_inputs():
    model = random_dlf(num_outputs=3)
    x = torch.randn(4, 2, dtype=torch.float64)
    phi = model.loading(x)
    LLt = model.class_covariance()
    torch.testing.assert_close(model.class_covariance(x), phi.pow(2).sum(-1)[:, None, None] * LLt)
    torch.testing.assert_close(model.function_variance(x), phi.pow(2).sum(-1)[:, None] * LLt.diagonal())


def test_full_model_observed_site_and_centred_loadings():
    model = DeepLatentFactor(2, 2, (8,), 4, covariance="full", centered_loadings=True).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    loading = model.loading(x)
    torch.testing.assert_close(loading.sum(-2), torch.zeros(6, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    f = torch.randn(3, 6, 4, dtype=torch.float64)
    z = torch.randn(3, 1, 2, dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model, {"z": z})).get_trace(x, f)
    trace.compute_log_prob()
    fitted = model.mean(x) + torch.einsum("nq,mcq->nmc", z.squeeze(1), loading)
    expected = torch.distributions.Normal(fitted, model.noise_variance.sqrt()).log_prob(f).sum()
    torch.testing.assert_close(trace.nodes["f"]["log_prob_sum"], expected)
    out = Predictive(model, num_samples=5, parallel=True)(x, num_members=2)
    assert out["f"].shape == (5, 2, 6, 4) and out["z"].shape == (5, 2, 1, 2)


def test_custom_body():
    body = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh())
    model = DeepLatentFactor(num_factors=2, body=body, body_features=8)
    x = torch.randn(5, 2, 3)
    assert model.loading(x).shape == (5, 2)
    assert model.config()["custom_body"] is True


@pytest.mark.parametrize("num_outputs", [None, "full"])
def test_separate_loading_body(num_outputs):
    """With loading_hidden the loadings come from their own body alone; the mean reads both bodies."""
    model = random_dlf(num_outputs=num_outputs, hidden=(8, 8), loading_hidden=(5,))
    x = torch.randn(7, 2, dtype=torch.float64)
    assert model.mean_head.in_features == 8 + 5 and model.loading_head.in_features == 5
    assert model.features(x).shape == (7, 13) and model.config()["loading_hidden"] == [5]
    mean, loading = model.mean_and_loading(x)
    with torch.no_grad():
        model.body[0].weight.add_(1.0)  # the mean body only
    new_mean, new_loading = model.mean_and_loading(x)
    assert torch.equal(new_loading, loading) and not torch.allclose(new_mean, mean)
    with torch.no_grad():
        model.loading_body[0].weight.add_(1.0)  # the loading body moves both heads
    again_mean, again_loading = model.mean_and_loading(x)
    assert not torch.allclose(again_loading, loading) and not torch.allclose(again_mean, new_mean)
    # The noise-free covariance is still Φ(x)Φ(x')ᵀ, whatever body gives Φ.
    phi = model.loading(x).flatten(1) if num_outputs is None else model.loading(x).flatten(0, 1)
    torch.testing.assert_close(model.covariance(x), phi @ phi.T)


def test_log_marginal_likelihood_checks_inputs():
    model = random_dlf()
    x = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="f has values at 4 design points"):
        model.log_marginal_likelihood(x, torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        model.log_marginal_likelihood(x, torch.full((3, 5), float("nan"), dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_features=2, num_factors=0), "num_factors"),
        (dict(in_features=2, num_factors=2, num_outputs=0), "num_outputs"),
        (dict(num_factors=2), "in_features"),
        (dict(in_features=2, num_factors=2, activation="Sigmoidish"), "activation"),
        (dict(in_features=2, num_factors=2, noise_variance=0.0), "noise_variance"),
        (dict(num_factors=2, body=nn.Linear(2, 3)), "body_features"),
        (dict(in_features=2, num_factors=2, num_outputs=3, covariance="diagonal"), "covariance must be one of"),
        (dict(in_features=2, num_factors=2, covariance="full"), "needs num_outputs"),
        (dict(in_features=2, num_factors=2, num_outputs=1, covariance="full"), "num_outputs=1 with covariance='full'"),
        (dict(in_features=2, num_factors=2, num_outputs=3, centered_loadings=True), "centered_loadings"),
        (dict(in_features=2, num_factors=2, loading_hidden=()), "loading_hidden must be None or positive widths"),
        (dict(in_features=2, num_factors=2, loading_hidden=(0,)), "loading_hidden must be None or positive widths"),
        (dict(in_features=2, num_factors=2, loading_hidden=50), "loading_hidden must be None or positive widths"),
        (dict(num_factors=2, body=nn.Linear(2, 3), body_features=3, loading_hidden=(4,)), "loading_hidden: a separate loading body"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepLatentFactor(**kwargs)


def test_body_must_be_a_module():
    with pytest.raises(TypeError, match="body"):
        DeepLatentFactor(num_factors=2, body=lambda x: x, body_features=2)


def test_constructor_arguments_are_named():
    cases = [(dict(in_features=2, hidden="50"), "hidden must be positive widths"),
             (dict(in_features=2, hidden=(0,)), "hidden must be positive widths"),
             (dict(in_features=2, hidden=None), "hidden must be positive widths"),
             (dict(in_features=2, num_outputs=True), "num_outputs must be"),
             (dict(in_features=2.5), "in_features must be"),
             (dict(in_features=2, num_outputs=3, covariance="full", centered_loadings="yes"), "centered_loadings must be True or False"),
             (dict(body=nn.Linear(2, 4), body_features="4"), "body_features must be"),
             (dict(in_features=2, name=5), "name must be None")]
    for kwargs, text in cases:
        with pytest.raises((TypeError, ValueError)) as caught:
            DeepLatentFactor(**kwargs)
        assert text in str(caught.value), (kwargs, caught.value)


def test_network_methods_name_their_inputs():
    model = DeepLatentFactor(2, num_factors=2, hidden=(8,))
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(num_points, 2\)"):
        model.mean_and_loading(torch.randn(5, 3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model.mean_and_loading(None)
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        model.mean_and_loading(x.double())
    with pytest.raises(ValueError, match="x2 must have shape"):
        model.covariance(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match="x1 contains 10 non-finite"):
        model.covariance(x * float("nan"))
    assert model.covariance(x).shape == (5, 5)


@pytest.mark.parametrize("loading_hidden", [(5,), None])
def test_distance_feature_is_zero_at_the_anchors_and_grows_linearly_beyond_them(loading_hidden):
    """d(x) = min_a ‖x − a‖ / s in standardized coordinates (mathematics §9.3): 0 at an anchor, and along a ray
    far from the data it grows by ‖Δx‖ / s per step."""
    model = random_dlf(hidden=(8,), loading_hidden=loading_hidden, distance_anchors=6)
    anchors = model.anchors * model.input_scale + model.input_loc
    torch.testing.assert_close(model.data_distance(anchors), torch.zeros(6, 1, dtype=torch.float64), atol=1e-12, rtol=0)
    direction = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    far = torch.cat([100 * direction, 101 * direction])
    step = model.data_distance(far).diff(dim=0)
    torch.testing.assert_close(step, torch.ones(1, 1, dtype=torch.float64) / model.distance_scale, rtol=1e-3, atol=0)
    body = model.loading_body if loading_hidden is not None else model.body
    assert body[0].in_features == 3  # two inputs and the distance
    assert model.config()["distance_anchors"] == 6


def test_distance_reference_is_the_reach_of_new_inputs_among_the_data():
    """``distance_reference`` (mathematics §9.4) is the 1 − DISTANCE_REFERENCE_TAIL quantile of each anchor's distance
    to the nearest other anchor, in units of the median of those distances: all but that share of the anchors,
    each a new input among the others, lie within it."""
    model = DeepLatentFactor(3, num_factors=2, hidden=(4,), distance_anchors=256).double()
    x = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model.set_anchors(x)
    xs = (x - model.input_loc) / model.input_scale
    gaps = torch.cdist(xs, xs).fill_diagonal_(float("inf")).min(1).values
    expected = torch.quantile(gaps / gaps.median(), 1 - DISTANCE_REFERENCE_TAIL)
    torch.testing.assert_close(model.distance_reference, expected)
    inside = (gaps / model.distance_scale <= model.distance_reference).double().mean()
    assert inside >= 1 - DISTANCE_REFERENCE_TAIL
    assert model.distance_reference > 1  # the median is 1: the reach of 95 % lies beyond it


def _dense_law(model, x):
    """N(vec μ, Φ_stacked Φ_stackedᵀ + diag σ_f²(x)) of one teacher's values, classes fastest (dense, float64)."""
    mean, loading = model.mean_and_loading(x)
    nugget = model.nugget_variance(x)
    if model.separable:
        k_x, k_c = model.covariance(x)
        cov = torch.kron(k_x, k_c)
    else:
        cov = model.covariance(x) if model.multivariate else loading @ loading.T
    if model.multivariate:
        nugget = nugget.repeat_interleave(model.num_outputs)
    return torch.distributions.MultivariateNormal(mean.flatten(), cov + torch.diag(nugget))


@pytest.mark.parametrize("num_outputs", [None, 3, "full"])
def test_distance_feature_keeps_the_exact_marginal_likelihood(num_outputs):
    """The feature is a fixed function of x and the nugget grows with it, σ_f² (1 + d(x))^β (mathematics §9.4):
    log p(f_i) is still exactly N(μ, ΦΦᵀ + diag σ_f²(x)), by whitening (univariate, separable and full models)."""
    model = random_dlf(hidden=(8,), loading_hidden=(5,), distance_anchors=6, num_outputs=num_outputs)
    model.nugget_growth = torch.tensor(1.7, dtype=torch.float64)
    x = torch.randn(9, 2, dtype=torch.float64) * 3
    shape = (4, 9) if not model.multivariate else (4, 9, model.num_outputs)
    f = torch.randn(shape, dtype=torch.float64)
    weight = model.nugget_weight(x)
    assert float(weight.max() / weight.min()) > 2  # the nugget does vary over these points
    dense = _dense_law(model, x)
    torch.testing.assert_close(model.log_marginal_likelihood(x, f), dense.log_prob(f.flatten(1)).detach())
    torch.testing.assert_close(model.log_marginal_likelihood(x, f, batch_size=4), dense.log_prob(f.flatten(1)).detach())


def test_growing_nugget_with_teachers_observed_on_different_points():
    """With an observation mask each teacher's density is its observed values' marginal of the dense law."""
    model = random_dlf(hidden=(8,), loading_hidden=(5,), distance_anchors=6)
    x = torch.randn(7, 2, dtype=torch.float64) * 3
    f = torch.randn(3, 7, dtype=torch.float64)
    observed = torch.ones(3, 7, dtype=torch.bool)
    observed[0, :3] = False
    observed[2, 5:] = False
    dense = _dense_law(model, x)
    expected = []
    for i in range(3):
        keep = observed[i]
        law = torch.distributions.MultivariateNormal(dense.loc[keep], dense.covariance_matrix[keep][:, keep])
        expected.append(law.log_prob(f[i, keep]))
    torch.testing.assert_close(model.log_marginal_likelihood(x, f, observed=observed), torch.stack(expected).detach())


def test_growing_nugget_in_the_pyro_model_and_its_draws():
    """The site ``f`` has scale σ_f(x) = σ_f (1 + d(x))^{β/2}; ``sample(include_noise=True)`` draws that nugget."""
    model = random_dlf(hidden=(8,), loading_hidden=(5,), distance_anchors=6)
    x = torch.randn(5, 2, dtype=torch.float64) * 3
    trace = poutine.trace(model).get_trace(x, torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(trace.nodes["f"]["fn"].scale.expand(2, 5)[0], model.nugget_variance(x).sqrt().detach())
    torch.manual_seed(0)
    draws = model.sample(x, 40_000, include_noise=True)
    smooth = model.function_variance(x).detach()
    # The draws' variance is ‖Φ‖² + σ_f²(x) up to sampling error (4.5 standard errors of a variance: √(2/S)).
    total = smooth + model.nugget_variance(x).detach()
    assert torch.all((draws.var(0) / total - 1).abs() < 4.5 * (2 / 40_000) ** 0.5)


def test_distance_feature_needs_rows_and_anchors():
    with pytest.raises(ValueError, match="distance_anchors measures distances between"):
        DeepLatentFactor(None, 2, body=nn.Linear(3, 4), body_features=4, distance_anchors=5)
    with pytest.raises(ValueError, match="set_anchors: this model has no distance feature"):
        random_dlf().set_anchors(torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="distance_anchors must be"):
        DeepLatentFactor(2, 2, distance_anchors=0)
