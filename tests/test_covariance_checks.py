"""Unit tests for pyro_dlf.covariance_checks."""

import math

import pytest
import torch

from pyro_dlf.covariance_checks import (
    davis_kahan_bound,
    mahalanobis_distances,
    principal_angle_sine,
    relative_frobenius_error,
    sample_covariance_rate,
    separable_approximation_error,
)


def test_separable_approximation_error():
    """Zero for a Kronecker product (class index fastest); for a sum of two Kronecker products
    with orthogonal factors, the smaller one's share of the Frobenius norm."""
    g = torch.Generator().manual_seed(0)
    A, B = (lambda M: M @ M.T)(torch.randn(5, 5, generator=g, dtype=torch.float64)), torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert separable_approximation_error(torch.kron(A, B), 3) < 1e-12
    E1, E2 = torch.diag(torch.tensor([1.0, 0, 0], dtype=torch.float64)), torch.diag(torch.tensor([0, 1.0, 0], dtype=torch.float64))
    I5, D5 = torch.eye(5, dtype=torch.float64), torch.diag(torch.tensor([1.0, -1, 1, -1, 0], dtype=torch.float64))
    K = 3 * torch.kron(I5, E1) + torch.kron(D5, E2)  # vec(I5) ⟂ vec(D5), vec(E1) ⟂ vec(E2): singular values 3√5 and 2
    expected = 2 / math.sqrt(45 + 4)
    assert separable_approximation_error(K, 3) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="num_outputs"):
        separable_approximation_error(K, 4)


def test_rate_matches_the_sample_covariance_error():
    # rho(n)^2 is E||S - K||_F^2 / ||K||_F^2 for the known-mean sample covariance S of n draws.
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 3, generator=g, dtype=torch.float64)
    K = A @ A.T + 0.1 * torch.eye(6, dtype=torch.float64)
    chol = torch.linalg.cholesky(K)
    n, reps = 20, 2000
    draws = torch.randn(reps, n, 6, generator=g, dtype=torch.float64) @ chol.T
    S = draws.transpose(1, 2) @ draws / n
    mse = ((S - K).flatten(1).norm(dim=1) ** 2).mean() / K.norm() ** 2
    # Monte Carlo standard error of a mean of 2000 squared errors: well under 10 %.
    assert float(mse) == pytest.approx(sample_covariance_rate(K, n) ** 2, rel=0.1)


def test_angles_errors_and_distances():
    K = torch.diag(torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64))
    assert principal_angle_sine(K, torch.tensor([[1.0, 0], [0, 1], [0, 0]], dtype=torch.float64)) == pytest.approx(0, abs=1e-7)
    tilted = torch.tensor([[1.0, 0], [0, 1], [0, 1]], dtype=torch.float64)
    assert principal_angle_sine(K, tilted) == pytest.approx(math.sin(math.pi / 4), rel=1e-6)
    assert relative_frobenius_error(2 * K, K) == pytest.approx(1.0)
    assert davis_kahan_bound(K, K, 2) == 0.0
    d = mahalanobis_distances(torch.zeros(2), torch.zeros(2, 1), 4.0, torch.tensor([[2.0, 0.0], [2.0, 2.0]]))
    torch.testing.assert_close(d, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_bad_inputs():
    with pytest.raises(ValueError, match="K must be a square matrix"):
        sample_covariance_rate(torch.ones(2, 3), 5)
    with pytest.raises(ValueError, match="num_draws must be a positive int"):
        sample_covariance_rate(torch.eye(2), 0)
    with pytest.raises(ValueError, match="K_hat must have the shape of K"):
        relative_frobenius_error(torch.eye(3), torch.eye(2))
    with pytest.raises(ValueError, match=r"loading must have shape \(2, q\)"):
        principal_angle_sine(torch.eye(2), torch.ones(3, 1))
    with pytest.raises(ValueError, match="must agree on m = 2"):
        mahalanobis_distances(torch.zeros(2), torch.zeros(2, 1), 1.0, torch.zeros(4, 3))


def test_bad_arguments_are_named():
    K = torch.eye(4, dtype=torch.float64)
    cases = [(lambda: davis_kahan_bound(K, K, 0), ValueError, "q must be a positive int"),
             (lambda: davis_kahan_bound(K, K, 9), ValueError, "q=9 exceeds K's size 4"),
             (lambda: davis_kahan_bound(K, K, "2"), TypeError, "q must be a positive int"),
             (lambda: sample_covariance_rate(K * float("nan"), 10), ValueError, "K contains 16 non-finite"),
             (lambda: sample_covariance_rate(torch.eye(4, dtype=torch.long), 10), TypeError, "K must have a floating-point dtype"),
             (lambda: relative_frobenius_error(K, K * 0), ValueError, "K is the zero matrix"),
             (lambda: mahalanobis_distances(torch.zeros(4), torch.randn(4, 2), -1.0, torch.randn(5, 4)), ValueError,
              "noise_variance must be a finite number > 0")]
    for call, error, text in cases:
        with pytest.raises(error, match=text):
            call()


def test_checks_name_each_bad_argument():
    """The covariance checks refuse bad arguments by name instead of dividing by zero or failing inside torch."""
    import numpy as np

    from pyro_dlf.covariance_checks import davis_kahan_bound, mahalanobis_distances, principal_angle_sine, sample_covariance_rate

    K = torch.eye(4)
    cases = [
        (lambda: sample_covariance_rate(torch.zeros(3, 3), 10), "K is the zero matrix"),
        (lambda: davis_kahan_bound(K, torch.zeros(4, 4), 1), "eigenvalue number 1 from the largest is 0, not positive"),
        (lambda: principal_angle_sine(K, torch.ones(4)), r"loading must be a floating tensor \(4, q\), got shape \(4,\)"),
        (lambda: principal_angle_sine(K, torch.full((4, 1), float("nan"))), r"loading contains 4 non-finite value\(s\)"),
        (lambda: mahalanobis_distances(torch.zeros(4, 1), torch.ones(4, 1), 1.0, torch.zeros(2, 4)), r"mean must be a floating tensor \(m,\)"),
        (lambda: mahalanobis_distances(torch.zeros(4), torch.ones(4, 1), torch.full((4,), float("nan")), torch.zeros(2, 4)),
         "every per-point nugget must be positive and finite"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="loading must be a torch.Tensor, got list"):
        principal_angle_sine(K, [1.0])
    assert sample_covariance_rate(K, np.int64(10)) == sample_covariance_rate(K, 10)  # a NumPy integer is a count

