"""The noise laws (pyro_dlf.likelihoods): one interface for the model, the predictive and the file."""

import io

import pyro
import pytest
import torch

import pyro_dlf
from pyro_dlf.likelihoods import FactorInverseGammaNoise, HeteroscedasticNoise, InverseGammaNoise, NoiseLaw
from pyro_dlf.noise import inverse_gamma_quantiles

FAST = dict(num_iterations=3, mmd_steps=5, hidden=(8,), progress=False)


def _data(m=40, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 2, generator=g, dtype=torch.float64)
    f = torch.sin(x @ torch.randn(2, n, generator=g, dtype=torch.float64)).T + 0.1 * torch.randn(n, m, generator=g, dtype=torch.float64)
    v = 0.05 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    return x, f, v


def _students():
    x, f, v = _data()
    common = dict(dtype=torch.float64, **FAST)
    iid = pyro_dlf.distill(x, f, teacher_noise_variances=v, **common)
    factors = pyro_dlf.distill(x, f, teacher_noise_variances=v * (1 + f.std(1)), noise_given_factors=True, **common)
    hetero = pyro_dlf.distill(x, f, teacher_noise_variances=v[:, None] * (1 + x[:, 0].abs())[None], **common)
    return x, {"iid": iid, "factors": factors, "heteroscedastic": hetero}


@pytest.fixture(scope="module")
def students():
    return _students()


@pytest.mark.parametrize("name, law", [("iid", InverseGammaNoise), ("factors", FactorInverseGammaNoise),
                                       ("heteroscedastic", HeteroscedasticNoise)])
def test_every_regression_student_reads_its_noise_through_one_law_that_its_file_keeps(students, name, law):
    x, by_name = students
    student = by_name[name]
    assert isinstance(student.noise_law, NoiseLaw) and type(student.noise_law) is law
    buffer = io.BytesIO()
    student.save(buffer)
    buffer.seek(0)
    loaded = pyro_dlf.Student.load(buffer)
    assert type(loaded.noise_law) is law
    torch.manual_seed(0)
    before = student.predict(x, 20, return_samples=True)
    torch.manual_seed(0)
    after = loaded.predict(x, 20, return_samples=True)
    assert torch.equal(before.aleatoric_variance, after.aleatoric_variance)
    assert torch.equal(before.noise_variance_samples, after.noise_variance_samples)
    means, variances = loaded.predictive_mixture(x, 8)
    assert means.shape == variances.shape and means.shape[1] == x.shape[0] and bool((variances > 0).all())


def test_a_multi_output_student_with_one_noise_law_shares_one_variance_per_draw():
    """One inverse gamma for every output: the Pyro model draws one σ² per draw, shared by the outputs, and the
    mixture adds the same quantile node to every output (mathematics §2.4)."""
    x, f, v = _data()
    student = pyro_dlf.distill(x, torch.stack([f, -2 * f], -1), task="regression", teacher_noise_variances=v,
                               dtype=torch.float64, **FAST)
    assert type(student.noise_law) is InverseGammaNoise and not isinstance(student.noise_concentration, tuple)
    pyro.set_rng_seed(0)
    draws = pyro.infer.Predictive(student, num_samples=5)(x)
    assert draws["noise_variance"].squeeze().shape == (5,) and draws["y"].shape == (5, x.shape[0], 2)
    means, variances = student.predictive_mixture(x, 8)
    assert means.shape == variances.shape == (8, x.shape[0], 2)
    nodes = inverse_gamma_quantiles(student.noise_concentration, student.noise_rate, 8).to(variances)
    smooth = variances[0] - nodes[0]  # the epistemic variance and the nugget the predictive keeps
    assert torch.allclose(variances, smooth + nodes[:, None, None], rtol=1e-12, atol=1e-12)


def test_a_student_takes_a_fitted_law_as_one_object_and_checks_it_as_its_parameters(students):
    _, by_name = students
    dlf = by_name["iid"].dlf
    law = InverseGammaNoise.fit(torch.tensor([0.1, 0.2, 0.15, 0.12], dtype=torch.float64))
    student = pyro_dlf.Student(dlf, "regression", noise_law=law)
    assert (student.noise_concentration, student.noise_rate) == (law.concentration, law.rate)
    with pytest.raises(ValueError, match="noise_law replaces noise_concentration"):
        pyro_dlf.Student(dlf, "regression", 2.0, 1.0, noise_law=law)
    with pytest.raises(ValueError, match="noise_rate must be positive"):
        pyro_dlf.Student(dlf, "regression", noise_law=InverseGammaNoise(2.0, -1.0))
    with pytest.raises(TypeError, match="noise_law must be one of the laws of pyro_dlf.likelihoods"):
        pyro_dlf.Student(dlf, "regression", noise_law="gaussian")
    with pytest.raises(ValueError, match="noise_law replaces .* noise_factor_exponent"):
        pyro_dlf.Student(dlf, "regression", noise_law=law, noise_factor_exponent=1.0)
    with pytest.raises(ValueError, match="noise_law is for regression students"):
        pyro_dlf.Student(dlf, "classification", noise_law=law)
