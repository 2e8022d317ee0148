r"""Who fits the teachers' covariance fastest: the DLF by exact EM, GPyTorch's SVGP, GPyTorch's exact GP.

Part of ``pyro-dlf bench scale``. The teachers are ``n`` draws of a known DLF
(:mod:`pyro_dlf.bench.scale`: ``f_i = μ(x) + Φ(x)^T z_i + σ ε``), so the true
covariance of a teacher at any inputs is known: ``K = Φ Φ^T + σ² I``. Each
method fits a distribution over functions to the same ``n × m`` teacher
values and is scored, as it trains, by the relative error of its covariance
at 200 held-out inputs ``X*``, ``‖K̂ − K‖_F / ‖K‖_F``:

* **DLF**: :class:`~pyro_dlf.infer.EM` (exact E-step, minibatch M-steps of
  1,024 points), ``K̂ = Φ̂ Φ̂^T + σ̂_f² I``;
* **SVGP** (Hensman et al. 2015) as GPyTorch builds it: a scaled RBF kernel
  with one length scale per input (shared by all teachers), a constant mean,
  ``q`` inducing points (as many as the DLF has factors) and one variational
  distribution per teacher, trained by Adam on minibatch ELBOs;
  ``K̂ = k(X*, X*) + σ̂² I``;
* **exact GP**: the same kernel, its hyperparameters by Adam on the exact
  marginal likelihood of all teachers (one ``m × m`` Cholesky per step) --
  run only while ``m`` is small enough.

Each method runs until ``budget_seconds``; the curves of (seconds, error) are
returned, and the speed-up is the time the DLF takes to reach the best error
SVGP reaches within the budget, against SVGP's time to reach it. Before the
clocks start, every method runs once on 64 points for a fraction of a second, so
that one-time costs of the process (library set-up, first calls into LAPACK)
are charged to no method.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

__all__ = ["covariance_race"]


def _relative_error(k_hat: torch.Tensor, k: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(k_hat.double() - k.double()) / torch.linalg.matrix_norm(k.double()))


def _truth_covariance(truth, x_star: torch.Tensor, noise: float) -> torch.Tensor:
    with torch.no_grad():
        phi = truth.loading(x_star)
    return phi @ phi.T + noise * torch.eye(len(x_star))


def _dlf_curve(x, f, x_star, k_true, q: int, budget: float, seed: int) -> list[tuple[float, float]]:
    import pyro
    import pyro.optim

    from pyro_dlf.guides import ExactFactorPosterior
    from pyro_dlf.infer import EM
    from pyro_dlf.models import DeepLatentFactor

    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = DeepLatentFactor(x.shape[1], q, (50,), name="race_dlf")
    with torch.no_grad():
        model.output_loc.copy_(f.mean())
        model.output_scale.copy_(f.std())
    model.set_noise_variance(0.1 * float(f.var()))
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=4, batch_size=1024)
    curve, start = [], time.perf_counter()
    while time.perf_counter() - start < budget:
        em.step(x, f)
        with torch.no_grad():
            phi = model.loading(x_star)
            k_hat = phi @ phi.T + model.noise_variance * torch.eye(len(x_star))
        curve.append((time.perf_counter() - start, _relative_error(k_hat, k_true)))
    return curve


def _kernel(d: int):
    import gpytorch

    return gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=d))


def _svgp_curve(x, f, x_star, k_true, q: int, budget: float, seed: int) -> list[tuple[float, float]]:
    import gpytorch

    torch.manual_seed(seed)
    n, m = f.shape

    class SVGP(gpytorch.models.ApproximateGP):
        def __init__(self) -> None:
            inducing = x[torch.randperm(m)[:q]].clone()
            distribution = gpytorch.variational.CholeskyVariationalDistribution(q, batch_shape=torch.Size([n]))
            strategy = gpytorch.variational.VariationalStrategy(self, inducing, distribution, learn_inducing_locations=True)
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = _kernel(x.shape[1])

        def forward(self, inputs):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(inputs), self.covar_module(inputs))

    model, likelihood = SVGP(), gpytorch.likelihoods.GaussianLikelihood()
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=1e-2)
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=m)
    curve, start = [], time.perf_counter()
    while time.perf_counter() - start < budget:
        for idx in torch.randperm(m).split(1024):
            optimizer.zero_grad()
            loss = -mll(model(x[idx]), f[:, idx]).sum()
            loss.backward()
            optimizer.step()
            if time.perf_counter() - start > budget:
                break
        with torch.no_grad():
            k_hat = model.covar_module(x_star).to_dense() + likelihood.noise * torch.eye(len(x_star))
        curve.append((time.perf_counter() - start, _relative_error(k_hat, k_true)))
    return curve


def _exact_curve(x, f, x_star, k_true, budget: float, seed: int, max_points: int) -> list[tuple[float, float]]:
    import gpytorch

    if x.shape[0] > max_points:
        return []
    torch.manual_seed(seed)
    kernel, mean = _kernel(x.shape[1]), gpytorch.means.ConstantMean()
    log_noise = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([*kernel.parameters(), *mean.parameters(), log_noise], lr=1e-2)
    curve, start = [], time.perf_counter()
    with gpytorch.settings.max_cholesky_size(10 ** 9):  # exact: Cholesky at every size
        while time.perf_counter() - start < budget:
            optimizer.zero_grad()
            covariance = kernel(x).to_dense() + log_noise.exp() * torch.eye(x.shape[0])
            law = torch.distributions.MultivariateNormal(mean(x), scale_tril=torch.linalg.cholesky(covariance))
            (-law.log_prob(f).sum()).backward()
            optimizer.step()
            with torch.no_grad():
                k_hat = kernel(x_star).to_dense() + log_noise.exp() * torch.eye(len(x_star))
            curve.append((time.perf_counter() - start, _relative_error(k_hat, k_true)))
    return curve


def _time_to(curve: list[tuple[float, float]], error: float) -> Optional[float]:
    return next((t for t, e in curve if e <= error), None)


def covariance_race(m: int, n: int = 50, q: int = 10, budget_seconds: float = 120.0, exact_max_points: int = 5000,
                    seed: int = 0) -> dict:
    """Fit the DLF, SVGP and (small ``m``) the exact GP to the same teachers; see the module docstring."""
    from pyro_dlf.bench.scale import _inputs, _teacher_functions, _truth

    torch.set_num_threads(1)
    truth = _truth()
    x, x_star = _inputs(m, seed=2), _inputs(200, seed=99)
    f = _teacher_functions(n)(x)
    k_true = _truth_covariance(truth, x_star, 0.01)
    small = slice(0, min(64, m))
    for warm in (lambda: _dlf_curve(x[small], f[:, small], x_star, k_true, q, 0.2, seed),
                 lambda: _svgp_curve(x[small], f[:, small], x_star, k_true, min(q, small.stop), 0.2, seed),
                 lambda: _exact_curve(x[small], f[:, small], x_star, k_true, 0.2, seed, exact_max_points)):
        warm()  # untimed: one-time costs of the process belong to no method
    curves = {"DLF": _dlf_curve(x, f, x_star, k_true, q, budget_seconds, seed),
              "SVGP": _svgp_curve(x, f, x_star, k_true, q, budget_seconds, seed),
              "exact GP": _exact_curve(x, f, x_star, k_true, budget_seconds, seed, exact_max_points)}
    best = {name: min((e for _, e in c), default=math.nan) for name, c in curves.items()}
    svgp_time = _time_to(curves["SVGP"], best["SVGP"])
    dlf_time = _time_to(curves["DLF"], best["SVGP"])
    return {"m": m, "n": n, "q": q, "budget_seconds": budget_seconds, "curves": curves, "best_error": best,
            "svgp_seconds_to_its_best": svgp_time, "dlf_seconds_to_svgp_best": dlf_time,
            "speedup": (svgp_time / dlf_time) if svgp_time and dlf_time else None}
