"""Where the deep-kernel GP's covariance error in the covariance race (``scale.md``) comes from.

The DLF (exact EM) and the deep-kernel GP (the same network, Adam on the exact marginal likelihood)
fit the race's teachers at m points for the same training time. Printed for each, and for the truth
(5 factors; the fits have 10): the eigenvalues of the loadings' second moment at the race's 200
held-out inputs, ``(1/200) Σ_x Φ(x) Φ(x)^T`` -- the variance each factor direction adds at a typical
input -- with the share of it that is constant over the inputs, ``‖mean_x Φ(x)‖²``, and each fit's
negative log marginal likelihood per value on the design points. A factor direction the teachers do
not vary along costs the likelihood only ``½ log(1 + ‖v‖²/σ²)`` per teacher (a log-determinant), so
little pulls a gradient fit's spare directions back; EM's parameter expansion rescales every factor
to the teachers' posterior spread along it (mathematics §4.4).

    python benchmarks/scripts/race_constant_factor.py 10000 15
"""
import sys

import torch

from pyro_dlf_bench.harness import covariance_race as race
from pyro_dlf_bench.harness.known_teachers import inputs, teacher_functions, truth

torch.set_num_threads(1)
m = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
known = truth()
x, x_star = inputs(m, seed=2), inputs(200, seed=99)
f = teacher_functions(50)(x, 0)
k_true = race._truth_covariance(known, x_star, 0.01)
fitted: dict = {}
curves = {"DLF": race._dlf_curve(x, f, x_star, k_true, 10, seconds, 0, 1.0, fitted),
          "deep-kernel GP": race._deep_kernel_curve(x, f, x_star, k_true, 10, seconds, 0, 1.0, fitted)}


def parts(loading: torch.Tensor) -> str:
    moment = torch.linalg.eigvalsh(loading.T @ loading / loading.shape[0]).flip(0)
    shared = loading.mean(0)
    return (f"eigenvalues {' '.join(f'{v:.3f}' for v in moment.tolist())}; constant part {float(shared.pow(2).sum()):.3f}")


print(f"m = {m:,}, {seconds:g} s of training each; loadings at the held-out inputs")
with torch.no_grad():
    gp = fitted["deep-kernel GP"]  # its noise variance lives beside the network: put it where the likelihood reads it
    gp.set_noise_variance(float(fitted.pop("deep-kernel GP: log noise").exp()) * float(gp.output_scale) ** 2)
    print(f"  truth          : {parts(known.loading(x_star))}")
    for name, model in fitted.items():
        nll = -float(model.log_marginal_likelihood(x, f).sum()) / f.numel()
        print(f"  {name:<15s}: {parts(model.loading(x_star))}; covariance error {curves[name][-1][1]:.3f}; "
              f"negative log marginal likelihood per value {nll:.4f}")
