r"""The aleatoric part of heteroscedastic teachers: a log-normal law whose location follows x (mathematics §6).

A standard deep ensemble's member ``i`` predicts a mean ``m_i(x)`` and a noise
variance ``s_i²(x)``. The DLF distils the means (the epistemic part). For the
noise, the teachers' log variances at each design point are modelled as

.. math::

    \log s_i^2(x_j) = g(x_j) + τ\, ε_{ij}, \qquad ε_{ij} \sim N(0, 1),

a log-normal law per input whose location ``g`` is a small network and whose
spread ``τ`` is shared. Its maximum-likelihood fit separates: ``g`` minimizes
``Σ_{ij} (\log s_{ij}^2 − g(x_j))^2`` -- i.e. least squares on the per-point
mean log variance -- and ``τ^2`` is then the mean squared residual. The
predictive draws one ``ε_s`` per draw, shared by all inputs (a draw is one
plausible teacher, noisier or quieter everywhere, as the homoscedastic
inverse gamma draws one ``σ²`` per draw), so

.. math::

    σ^2_{(s)}(x) = \exp(g(x) + τ ε_s), \qquad
    E[σ^2(x)] = \exp(g(x) + τ^2/2),

and ``p(y | x) = (1/S) Σ_s N(y | f^{(s)}(x), σ^2_{(s)}(x))``. Its variance at
``x`` is the epistemic ``‖Φ(x)‖²`` plus ``E[σ²(x)]``, to be compared with the
ensemble's mixture variance ``var_i m_i(x) + mean_i s_i²(x)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from scipy.stats import norm
from torch import Tensor, nn

from pyro_dlf._validation import check_int
from pyro_dlf.likelihoods.base import MixtureParts, NoiseLaw
from pyro_dlf.nn import MLP

__all__ = ["HeteroscedasticNoise", "fit_heteroscedastic_noise", "NOISE_PREFIX"]

#: State-dict prefix of a heteroscedastic noise model's weights in a student file.
NOISE_PREFIX = "noise_model."


class HeteroscedasticNoise(nn.Module, NoiseLaw):
    """``σ²(x) = exp(g(x) + τ ε)``: ``g`` an MLP on standardized inputs, ``τ`` a fitted constant; one level ``ε``
    per draw, shared by every input (a noisier or quieter teacher everywhere).

    :param in_features: input dimension ``d``.
    :param hidden: hidden widths of ``g``.
    """

    per_input = True

    def __init__(self, in_features: int, hidden: Sequence[int] = (50,)) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of positive widths such as (50,), got {hidden!r}")
        self.hidden = tuple(check_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
        self.location = MLP(self.in_features, self.hidden, 1, nn.Tanh)
        self.register_buffer("input_loc", torch.zeros(self.in_features))
        self.register_buffer("input_scale", torch.ones(self.in_features))
        self.register_buffer("output_loc", torch.zeros(()))
        self.register_buffer("output_scale", torch.ones(()))
        self.register_buffer("log_spread", torch.zeros(()))  # log τ

    def config(self) -> dict:
        return {"in_features": self.in_features, "hidden": list(self.hidden)}

    @property
    def spread(self) -> Tensor:
        """``τ``, the standard deviation of the log variances around ``g(x)``."""
        return self.log_spread.exp()

    def log_location(self, x: Tensor) -> Tensor:
        """``g(x)``, ``(m,)``."""
        z = (x - self.input_loc) / self.input_scale
        return self.output_loc + self.output_scale * self.location(z).squeeze(-1)

    def mean(self, x: Tensor, like: Optional[Tensor] = None) -> Tensor:
        """``E[σ²(x)] = exp(g(x) + τ²/2)``, ``(m,)``."""
        return (self.log_location(x) + 0.5 * self.spread ** 2).exp()

    def sample(self, x: Tensor, levels: Tensor) -> Tensor:
        """``σ²_{(s)}(x) = exp(g(x) + τ ε_s)`` for standard-normal ``levels`` ``(S,)``: ``(S, m)``."""
        return (self.log_location(x) + self.spread * levels.unsqueeze(-1)).exp()

    def quantiles(self, x: Tensor, num: int) -> Tensor:
        """``num`` equal-probability nodes of ``σ²(x)`` at every input, ``(num, m)`` (deterministic quadrature)."""
        probs = (torch.arange(num, dtype=torch.float64) + 0.5) / num
        levels = torch.as_tensor(norm.ppf(probs.numpy()), dtype=x.dtype, device=x.device)
        return self.sample(x, levels)

    def draws(self, x: Tensor, z: Tensor, levels: Optional[Tensor]) -> Tensor:
        return self.sample(x, levels)

    def sample_sites(self, prefix: str, x: Tensor, z: Tensor, like: Tensor, multivariate: bool, hide_params):
        level = pyro.sample(prefix + "noise_level", dist.Normal(like.new_zeros(()), 1.0))
        with hide_params():
            return self.log_location(x), self.spread, level

    def plate_variance(self, prefix: str, state) -> Tensor:
        log_location, spread, level = state
        return pyro.deterministic(prefix + "noise_variance", (log_location + spread * level).exp())

    def mixture(self, parts: MixtureParts, num_components: int) -> tuple[Tensor, Tensor]:
        """``σ²(x)`` integrated over ``num_components`` equal-probability nodes of its log-normal law at each input."""
        variances = parts.epistemic + parts.nugget + self.quantiles(parts.x, num_components)
        return parts.mean.expand_as(variances), variances

    def record(self) -> tuple[dict, None, dict]:
        return ({"heteroscedastic": self.config()}, None,
                {f"{NOISE_PREFIX}{k}": v.detach().cpu() for k, v in self.state_dict().items()})


def fit_heteroscedastic_noise(x: Tensor, variances: Tensor, *, observed: Optional[Tensor] = None, hidden: Sequence[int] = (50,),
                              epochs: int = 500, lr: float = 1e-2, seed: int = 0) -> HeteroscedasticNoise:
    """Maximum-likelihood :class:`HeteroscedasticNoise` from the teachers' variances ``(n, m)`` at ``x`` ``(m, d)``.

    ``g`` is fitted by full-batch Adam (the one training loop,
    :func:`pyro_dlf.training.fit_networks`) to the per-point mean log
    variance over the (observed) teachers; ``τ²`` is the mean squared residual of
    every (observed) log variance about ``g``.
    """
    from pyro_dlf.training import fit_networks

    if not isinstance(variances, Tensor) or variances.dim() != 2 or variances.shape[1] != x.shape[0]:
        raise ValueError(f"teacher_noise_variances must be (n,) or (n, m) = (teachers, design points), got "
                         f"{tuple(getattr(variances, 'shape', ()))} for {x.shape[0]} design points")
    log_v = variances.double().log()
    keep = torch.ones_like(log_v, dtype=torch.bool) if observed is None else observed
    if not bool(torch.isfinite(torch.where(keep, log_v, torch.zeros_like(log_v))).all()) or bool((variances[keep] <= 0).any()):
        raise ValueError("teacher_noise_variances must be positive and finite wherever the teachers are observed")
    counts = keep.sum(0)
    seen = counts > 0
    mean_log = torch.where(keep, log_v, torch.zeros_like(log_v)).sum(0)[seen] / counts[seen]
    xs = x[seen]
    dtype = x.dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        noise = HeteroscedasticNoise(x.shape[1], hidden).to(dtype)
    with torch.no_grad():
        loc, scale = xs.mean(0), xs.std(0) if xs.shape[0] > 1 else torch.ones(x.shape[1], dtype=dtype)
        noise.input_loc.copy_(loc)
        noise.input_scale.copy_(torch.where(scale > 1e-8, scale, torch.ones_like(scale)))
        noise.output_loc.copy_(mean_log.mean())
        noise.output_scale.copy_(mean_log.std().clamp_min(1e-8) if mean_log.numel() > 1 else torch.ones((), dtype=torch.float64))
    target = ((mean_log - noise.output_loc.double()) / noise.output_scale.double()).to(dtype)
    standardized = ((xs - noise.input_loc) / noise.input_scale)
    fit_networks([noise.location], standardized, target.reshape(1, -1, 1), loss="mse", epochs=epochs, lr=lr,
                 generators=[torch.Generator().manual_seed(seed)])
    with torch.no_grad():
        residual = torch.where(keep, log_v - noise.log_location(x).double(), torch.zeros_like(log_v))
        tau2 = float(residual.pow(2).sum() / keep.sum())
        noise.log_spread.fill_(0.5 * math.log(max(tau2, 1e-12)))
    return noise.eval()
