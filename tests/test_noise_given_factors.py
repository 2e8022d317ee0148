"""The factor-dependent noise law: σ² | z ~ IG(a, b u(z)^β), its fit, its test against the
i.i.d. law, the student's predictive under it, and saving it."""

import math

import pyro
import pytest
import torch

from pyro_dlf import distill
from pyro_dlf_bench import metrics
from pyro_dlf.noise import fit_factor_inverse_gamma
from pyro_dlf.student import Student
from pyro_dlf.student_file import checksum


def _pairs(n, beta, a=6.0, b=0.5, seed=0):
    """Deviation sizes u (mean-one chi-square over 3 dof) and σ² ~ IG(a, b u^β) given them."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 3, generator=g, dtype=torch.float64).pow(2).mean(1)
    precision = torch.distributions.Gamma(torch.full((n,), a, dtype=torch.float64), b * u.pow(beta)).sample()
    return u, 1.0 / precision


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_the_fit_recovers_the_exponent_within_its_sampling_error(beta):
    torch.manual_seed(1)
    n, a = 2000, 6.0
    u, v = _pairs(n, beta, a=a)
    fit = fit_factor_inverse_gamma(v, u, torch.eye(3, dtype=torch.float64) / 3)
    # Fisher information for β: the score of a log-rate in a Gamma(a) is a − rate·τ (variance a),
    # so se(β̂) ≈ 1 / sqrt(n a Var(log u)).
    se = 1.0 / math.sqrt(n * a * float(u.log().var()))
    assert abs(fit.exponent - beta) < 4 * se
    assert abs(fit.concentration - a) < 0.15 * a  # se(â)/a ≈ sqrt(2/n)·(a-dependent factor) ≪ 15 %
    assert fit.statistic >= 0 and 0 <= fit.p_value <= 1
    if beta:
        assert fit.p_value < 1e-6  # the i.i.d. law is rejected with 2,000 teachers
    assert fit.gram.shape == (3, 3)


def test_bad_deviations_are_named():
    u, v = _pairs(10, 0.0)
    with pytest.raises(ValueError, match="deviations: need 10 positive"):
        fit_factor_inverse_gamma(v, -u, torch.eye(3) / 3)
    with pytest.raises(ValueError, match="deviations"):
        fit_factor_inverse_gamma(v, u[:5], torch.eye(3) / 3)


def _teachers(noise_follows: bool, n=60, m=150, seed=0):
    """Teachers f_i = sin x + z_i1 cos(x)/2 + z_i2 x/10 whose noise variance grows with the size of
    their deviation (noise_follows) or does not."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-3, 3, m, dtype=torch.float64).unsqueeze(1)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    f = torch.sin(x.T) + z[:, :1] * torch.cos(x.T) / 2 + z[:, 1:] * x.T / 10
    size = (f - torch.sin(x.T)).pow(2).mean(1)
    jitter = torch.distributions.Gamma(torch.full((n,), 20.0, dtype=torch.float64), 20.0).sample()
    v = 0.01 * jitter * ((size / size.mean()) if noise_follows else 1.0)
    return x, f, v


def _fit(x, f, v, **kwargs):
    return distill(x, f, num_factors=3, teacher_noise_variances=v, num_iterations=30, mmd_steps=50, progress=False,
                   dtype=torch.float64, seed=0, **kwargs)


@pytest.fixture(scope="module")
def dependent():
    torch.manual_seed(0)
    x, f, v = _teachers(True)
    return x, f, v, _fit(x, f, v, noise_given_factors="auto")


def test_auto_adopts_the_law_when_the_teachers_reject_iid_noise_and_keeps_spec_otherwise(dependent):
    x, f, v, student = dependent
    assert student.noise_fit.p_value < 0.01 and student.noise_factor_exponent == student.noise_fit.exponent > 0.5
    assert torch.allclose(student.noise_factor_gram.trace(), torch.tensor(1.0, dtype=torch.float64))
    torch.manual_seed(0)
    x, f, v = _teachers(False)
    plain = _fit(x, f, v, noise_given_factors="auto")
    # "auto" follows the recorded test: the i.i.d. law unless it is rejected at 1 %.
    assert (plain.noise_factor_exponent == 0.0) == (plain.noise_fit.p_value >= 0.01)
    never = _fit(x, f, v)  # the default: the i.i.d. law, no fit made
    assert never.noise_fit is None and never.noise_factor_exponent == 0.0 and never.noise_factor_gram is None
    forced = _fit(x, f, v, noise_given_factors=True)
    assert forced.noise_factor_exponent == forced.noise_fit.exponent != 0.0
    with pytest.raises(ValueError, match="noise_given_factors must be 'auto', True or False"):
        _fit(x, f, v, noise_given_factors="yes")


