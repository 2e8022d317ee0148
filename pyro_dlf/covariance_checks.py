r"""Statistical checks of a recovered DLF covariance against a known truth (mathematics §8).

Teachers simulated from a known DLF :math:`(\mu^*, \Phi^*, \sigma_*^2)` at
:math:`m` points give :math:`K^* = \Phi^*\Phi^{*\top}`; a fit gives
:math:`\hat K = \hat\Phi\hat\Phi^\top`. Three checks, each with a reference
derived from sampling theory rather than a tuned threshold:

* **Relative Frobenius error** :math:`\lVert\hat K - K^*\rVert_F/\lVert K^*\rVert_F`
  against the oracle rate of the sample covariance of :math:`n` exact draws,
  :math:`\rho(n) = \sqrt{(1 + \operatorname{tr}(K)^2/\lVert K\rVert_F^2)/n}`
  (for Gaussian draws :math:`\mathbb E\lVert\hat\Sigma - \Sigma\rVert_F^2 =
  (\lVert\Sigma\rVert_F^2 + \operatorname{tr}(\Sigma)^2)/n`, the Wishart variances);
* **Principal angles** between :math:`\operatorname{col}(\hat\Phi)` and the top-
  :math:`q` eigenvectors of :math:`K^*`, against the Davis–Kahan bound
  :math:`\sin\theta_{\max} \le 2\lVert\hat K - K^*\rVert_{op}/\lambda_q(K^*)`;
* **Mahalanobis distances** of fresh draws :math:`y \sim p^*` under the fitted
  model, :math:`(y - \hat\mu)^\top(\hat\Phi\hat\Phi^\top + \hat\sigma^2 I)^{-1}(y - \hat\mu)`,
  which are :math:`\chi^2_m` when the fit is right: a Kolmogorov–Smirnov test
  (a wrong model, e.g. too few factors, must be rejected: the test has power).

For multivariate (point, class) covariances, :func:`separable_approximation_error`
gives the smallest relative error any separable covariance
:math:`K_x \otimes K_c` can reach: a floor under the separable DLF's error
that no fit can beat, against which the full DLF is measured.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from scipy.stats import chi2, kstest
from torch import Tensor

from pyro_dlf._validation import check_array, check_int, check_real, check_square_matrix

__all__ = [
    "sample_covariance_rate",
    "relative_frobenius_error",
    "principal_angle_sine",
    "davis_kahan_bound",
    "mahalanobis_distances",
    "mahalanobis_ks_test",
    "separable_approximation_error",
]


def sample_covariance_rate(K: Tensor, num_draws: int) -> float:
    r"""RMS relative Frobenius error :math:`\rho(n)` of the sample covariance of ``num_draws`` Gaussian draws with covariance ``K``."""
    check_square_matrix(K, "K")
    num_draws = check_int(num_draws, "num_draws")
    if not float(K.norm()) > 0:
        raise ValueError("K is the zero matrix: the relative error of its sample covariance is undefined; pass a nonzero covariance")
    return math.sqrt((1 + float(K.trace()) ** 2 / float(K.norm()) ** 2) / num_draws)


def separable_approximation_error(K: Tensor, num_outputs: int) -> float:
    r"""Smallest :math:`\lVert A \otimes B - K\rVert_F / \lVert K\rVert_F` over all
    :math:`A \in R^{m×m}`, :math:`B \in R^{c×c}` (the nearest Kronecker product,
    Van Loan & Pitsianis 1993).

    ``K`` is the ``(m·c, m·c)`` covariance of (point, class) pairs with the class
    index fastest (row ``j·c + k``, as :meth:`~pyro_dlf.models.DeepLatentFactor.covariance`
    returns for the full model). Rearranged so that entry
    :math:`((j, j'), (k, k'))` is :math:`K_{jc+k,\,j'c+k'}`, a Kronecker product
    becomes the rank-one matrix :math:`\operatorname{vec}A\,\operatorname{vec}B^\top`,
    so the error is that of the best rank-one approximation: the root sum of
    the squared singular values after the first. Every separable covariance
    :math:`K_x \otimes L L^\top` is such a product, so no separable fit can do better.
    """
    check_square_matrix(K, "K")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1 or K.shape[0] % num_outputs:
        raise ValueError(f"num_outputs must be a positive int dividing K's size {K.shape[0]}, got {num_outputs!r}")
    c = num_outputs
    m = K.shape[0] // c
    R = K.double().reshape(m, c, m, c).permute(0, 2, 1, 3).reshape(m * m, c * c)
    s = torch.linalg.svdvals(R)
    return float(s[1:].square().sum().sqrt() / s.square().sum().sqrt())


def relative_frobenius_error(K_hat: Tensor, K: Tensor) -> float:
    r""":math:`\lVert\hat K - K\rVert_F / \lVert K\rVert_F`."""
    check_square_matrix(K, "K")
    check_square_matrix(K_hat, "K_hat")
    if not float(K.norm()) > 0:
        raise ValueError("K is the zero matrix: the error relative to it is undefined; compare against a nonzero covariance")
    if K_hat.shape != K.shape:
        raise ValueError(f"K_hat must have the shape of K {tuple(K.shape)}, got {tuple(K_hat.shape)}")
    return float((K_hat - K).norm() / K.norm())


def principal_angle_sine(K: Tensor, loading: Tensor) -> float:
    r""":math:`\sin\theta_{\max}` between ``col(loading)`` (``(m, q)``) and the top-``q`` eigenvectors of ``K``."""
    check_square_matrix(K, "K")
    check_array(loading, "loading", 2, f"({K.shape[0]}, q)")
    if loading.shape[0] != K.shape[0]:
        raise ValueError(f"loading must have shape ({K.shape[0]}, q), got {tuple(loading.shape)}")
    q = loading.shape[1]
    true_basis = torch.linalg.eigh(K.double()).eigenvectors[:, -q:]
    fitted_basis = torch.linalg.qr(loading.double()).Q
    cosines = torch.linalg.svdvals(true_basis.T @ fitted_basis).clamp(max=1)
    return float((1 - cosines.min() ** 2).clamp_min(0).sqrt())


def davis_kahan_bound(K_hat: Tensor, K: Tensor, q: int) -> float:
    r""":math:`\min(1, 2\lVert\hat K - K\rVert_{op}/\lambda_q(K))`, the Davis–Kahan bound on :math:`\sin\theta_{\max}`."""
    check_square_matrix(K, "K")
    check_square_matrix(K_hat, "K_hat")
    if K_hat.shape != K.shape:
        raise ValueError(f"K_hat must have the shape of K {tuple(K.shape)}, got {tuple(K_hat.shape)}")
    q = check_int(q, "q", 1, fix=f"the number of leading eigenvectors, at most {K.shape[0]}")
    if q > K.shape[0]:
        raise ValueError(f"q={q} exceeds K's size {K.shape[0]}; pass q <= {K.shape[0]}")
    lam_q = float(torch.linalg.eigvalsh(K.double())[-q])
    if not lam_q > 0:
        raise ValueError(f"K's eigenvalue number {q} from the largest is {lam_q:.3g}, not positive, so the bound is undefined; "
                         "pass q no larger than K's rank")
    return min(1.0, 2 * float(torch.linalg.matrix_norm((K_hat - K).double(), ord=2)) / lam_q)


def mahalanobis_distances(mean: Tensor, loading: Tensor, noise_variance: Union[float, Tensor], draws: Tensor) -> Tensor:
    r"""Squared Mahalanobis distances of ``draws`` ``(S, m)`` under :math:`\mathcal N(\text{mean}, \Phi\Phi^\top + \sigma^2 I)`, in float64.

    ``noise_variance`` is the nugget: one number, or one per point ``(m,)`` (a nugget that
    grows with the distance from the data, mathematics §9.4).
    """
    m = check_array(mean, "mean", 1, "(m,)").shape[0]
    check_array(loading, "loading", 2, f"({m}, q)")
    check_array(draws, "draws", 2, f"(S, {m})")
    if isinstance(noise_variance, Tensor) and noise_variance.dim() == 1:
        if noise_variance.shape[0] != m:
            raise ValueError(f"noise_variance: give one nugget per point, shape ({m},), got shape {tuple(noise_variance.shape)}")
        if not bool(torch.all(noise_variance > 0)) or not bool(torch.isfinite(noise_variance).all()):
            raise ValueError("noise_variance: every per-point nugget must be positive and finite")
        nugget = torch.diag(noise_variance.double())
    else:
        noise_variance = check_real(noise_variance, "noise_variance", 0, fix="the nugget σ², e.g. float(model.noise_variance)")
        nugget = float(noise_variance) * torch.eye(m, dtype=torch.float64)
    if loading.shape[0] != m or draws.dim() != 2 or draws.shape[1] != m:
        raise ValueError(f"mean (m,), loading (m, q) and draws (S, m) must agree on m = {m}")
    cov = loading.double() @ loading.double().T + nugget
    r = (draws - mean).double()
    return (r * torch.linalg.solve(cov, r.T).T).sum(-1)


def mahalanobis_ks_test(model, x: Tensor, draws: Tensor) -> tuple[float, Tensor]:
    r"""KS test of the fitted ``model``'s Mahalanobis distances of ``draws`` against :math:`\chi^2_m`.

    :param model: a univariate :class:`~pyro_dlf.models.DeepLatentFactor`.
    :param x: the ``m`` points, ``(m, d)``.
    :param draws: fresh draws of the true process with its nugget, ``(S, m)``.
    :returns: ``(p_value, distances)``.
    """
    if not callable(getattr(model, "mean_and_loading", None)) or not hasattr(model, "noise_variance") \
            or getattr(model, "multivariate", False):
        raise TypeError(f"model must be a univariate pyro_dlf.models.DeepLatentFactor, got {type(model).__name__}")
    with torch.no_grad():
        mean, loading = model.mean_and_loading(x)
        nugget = model.nugget_variance(x) if getattr(model, "distance_anchors", None) is not None else float(model.noise_variance)
        distances = mahalanobis_distances(mean, loading, nugget, draws)
    return float(kstest(distances.numpy(), chi2(x.shape[0]).cdf).pvalue), distances
