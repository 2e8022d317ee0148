r"""How fast each method fits the teachers' covariance, on one clock: the DLF by exact EM against GPs.

Part of ``pyro-dlf bench scale``. The teachers are ``n`` draws of a known DLF
(:mod:`pyro_dlf_bench.harness.known_teachers`: ``f_i = μ(x) + Φ(x)^T z_i + σ ε``), so the true
covariance of a teacher at any inputs is known: ``K = Φ Φ^T + σ² I``. Each
method fits a distribution over functions to the same ``n × m`` teacher
values and is scored, as it trains, by the relative error of its covariance
at 200 held-out inputs ``X*``, ``‖K̂ − K‖_F / ‖K‖_F``:

* **DLF**: :class:`~pyro_dlf.infer.EM` (exact E-step, four minibatch M-steps of
  1,024 points per iteration), ``K̂ = Φ̂ Φ̂^T + σ̂_f² I``;
* **deep-kernel GP**: the same network (same architecture, same seed, so the
  same starting point) read as a GP with mean ``μ(x)`` and the linear kernel
  ``k(x, x') = Φ(x)^T Φ(x')`` on its ``q`` loading features, plus ``σ² I``;
  its weights and ``σ²`` by Adam on the exact marginal likelihood of all
  teachers, computed by GPyTorch's ``linear_operator``
  (``LowRankRootAddedDiagLinearOperator``: Woodbury identity and matrix
  determinant lemma, exact at every ``m``). It can represent the truth
  exactly, so it separates what EM gives from what the model gives;
* **SVGP** (Hensman et al. 2015) as GPyTorch builds it: a scaled RBF kernel
  with one length scale per input (shared by all teachers), a constant mean,
  ``q`` inducing points (as many as the DLF has factors) and one variational
  distribution per teacher, trained by Adam on minibatch ELBOs of 1,024 points;
  ``K̂ = k(X*, X*) + σ̂² I``. A stationary kernel cannot express ``Φ Φ^T``:
  it shows what a default GP choice reaches;
* **exact GP**: the same kernel, its hyperparameters by Adam on the exact
  marginal likelihood of all teachers (one ``m × m`` Cholesky per step) --
  run only while ``m`` is small enough.

**One clock, the same start.** Every method sees the teachers' values in the
same standardized units (the DLF's output location and scale; the GPs fit
``(f − loc) / scale`` and their covariance is scaled back), starts from
random initial weights with no warm start, and uses Adam with step size
``1e-2``. Each runs for ``budget_seconds`` of its own training time; scoring
is not charged to it (the clock pauses while ``K̂`` is evaluated, at most every
``interval`` seconds and after the last step). The result is each method's
error *against training time* and its error at fixed checkpoints -- the error
of the fit it holds then, not its best so far. For scale, the error of the
teachers' own sample covariance at ``X*`` (the ``n`` teachers evaluated there)
is reported too: with ``n`` draws no method can be expected to do much better. Before the clocks start, every
method runs once on 64 points for a fraction of a second, so that one-time
costs of the process (library set-up, first calls into LAPACK) are charged to
no method.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from pyro_dlf_bench.harness.known_teachers import inputs, teacher_functions, truth

__all__ = ["CHECKPOINTS", "covariance_race", "error_at"]

#: Training seconds at which every method's error is tabulated.
CHECKPOINTS = (0.5, 2.0, 8.0, 30.0, 60.0)
_LR, _HIDDEN, _BATCH = 1e-2, 50, 1024


def _relative_error(k_hat: torch.Tensor, k: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(k_hat.double() - k.double()) / torch.linalg.matrix_norm(k.double()))


def _truth_covariance(truth, x_star: torch.Tensor, noise: float) -> torch.Tensor:
    with torch.no_grad():
        phi = truth.loading(x_star)
    return phi @ phi.T + noise * torch.eye(len(x_star))


def _run(step: Callable[[], None], covariance: Callable[[], torch.Tensor], k_true: torch.Tensor, budget: float,
         interval: float) -> list[tuple[float, float]]:
    """``step`` until ``budget`` seconds of training; ``(training seconds, error)`` at the start, at most every
    ``interval`` seconds and at the end (the clock stops while the covariance is scored)."""
    def score(clock: float) -> tuple[float, float]:
        with torch.no_grad():
            return clock, _relative_error(covariance(), k_true)

    curve, clock, next_score = [score(0.0)], 0.0, interval
    while clock < budget:
        start = time.perf_counter()
        step()
        clock += time.perf_counter() - start
        if clock >= next_score or clock >= budget:
            curve.append(score(clock))
            next_score = clock + interval
    return curve


def _dlf(x, f, q: int, seed: int):
    """The race's DLF: a random network with the teachers' output location and scale."""
    import pyro

    from pyro_dlf.models import DeepLatentFactor

    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = DeepLatentFactor(x.shape[1], q, (_HIDDEN,), name="race_dlf")
    with torch.no_grad():
        model.output_loc.copy_(f.mean())
        model.output_scale.copy_(f.std())
    model.set_noise_variance(0.1 * float(f.var()))
    return model


def _dlf_curve(x, f, x_star, k_true, q: int, budget: float, seed: int, interval: float,
               fitted: Optional[dict] = None) -> list[tuple[float, float]]:
    import pyro.optim

    from pyro_dlf.guides import ExactFactorPosterior
    from pyro_dlf.infer import EM

    model = _dlf(x, f, q, seed)
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": _LR}), num_m_steps=4, batch_size=_BATCH)
    if fitted is not None:  # the caller inspects the fitted network
        fitted["DLF"] = model

    def covariance() -> torch.Tensor:
        phi = model.loading(x_star)
        return phi @ phi.T + model.noise_variance * torch.eye(len(x_star))

    return _run(lambda: em.step(x, f), covariance, k_true, budget, interval)


def _deep_kernel_curve(x, f, x_star, k_true, q: int, budget: float, seed: int, interval: float,
                       fitted: Optional[dict] = None) -> list[tuple[float, float]]:
    from linear_operator.operators import ConstantDiagLinearOperator, LowRankRootLinearOperator

    model = _dlf(x, f, q, seed)  # the same network and starting point as the DLF's
    n, m = f.shape
    scale = model.output_scale.detach()
    ft = (f - model.output_loc.detach()) / scale  # standardized, as the DLF's heads see them
    log_noise = torch.tensor([math.log(float(model.noise_variance.detach()) / float(scale) ** 2)], requires_grad=True)
    params = [p for p in model.parameters() if p.requires_grad and p is not model.noise_variance_unconstrained]
    optimizer = torch.optim.Adam([*params, log_noise], lr=_LR)
    if fitted is not None:  # the network, and its noise variance in standardized units (trained in place)
        fitted["deep-kernel GP"], fitted["deep-kernel GP: log noise"] = model, log_noise

    def step() -> None:
        optimizer.zero_grad()
        mean, loading = model.mean_and_loading(x)
        covariance = LowRankRootLinearOperator(loading / scale) + ConstantDiagLinearOperator(log_noise.exp(), m)
        inv_quad, logdet = covariance.inv_quad_logdet((ft - (mean - model.output_loc) / scale).T, logdet=True)
        ((inv_quad + n * logdet) / (2 * n * m)).backward()  # negative log marginal likelihood per value, less a constant
        optimizer.step()

    def covariance() -> torch.Tensor:
        phi = model.loading(x_star)
        return phi @ phi.T + log_noise.exp() * scale ** 2 * torch.eye(len(x_star))

    return _run(step, covariance, k_true, budget, interval)


def _kernel(d: int):
    import gpytorch

    return gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=d))


def _svgp_curve(x, f, x_star, k_true, q: int, budget: float, seed: int, interval: float) -> list[tuple[float, float]]:
    import gpytorch

    torch.manual_seed(seed)
    n, m = f.shape
    loc, scale = f.mean(), f.std()
    ft = (f - loc) / scale

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
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=_LR)
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=m)
    batches: list = []

    def step() -> None:
        if not batches:  # a new shuffled epoch
            batches.extend(torch.randperm(m).split(_BATCH))
        idx = batches.pop()
        optimizer.zero_grad()
        (-mll(model(x[idx]), ft[:, idx]).sum()).backward()
        optimizer.step()

    def covariance() -> torch.Tensor:
        return (model.covar_module(x_star).to_dense() + likelihood.noise * torch.eye(len(x_star))) * scale ** 2

    return _run(step, covariance, k_true, budget, interval)


def _exact_curve(x, f, x_star, k_true, budget: float, seed: int, max_points: int, interval: float) -> list[tuple[float, float]]:
    import gpytorch

    if x.shape[0] > max_points:
        return []
    torch.manual_seed(seed)
    loc, scale = f.mean(), f.std()
    ft = (f - loc) / scale
    kernel, mean = _kernel(x.shape[1]), gpytorch.means.ConstantMean()
    log_noise = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([*kernel.parameters(), *mean.parameters(), log_noise], lr=_LR)

    def step() -> None:
        optimizer.zero_grad()
        covariance = kernel(x).to_dense() + log_noise.exp() * torch.eye(x.shape[0])
        law = torch.distributions.MultivariateNormal(mean(x), scale_tril=torch.linalg.cholesky(covariance))
        (-law.log_prob(ft).sum()).backward()
        optimizer.step()

    def covariance() -> torch.Tensor:
        return (kernel(x_star).to_dense() + log_noise.exp() * torch.eye(len(x_star))) * scale ** 2

    with gpytorch.settings.max_cholesky_size(10 ** 9):  # exact: Cholesky at every size
        return _run(step, covariance, k_true, budget, interval)


def error_at(curve: list, seconds: float) -> Optional[float]:
    """The error of the fit a method holds after ``seconds`` of training (its last score by then), or
    ``None`` when it had not been scored after any training step by then."""
    held = [e for t, e in curve if 0 < t <= seconds]
    return held[-1] if held else None


def covariance_race(m: int, n: int = 50, q: int = 10, budget_seconds: float = 60.0, exact_max_points: int = 5000,
                    seed: int = 0, interval: float = 0.25) -> dict:
    """Fit the DLF, the deep-kernel GP, SVGP and (small ``m``) the exact GP to the same teachers; see the
    module docstring. Returns each method's curve of ``(training seconds, error)`` and its error at
    :data:`CHECKPOINTS` within the budget."""
    torch.set_num_threads(1)
    known = truth()
    x, x_star = inputs(m, seed=2), inputs(200, seed=99)
    teachers = teacher_functions(n)
    f = teachers(x, 0)
    k_true = _truth_covariance(known, x_star, 0.01)
    # The floor n teachers allow: their own sample covariance at X*, as if every teacher were seen there.
    at_star = teachers(x_star, -1)
    floor = _relative_error(torch.cov(at_star.T, correction=0), k_true)
    methods = {
        "DLF": lambda xs, fs, budget: _dlf_curve(xs, fs, x_star, k_true, q, budget, seed, interval),
        "deep-kernel GP": lambda xs, fs, budget: _deep_kernel_curve(xs, fs, x_star, k_true, q, budget, seed, interval),
        "SVGP": lambda xs, fs, budget: _svgp_curve(xs, fs, x_star, k_true, min(q, xs.shape[0]), budget, seed, interval),
        "exact GP": lambda xs, fs, budget: _exact_curve(xs, fs, x_star, k_true, budget, seed, exact_max_points, interval),
    }
    small = slice(0, min(64, m))
    for run in methods.values():
        run(x[small], f[:, small], 0.2)  # untimed: one-time costs of the process belong to no method
    curves = {name: run(x, f, budget_seconds) for name, run in methods.items()}
    checkpoints = [t for t in CHECKPOINTS if t <= budget_seconds]
    return {"m": m, "n": n, "q": q, "budget_seconds": budget_seconds, "interval_seconds": interval, "curves": curves,
            "sample_covariance_error": floor,
            "checkpoints": checkpoints,
            "error_at": {name: [error_at(c, t) for t in checkpoints] for name, c in curves.items() if c},
            "final_error": {name: (c[-1][1] if c else math.nan) for name, c in curves.items()}}
