"""Tests for pyro_dlf.kernels: GPyTorch's kernel test suite, and the ExactGP view of a fitted DLF."""

import unittest

import gpytorch
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from torch import nn

from pyro_dlf.kernels import DLFKernel, DLFMean
from synthetic import random_dlf


class _ElementwiseLoading(nn.Module):
    """A loading map for any input width d: q = 3d deterministic features, one trainable scale.

    GPyTorch's kernel test case feeds inputs of several widths (2, 4, 6, 10) to
    kernels built by one factory, so the network under test must not fix d.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return self.scale * torch.cat([x, 0.5 * x.pow(2), torch.sin(x)], dim=-1)


class TestDLFKernel(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return DLFKernel(_ElementwiseLoading(), **kwargs)


class _TeacherGP(gpytorch.models.ExactGP):
    """Independent GPs sharing the DLF's mean and kernel: one batch entry per teacher."""

    def __init__(self, dlf, x, f, likelihood):
        super().__init__(x, f, likelihood)
        self.mean_module = DLFMean(dlf)
        self.covar_module = DLFKernel(dlf)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def test_kernel_and_mean_equal_the_dlf():
    dlf = random_dlf(in_features=2, num_factors=3, seed=1)
    x1, x2 = torch.randn(30, 2, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    kernel = DLFKernel(dlf)
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(10_000):
        torch.testing.assert_close(kernel(x1).to_dense(), dlf.covariance(x1))
        torch.testing.assert_close(kernel(x1, x2).to_dense(), dlf.covariance(x1, x2))
        torch.testing.assert_close(kernel(x1, diag=True), dlf.covariance(x1).diagonal())
        torch.testing.assert_close(DLFMean(dlf)(x1), dlf.mean(x1))
        # Batched inputs go through the same network row by row.
        xb = torch.stack([x1, x1.flip(0)])
        torch.testing.assert_close(kernel(xb).to_dense()[1], dlf.covariance(x1.flip(0)))
    assert kernel(x1).evaluate_kernel().__class__.__name__ == "LowRankRootLinearOperator"
    assert not kernel.is_stationary


def test_exact_gp_marginal_likelihood_equals_dlf():
    # mathematics §3: log p(f_i) = log N(f_i; mu, Phi Phi^T + sigma_f^2 I). GPyTorch computes it
    # through the kernel's low-rank root; the DLF through the Woodbury identity.
    dlf = random_dlf(in_features=2, num_factors=3, seed=2, noise_variance=0.05)
    x = torch.randn(40, 2, dtype=torch.float64)
    with torch.no_grad():
        f = dlf.sample(x, 6, include_noise=True)
    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size([6])).double()
    likelihood.noise = dlf.noise_variance.detach()
    xb = x.expand(6, *x.shape)
    model = _TeacherGP(dlf, xb, f, likelihood).double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    with gpytorch.settings.max_cholesky_size(10_000):
        per_point = mll(model(xb), f)
    expected = dlf.log_marginal_likelihood(x, f)
    torch.testing.assert_close(per_point.detach() * x.shape[0], expected, rtol=1e-8, atol=1e-8)
    # The loading network is trainable through GPyTorch's objective.
    (-per_point.sum()).backward()
    assert dlf.loading_head.weight.grad is not None and torch.isfinite(dlf.loading_head.weight.grad).all()


def test_kernel_bad_inputs():
    with pytest.raises(TypeError, match="loading must be a DeepLatentFactor or an nn.Module"):
        DLFKernel(lambda x: x)
    multivariate = random_dlf(in_features=2, num_factors=3, num_outputs=3)
    with pytest.raises(ValueError, match="allow_multivariate=True"):
        DLFKernel(multivariate)
    assert DLFKernel(multivariate, allow_multivariate=True)(torch.randn(5, 2, dtype=torch.float64)).shape == (5, 5)
    with pytest.raises(ValueError, match="univariate"):
        DLFMean(multivariate)
    with pytest.raises(ValueError, match="last_dim_is_batch"):
        DLFKernel(_ElementwiseLoading()).forward(torch.randn(4, 2), torch.randn(4, 2), last_dim_is_batch=True)
    with pytest.raises(ValueError, match=r"\(\*batch, n, d\)"):
        DLFKernel(_ElementwiseLoading()).forward(torch.randn(4), torch.randn(4))


def test_full_dlf_is_a_multitask_kernel_with_the_dlf_likelihood():
    """Full DLF: the kernel of the (point, class) pairs in GPyTorch's interleaved order; a
    MultitaskMultivariateNormal with the DLF's mean and σ_f² gives its marginal likelihood."""
    dlf = random_dlf(in_features=2, num_factors=3, num_outputs="full", seed=3, noise_variance=0.05)
    x, x2 = torch.randn(25, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    kernel = DLFKernel(dlf)  # the full model is the whole covariance: no allow_multivariate needed
    assert kernel.num_outputs_per_input(x, x) == 3
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(10_000):
        K = kernel(x).to_dense()
        torch.testing.assert_close(K, dlf.covariance(x))
        torch.testing.assert_close(kernel(x, x2).to_dense(), dlf.covariance(x, x2))
        torch.testing.assert_close(kernel(x, diag=True), K.diagonal())
        f = dlf.sample(x, 5, include_noise=True)
        noise = dlf.noise_variance.detach()
        covariance = kernel(x).add_diagonal(noise.expand(75))
        predictive = gpytorch.distributions.MultitaskMultivariateNormal(dlf.mean(x), covariance, interleaved=True)
        torch.testing.assert_close(predictive.log_prob(f), dlf.log_marginal_likelihood(x, f), rtol=1e-8, atol=1e-8)


def test_allow_multivariate_must_be_a_flag():
    with pytest.raises(TypeError, match="allow_multivariate must be True or False"):
        DLFKernel(random_dlf(), allow_multivariate="yes")
