r"""The interface every noise law of a regression student implements (mathematics §2.4, §6.3, §6.4).

A noise law is the law of the noise variance ``σ²`` of a new teacher. The student reads it through this one
interface wherever the noise enters: the Pyro model's sites (:meth:`NoiseLaw.sample_sites` before the data
plate, :meth:`NoiseLaw.plate_variance` inside it), the closed-form summary (:meth:`NoiseLaw.mean`), draws paired
with the factors (:meth:`NoiseLaw.draws`), the predictive mixture (:meth:`NoiseLaw.mixture`) and the student
file (:meth:`NoiseLaw.record`). A new law implements this interface in one new file of
:mod:`pyro_dlf.likelihoods`; the student's constructor and its file reader then learn its name.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

__all__ = ["NoiseLaw", "MixtureParts"]


class MixtureParts:
    """What :meth:`NoiseLaw.mixture` needs of the student at the inputs: ``μ(x)``, ``Φ(x)``, the epistemic
    variance with the nugget the predictive keeps, and the number of factors."""

    def __init__(self, x: Tensor, mean: Tensor, loading: Tensor, epistemic: Tensor, nugget: Tensor, num_factors: int):
        self.x, self.mean, self.loading, self.epistemic, self.nugget = x, mean, loading, epistemic, nugget
        self.num_factors = num_factors


class NoiseLaw:
    """The law of a regression student's noise variance ``σ²``."""

    #: Mixture components per requested component (a law that integrates the factors too needs more).
    mixture_factor: int = 1
    #: Whether ``σ²`` varies with the input (its draws are then made batch by batch, at the inputs).
    per_input: bool = False

    def mean(self, x: Tensor, like: Tensor) -> Tensor:
        """``E[σ²]`` at every input, broadcastable with ``like`` (``(m,)`` or ``(m, d)``)."""
        raise NotImplementedError

    def draws(self, x: Tensor, z: Tensor, levels: Optional[Tensor]) -> Tensor:
        """Draws of ``σ²`` paired with the factor draws ``z`` ``(S, 1, ...)``; ``levels`` ``(S,)`` are standard-normal
        draws the law may use (the same stream as the predictive has always drawn)."""
        raise NotImplementedError

    def sample_sites(self, prefix: str, x: Tensor, z: Tensor, like: Tensor, multivariate: bool, hide_params) -> Any:
        """The model's sites before the data plate; returns what :meth:`plate_variance` needs. ``hide_params()`` is a
        context that keeps a frozen student's weights from showing as param sites."""
        raise NotImplementedError

    def plate_variance(self, prefix: str, state: Any) -> Tensor:
        """``σ²`` inside the data plate (a deterministic site where the law varies with ``x``)."""
        return state

    def mixture(self, parts: MixtureParts, num_components: int) -> tuple[Tensor, Tensor]:
        """The predictive density as equal-weight Gaussians: ``(means, variances)``, ``(K, m[, d])``."""
        raise NotImplementedError

    def record(self) -> tuple[Any, Optional[dict], dict]:
        """The student file's ``noise`` and ``noise_factors`` fields and the law's weights (state dict)."""
        raise NotImplementedError