def test_the_predictive_mixture_matches_a_brute_force_average_over_the_factors(dependent):
    x, f, v, student = dependent
    y = f[0] + v[0].sqrt() * torch.randn(f.shape[1], generator=torch.Generator().manual_seed(3), dtype=f.dtype)
    with torch.no_grad():
        means, variances = student.predictive_mixture(x)
        mean, loading = student.dlf.mean_and_loading(x)
        # The nodes are mirrored: the mixture's mean is μ(x) exactly.
        assert torch.allclose(means.mean(0), mean, atol=1e-10)
        z = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        a, b = student.noise_law.prior(mean, z)  # σ² integrated analytically: Student-t with 2a dof, scale² b/a
        log_p = torch.distributions.StudentT(2 * a, mean + z @ loading.T, (b / a).sqrt().unsqueeze(1)).log_prob(y)
        brute = float(-(torch.logsumexp(log_p, 0) - math.log(len(z))).mean())
    # The brute force's own Monte Carlo error is ~10⁻³ here; the quadrature's, from a heavy-tailed
    # noise law (a ≈ 1.8) read at 1,024 levels, is the bound the docstring states: 0.03 nats.
    assert means.shape[0] == 1024
    assert float(metrics.mixture_nll(means, variances, y)) == pytest.approx(brute, abs=0.03)


def test_pyro_draws_pair_larger_deviations_with_larger_noise(dependent):
    x, _, _, student = dependent
    pyro.set_rng_seed(0)
    draws = pyro.infer.Predictive(student, num_samples=4000, return_sites=["z", "noise_variance"])(x[:5])
    size = student.noise_law.deviation_size(draws["z"].squeeze(-2))
    noise = draws["noise_variance"].reshape(-1)
    ranks = torch.stack([size.argsort().argsort(), noise.argsort().argsort()]).double()
    # Under the fitted law the log-variance's regression on log u has slope β; with 4,000 draws
    # the rank correlation is far from 0 (its null sd is 1/sqrt(4000) ≈ 0.016).
    assert float(torch.corrcoef(ranks)[0, 1]) > 0.2
    prediction = student.predict(x[:5], 300, return_samples=True)
    assert prediction.noise_variance_samples.shape == (300,)
    assert math.isfinite(student.aleatoric_variance) and student.aleatoric_variance > 0


def test_the_law_survives_save_and_load_and_a_damaged_law_is_named(dependent, tmp_path):
    x, _, _, student = dependent
    student.save(tmp_path / "s.pt")
    loaded = Student.load(tmp_path / "s.pt")
    assert loaded.noise_factor_exponent == student.noise_factor_exponent
    assert torch.allclose(loaded.noise_factor_gram, student.noise_factor_gram)
    m1, v1 = student.predictive_mixture(x[:7])
    m2, v2 = loaded.predictive_mixture(x[:7])
    assert torch.allclose(m1, m2) and torch.allclose(v1, v2)
    for name, law, match in (("shape.pt", {"exponent": 1.0, "gram": [[1.0, 0.0]]}, "noise law must be"),
                             ("kind.pt", [1.0], "noise law must be"),
                             ("trace.pt", {"exponent": 1.0, "gram": [[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]]}, "saved noise law is invalid")):
        payload = torch.load(tmp_path / "s.pt", weights_only=True)
        payload["noise_factors"] = law
        payload["checksum"] = checksum(payload)  # a consistent file whose contents are wrong
        torch.save(payload, tmp_path / name)
        with pytest.raises(ValueError, match=match):
            Student.load(tmp_path / name)


def test_set_noise_law_checks_its_arguments(dependent):
    _, _, _, student = dependent
    law = (student.noise_concentration, student.noise_rate, student.noise_factor_exponent, student.noise_factor_gram)
    with pytest.raises(ValueError, match="needs gram"):
        student.set_noise_law(2.0, 1.0, 1.0, None)
    with pytest.raises(ValueError, match="needs gram"):
        student.set_noise_law(2.0, 1.0, 1.0, torch.eye(3))  # trace 3, not 1
    with pytest.raises(ValueError, match="positive finite"):
        student.set_noise_law(-1.0, 1.0)
    student.set_noise_law(*law)
    from pyro_dlf.models import DeepLatentFactor

    classifier = Student(DeepLatentFactor(2, 2, (4,), num_outputs=3), "classification")
    with pytest.raises(ValueError, match="one-output regression"):
        classifier.set_noise_law(2.0, 1.0)


def test_the_heavy_tail_warning_speaks_of_the_law_that_is_used():
    """The dependent teachers' variances, pooled, look heavy-tailed to the i.i.d. law (a < 1);
    given the factors they are not (a > 1): the warning comes only with the i.i.d. law."""
    import warnings

    torch.manual_seed(0)
    x, f, v = _teachers(True)
    from pyro_dlf.noise import HeavyTailWarning

    with pytest.warns(HeavyTailWarning, match=r"shape a = \S+ <= 1") as said:
        _fit(x, f, v)
    assert len([w for w in said if issubclass(w.category, HeavyTailWarning)]) == 1  # the fit's, not the student's again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = _fit(x, f, v, noise_given_factors="auto")
    assert student.noise_factor_exponent != 0.0 and student.noise_concentration > 1
    assert not [w for w in caught if issubclass(w.category, HeavyTailWarning)]
