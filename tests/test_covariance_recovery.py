r"""Statistical checks on a recovered covariance (mathematics §8).

Teachers are simulated from a known DLF (μ*, Φ*, σ*²) on 60 points; the fitted
student must recover ``K* = Φ*Φ*^T``.

Tolerances come from the sampling error of the oracle estimator, the sample
covariance of ``n`` exact draws: for Gaussian draws
``E‖Σ̂ − Σ‖_F² = (‖Σ‖_F² + tr(Σ)²)/n`` (Wishart variances), so the relative
error has root-mean-square ``ρ(n) = √((1 + tr(K)²/‖K‖_F²)/n)``. The maximum
likelihood fit uses more structure than the sample covariance, so it should
not do worse than a small multiple of ``ρ(n)``; we allow 2×.
"""

import pytest
import torch

import pyro_dlf
from pyro_dlf.covariance_checks import (
    davis_kahan_bound,
    mahalanobis_ks_test,
    principal_angle_sine,
    relative_frobenius_error,
    sample_covariance_rate,
    separable_approximation_error,
)

from synthetic import synthetic_teachers

SIZES = (25, 400)


def _fit(n, num_factors=3, seed=0):
    truth, x, f = synthetic_teachers(n, num_points=60, seed=seed)
    student = pyro_dlf.distill(
        x, f, num_factors=num_factors, teacher_noise_variances=torch.linspace(0.05, 0.1, n),
        hidden=(32,), activation="Tanh", num_iterations=200, mmd_steps=300, progress=False, seed=seed,
    )
    return truth, x, student.dlf


@pytest.fixture(scope="module")
def fits():
    return {n: _fit(n) for n in SIZES}


def _rate(K, n):
    return sample_covariance_rate(K, n)


def test_relative_frobenius_error_shrinks_with_teachers(fits, record_property):
    errors = {}
    for n, (truth, x, model) in fits.items():
        K = truth.covariance(x).detach()
        K_hat = model.covariance(x).detach()
        errors[n] = relative_frobenius_error(K_hat, K)
        record_property(f"relative_frobenius_error_n{n}", errors[n])
        assert errors[n] < 2 * _rate(K, n), (n, errors[n], _rate(K, n))
    print("\nrelative Frobenius error of ΦΦᵀ: " + ", ".join(f"n={n}: {e:.3f}" for n, e in errors.items()))
    # 16× the teachers: the error rate falls by 4; demand at least a factor 2.
    assert errors[400] < errors[25] / 2


def test_principal_angles_are_small(fits):
    """Davis–Kahan: sin θ_max ≤ 2‖K̂ − K‖_op / λ_q(K), with ‖·‖_op ≤ ‖·‖_F ≤ 2ρ(n)‖K‖_F allowed above."""
    truth, x, model = fits[400]
    K = truth.covariance(x).detach()
    q = model.num_factors
    sin_max = principal_angle_sine(K, model.loading(x).detach())
    lam_q = float(torch.linalg.eigvalsh(K)[-q])
    bound = 2 * (2 * _rate(K, 400) * float(K.norm())) / lam_q
    # The sharper operator-norm bound from the fitted K itself holds as well.
    assert sin_max <= davis_kahan_bound(model.covariance(x).detach(), K, q) + 1e-9
    assert sin_max < min(bound, 1.0), (sin_max, bound)


def test_mahalanobis_distances_are_chi_squared_and_a_wrong_rank_is_rejected(fits, record_property):
    truth, x, model = fits[400]
    torch.manual_seed(123)
    fresh = truth.sample(x, 300, include_noise=True)
    m = x.shape[0]
    p_truth, _ = mahalanobis_ks_test(truth, x, fresh)
    p_fitted, _ = mahalanobis_ks_test(model, x, fresh)
    # A model with one factor for a rank-3 covariance must fail the same test.
    _, _, wrong = _fit(400, num_factors=1)
    p_wrong, _ = mahalanobis_ks_test(wrong, x, fresh)
    record_property("ks_p_truth", p_truth)
    record_property("ks_p_fitted", p_fitted)
    record_property("ks_p_wrong_rank", p_wrong)
    print(f"\nKS p-values vs χ²_{m}: truth {p_truth:.3f}, fitted q=3 {p_fitted:.3f}, wrong rank q=1 {p_wrong:.2e}")
    assert p_truth > 0.01  # the test itself is calibrated
    assert p_fitted > 0.01
    assert p_wrong < 1e-6


