"""Heteroscedastic teachers (mathematics §6): the predictive's variance decomposition matches the ensemble's."""

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
    per_draw = torch.distributions.Normal(pred.function_samples.double(), pred.noise_variance_samples.double().sqrt()).log_prob(
        means[0].double())
    # Each entry is the density of the target estimated from the other 39 draws (pyro_dlf.diagnostics).
    expected = torch.stack([torch.cat([per_draw[:s], per_draw[s + 1:]]).logsumexp(0) for s in range(40)]) - math.log(39)
    torch.testing.assert_close(ll, expected)
    assert dict(idata.posterior["noise_variance"].sizes) == {"chain": 2, "draw": 20, "point": 60}


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


def _small_heteroscedastic_student():
    from pyro_dlf.likelihoods.heteroscedastic import HeteroscedasticNoise

    from synthetic import random_dlf

    torch.manual_seed(0)
    return Student(random_dlf(dtype=torch.float32), "regression", noise_model=HeteroscedasticNoise(2, (6,)))


@pytest.mark.parametrize("field, value, match", [
    ("hidden", [10 ** 9], r"noise.heteroscedastic.hidden\[0\] = 1000000000 is larger than any tensor axis"),
    ("hidden", [6] * 10 ** 5, r"noise.heteroscedastic.hidden lists 100000 layers but the file holds \d+ tensors"),
    ("in_features", 10 ** 9, "noise.heteroscedastic.in_features = 1000000000 is larger than any tensor axis"),
    ("in_features", 3, "noise.heteroscedastic.in_features = 3 but the model reads 2 input features"),
])
def test_the_noise_models_widths_are_checked_before_it_is_built(tmp_path, monkeypatch, field, value, match):
    """A file whose noise model claims a 10⁹-unit layer (checksum recomputed) is named before any module is
    built from it -- not even on the meta device."""
    from pyro_dlf.likelihoods.heteroscedastic import HeteroscedasticNoise
    from pyro_dlf.student_file import checksum

    _small_heteroscedastic_student().save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    payload["noise"]["heteroscedastic"][field] = value
    payload["checksum"] = checksum(payload)
    torch.save(payload, tmp_path / "bad.pt")
    built = []
    original = HeteroscedasticNoise.__init__
    monkeypatch.setattr(HeteroscedasticNoise, "__init__", lambda self, *a, **k: built.append(a) or original(self, *a, **k))
    with pytest.raises(ValueError, match=match):
        Student.load(tmp_path / "bad.pt")
    assert built == []


def test_a_noise_width_that_disagrees_with_the_weights_is_decided_on_the_meta_device(tmp_path, monkeypatch):
    from pyro_dlf.likelihoods.heteroscedastic import HeteroscedasticNoise
    from pyro_dlf.student_file import checksum

    student = _small_heteroscedastic_student()
    student.save(tmp_path / "s.pt")
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    payload["noise"]["heteroscedastic"]["hidden"] = [5]
    payload["checksum"] = checksum(payload)
    torch.save(payload, tmp_path / "bad.pt")
    devices = []
    original = HeteroscedasticNoise.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append(self.input_loc.device.type)

    monkeypatch.setattr(HeteroscedasticNoise, "__init__", recording)
    with pytest.raises(ValueError, match=r"the saved noise model weights do not fit the saved architecture \(location.0.bias: "
                                         r"file \(6,\), configuration \(5,\)\)"):
        Student.load(tmp_path / "bad.pt")
    assert devices == ["meta"]
    devices.clear()
    loaded = Student.load(tmp_path / "s.pt")
    assert devices == ["meta", "cpu"]
    x = torch.randn(4, 2)
    torch.testing.assert_close(loaded.predict(x, 3).aleatoric_variance, student.predict(x, 3).aleatoric_variance)


def test_noise_model_arguments_are_named():
    from pyro_dlf.likelihoods.heteroscedastic import HeteroscedasticNoise

    with pytest.raises(ValueError, match=r"hidden\[1\] must be a positive int"):
        HeteroscedasticNoise(2, (4, 0))
    with pytest.raises(TypeError, match="hidden must be a sequence of positive widths"):
        HeteroscedasticNoise(2, 50)
    with pytest.raises(TypeError, match="in_features must be a positive int"):
        HeteroscedasticNoise(True)
    noise = _small_heteroscedastic_student().noise_model
    with pytest.raises(ValueError, match="noise_model replaces noise_concentration and noise_rate"):
        from synthetic import random_dlf

        Student(random_dlf(dtype=torch.float32), "regression", 3.0, 1.0, noise_model=noise)
