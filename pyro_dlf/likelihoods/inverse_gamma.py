r"""The i.i.d. inverse-gamma noise law ``σ² ~ IG(a, b)`` (mathematics §2.4): one per student, or one per output.

Fitted by maximum likelihood to the teachers' noise variances (:func:`pyro_dlf.noise.fit_inverse_gamma`); the
predictive mixes over it, so a student's predictive is a Student-t around the distilled process.
"""

from __future__ import annotations

from typing import Optional, Union

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_dlf.likelihoods.base import MixtureParts, NoiseLaw
from pyro_dlf.noise import fit_inverse_gamma, inverse_gamma_quantiles

__all__ = ["InverseGammaNoise"]

Numbers = Union[float, tuple[float, ...]]


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


class InverseGammaNoise(NoiseLaw):
    """``σ² ~ IG(a, b)`` independent of the function; ``a``, ``b`` floats, or tuples with one law per output of a
    multi-output regression. Checked by the student (:func:`pyro_dlf._validation.check_noise_prior`).

    :param concentration: ``a > 0``; the mean ``b/(a − 1)`` is infinite for ``a ≤ 1``.
    :param rate: ``b > 0``.
    """

    def __init__(self, concentration: Numbers, rate: Numbers) -> None:
        self.concentration, self.rate = concentration, rate

    @classmethod
    def fit(cls, variances: Tensor) -> "InverseGammaNoise":
        """The maximum-likelihood law of the teachers' noise variances: ``(n,)`` one law, ``(n, d)`` one per output
        (:func:`pyro_dlf.noise.fit_inverse_gamma`, which warns of a law without a mean)."""
        if variances.dim() == 2:
            fits = [fit_inverse_gamma(variances[:, k]) for k in range(variances.shape[1])]
            return cls(tuple(a for a, _ in fits), tuple(b for _, b in fits))
        return cls(*fit_inverse_gamma(variances))

    def constant_mean(self, like: Tensor) -> Numbers:
        """``E[σ²] = b/(a − 1)`` (infinite when ``a ≤ 1``); a tuple, one per output, for several laws."""
        mean = lambda a, b: b / (a - 1) if a > 1 else float("inf")  # noqa: E731
        if isinstance(self.concentration, tuple):
            return tuple(mean(a, b) for a, b in zip(self.concentration, self.rate))
        return mean(self.concentration, self.rate)

    def mean(self, x: Optional[Tensor], like: Tensor) -> Tensor:
        return torch.zeros_like(like) + like.new_tensor(self.constant_mean(like))

    def prior(self, like: Tensor, z: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``(a, b)`` as tensors like ``like``: ``()``, or ``(d,)`` with one law per output."""
        return like.new_tensor(self.concentration), like.new_tensor(self.rate)

    def draws(self, x: Optional[Tensor], z: Tensor, levels: Optional[Tensor]) -> Tensor:
        return dist.InverseGamma(*self.prior(z)).sample((z.shape[0],))

    def sample_sites(self, prefix: str, x: Tensor, z: Tensor, like: Tensor, multivariate: bool, hide_params) -> Tensor:
        prior = dist.InverseGamma(*self.prior(like, z))
        # One law per output is an event of d variances; one law for every output draws one variance they share.
        return pyro.sample(prefix + "noise_variance", prior.to_event(1) if prior.batch_shape else prior)

    def mixture(self, parts: MixtureParts, num_components: int) -> tuple[Tensor, Tensor]:
        """``σ²`` integrated over ``num_components`` equal-probability quantile nodes of ``IG(a, b)``."""
        like = parts.mean
        if isinstance(self.concentration, tuple):  # one inverse gamma per output: (K, 1, d)
            nodes = torch.stack([inverse_gamma_quantiles(a, b, num_components) for a, b in
                                 zip(self.concentration, self.rate)], -1).to(like).unsqueeze(1)
        else:
            nodes = inverse_gamma_quantiles(self.concentration, self.rate, num_components).to(like)
            nodes = nodes.reshape((num_components,) + (1,) * parts.epistemic.dim())
        variances = parts.epistemic + parts.nugget + nodes
        return like.expand_as(variances), variances

    def record(self) -> tuple[list, None, dict]:
        return [_listed(self.concentration), _listed(self.rate)], None, {}
