"""Inverse-gamma MLE of the teachers' noise variances."""

import numpy as np
import pytest
import torch
from scipy.stats import invgamma

from pyro_dlf.noise import fit_inverse_gamma, inverse_gamma_quantiles


def test_matches_scipy_maximum_likelihood():
    rng = np.random.default_rng(0)
    v = invgamma.rvs(4.0, scale=3.0, size=50, random_state=rng)
    a, b = fit_inverse_gamma(torch.as_tensor(v))
    a_ref, _, b_ref = invgamma.fit(v, floc=0)
    assert a == pytest.approx(a_ref, rel=1e-4)
    assert b == pytest.approx(b_ref, rel=1e-4)
    # And it is a maximum: the log-likelihood is lower nearby.
    ll = lambda a_, b_: invgamma.logpdf(v, a_, scale=b_).sum()  # noqa: E731
    assert ll(a, b) >= max(ll(a * 1.01, b), ll(a / 1.01, b), ll(a, b * 1.01), ll(a, b / 1.01))


def test_consistency_with_many_draws():
    """With 20,000 draws the MLE is within a few standard errors of the truth (SE of â ≈ â·√(2/n) at most)."""
    rng = np.random.default_rng(1)
    v = invgamma.rvs(6.0, scale=10.0, size=20000, random_state=rng)
    a, b = fit_inverse_gamma(v)
    assert abs(a - 6.0) < 4 * 6.0 * (2 / 20000) ** 0.5 * 2
    assert abs(b / a - 10.0 / 6.0) < 0.05 * 10 / 6


def test_equal_variances_give_a_point_mass_with_a_warning():
    with pytest.warns(UserWarning, match="point mass"):
        a, b = fit_inverse_gamma(torch.full((5,), 2.0))
    assert b / (a - 1) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("bad, match", [(torch.tensor([1.0]), "at least 2"), (torch.tensor([1.0, -1.0]), "positive"), (torch.tensor([1.0, float("nan")]), "positive")])
def test_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        fit_inverse_gamma(bad)


def test_quantile_nodes():
    nodes = inverse_gamma_quantiles(3.0, 2.0, 4)
    np.testing.assert_allclose(nodes.numpy(), invgamma.ppf([0.125, 0.375, 0.625, 0.875], 3.0, scale=2.0))


def test_a_heavy_tailed_fit_warns_that_the_aleatoric_mean_is_infinite():
    with pytest.warns(UserWarning, match=r"shape a = \S+ <= 1, so its mean .* is infinite"):
        a, b = fit_inverse_gamma(torch.tensor([0.01, 0.01, 0.011, 100.0]))
    assert a <= 1


def test_fit_inverse_gamma_names_bad_variances():
    for bad, error, text in [(None, TypeError, "variances must be one noise variance per teacher"),
                             ("1,2", TypeError, "variances must be one noise variance per teacher"),
                             (torch.rand(3, 3) + 0.1, ValueError, r"variances has shape \(3, 3\)"),
                             (torch.tensor([True, True]), TypeError, "variances must hold real numbers"),
                             (torch.tensor([1 + 1j, 2 + 0j]), TypeError, "variances holds complex values")]:
        with pytest.raises(error, match=text):
            fit_inverse_gamma(bad)
    with pytest.raises(TypeError, match="max_iter must be a positive int"):
        fit_inverse_gamma(torch.tensor([1.0, 2.0]), max_iter=1.5)
    with pytest.raises(ValueError, match="tol must be a finite number > 0"):
        fit_inverse_gamma(torch.tensor([1.0, 2.0]), tol=-1)
    assert fit_inverse_gamma([1.0, 2.0, 3.0]) == fit_inverse_gamma(torch.tensor([1, 2, 3]))
