r"""A Bayesian neural network regressor in Pyro, whose posterior function draws can be distilled.

One hidden layer of ``hidden`` tanh units,

.. math::

    f(x) = b_2 + W_2 \tanh(W_1 x + b_1), \qquad
    W_k, b_k \sim \mathcal N(0, s_k^2), \qquad
    y \mid x \sim \mathcal N(f(x), \sigma^2), \quad \sigma \sim \mathrm{HalfNormal}(1),

with the input layer's prior scale :math:`s_1 = 1` (standardized inputs) and the
output layer's :math:`s_2 = 1/\sqrt{\text{hidden}}`, so the prior variance of
:math:`f(x)` stays :math:`O(1)` as the width grows (the usual
:math:`1/\sqrt{\text{fan-in}}` scaling). Targets are expected standardized.

Posterior draws of the site ``function`` (from NUTS samples or from an SVI
guide, via ``pyro.infer.Predictive``) are a "teacher ensemble" of any size: each
draw is one function, and :func:`pyro_dlf.distill` compresses them into one
deep latent factor model.
"""

from __future__ import annotations

import math
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

__all__ = ["BayesianMLP"]


class BayesianMLP(PyroModule):
    """A one-hidden-layer Bayesian MLP for regression (a Pyro model).

    Sites: the weights ``layer1.weight``, ``layer1.bias``, ``layer2.weight``,
    ``layer2.bias`` (``PyroSample`` priors), ``sigma`` (the noise scale),
    ``function`` (deterministic, the noise-free :math:`f(x)` in plate ``data``)
    and ``y``.

    :param in_features: input dimension.
    :param hidden: hidden width.
    """

    def __init__(self, in_features: int, hidden: int = 50) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.hidden = hidden
        self.layer1 = PyroModule[nn.Linear](in_features, hidden)
        self.layer1.weight = PyroSample(dist.Normal(0.0, 1.0).expand([hidden, in_features]).to_event(2))
        self.layer1.bias = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        scale = 1.0 / math.sqrt(hidden)
        self.layer2 = PyroModule[nn.Linear](hidden, 1)
        self.layer2.weight = PyroSample(dist.Normal(0.0, scale).expand([1, hidden]).to_event(2))
        self.layer2.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The regression model: ``x`` of shape ``(m, in_features)``, ``y`` of shape ``(m,)`` or ``None``."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (m, {self.in_features}), got {tuple(x.shape)}")
        if y is not None and y.shape != x.shape[:1]:
            raise ValueError(f"y must have shape ({x.shape[0]},), one target per row of x, got {tuple(y.shape)}")
        sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
        function = self.layer2(torch.tanh(self.layer1(x))).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            function = pyro.deterministic("function", function)
            return pyro.sample("y", dist.Normal(function, sigma), obs=y)