# ---------------------------------------------------------------------------------------------
# Multivariate: teachers whose per-input class direction rotates with x.
# ---------------------------------------------------------------------------------------------

ROTATING_TEACHERS = 200


def _rotating_truth(num_points=40):
    r"""Three classes on the zero-sum plane (basis b1, b2), 1-D inputs x ∈ [−2, 2]:

    ``μ(x) = (sin x, cos x, −sin x − cos x)``; ``Φ*(x) = [1.5 u(πx/3), 0.8 cos(x) b1]`` with
    ``u(θ) = cos θ b1 + sin θ b2``. The leading class direction u turns by 240° across the
    inputs, so no single class covariance L Lᵀ fits every input.
    """
    x = torch.linspace(-2, 2, num_points, dtype=torch.float64).unsqueeze(-1)
    b1 = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / 2 ** 0.5
    b2 = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64) / 6 ** 0.5
    t = x.squeeze(-1)
    theta = torch.pi * t / 3
    u = torch.cos(theta)[:, None] * b1 + torch.sin(theta)[:, None] * b2
    loading = torch.stack([1.5 * u, 0.8 * torch.cos(t)[:, None] * b1], -1)  # (m, c, q*)
    mean = torch.stack([torch.sin(t), torch.cos(t), -torch.sin(t) - torch.cos(t)], -1)
    return x, mean, loading


@pytest.fixture(scope="module")
def rotating_fits():
    x, mean, loading = _rotating_truth()
    g = torch.Generator().manual_seed(11)
    z = torch.randn(ROTATING_TEACHERS, loading.shape[-1], generator=g, dtype=torch.float64)
    noise = 0.05 * torch.randn(ROTATING_TEACHERS, *mean.shape, generator=g, dtype=torch.float64)
    f = (mean + torch.einsum("nq,mcq->nmc", z, loading) + noise).float()
    fits = {}
    for covariance, q in (("full", 2), ("separable", 4)):
        student = pyro_dlf.distill(x.float(), f, num_factors=q, covariance=covariance, hidden=(32,), activation="Tanh",
                                   num_iterations=200, mmd_steps=300, progress=False, seed=0)
        fits[covariance] = student.dlf
    K = loading.flatten(0, 1) @ loading.flatten(0, 1).T  # (point, class) pairs, class fastest
    return x.float(), K, fits


def _stacked_covariance(model, x):
    with torch.no_grad():
        K = model.covariance(x)
    if model.separable:
        k_x, k_c = K
        return torch.kron(k_x, k_c).double()  # index j·c + k, as the full model's
    return K.double()


def test_full_model_recovers_a_rotating_class_covariance_and_the_separable_cannot(rotating_fits, record_property):
    """The full DLF is within the oracle rate 2ρ(n) (mathematics §8); the separable DLF cannot be: even the
    nearest Kronecker product K_x ⊗ K_c to the truth is off by more than that (a floor no fit beats)."""
    x, K, fits = rotating_fits
    rate = sample_covariance_rate(K, ROTATING_TEACHERS)
    floor = separable_approximation_error(K, 3)
    errors = {name: relative_frobenius_error(_stacked_covariance(model, x), K) for name, model in fits.items()}
    for name, error in errors.items():
        record_property(f"relative_error_{name}", error)
    print(f"\nrotating class direction, n = {ROTATING_TEACHERS}: relative error full {errors['full']:.3f}, "
          f"separable {errors['separable']:.3f}; oracle rate ρ(n) {rate:.3f}; best separable possible {floor:.3f}")
    assert errors["full"] < 2 * rate, (errors, rate)
    assert floor > 2 * rate, (floor, rate)  # the truth is far from separable at this n
    assert errors["separable"] >= floor - 1e-9
