r"""The exact Gaussian posterior of a DLF's latent factors, as a Pyro guide."""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor
from torch.distributions.transforms import ReshapeTransform

from pyro_dlf._validation import check_design_points, check_dtype, check_teacher_values
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.sufficient_statistics import FactorPosterior, FactorStatistics, factor_posterior

__all__ = ["ExactFactorPosterior"]


class ExactFactorPosterior(PyroModule):
    r"""Closed-form posterior ``p(z_{1:n} | f_{1:n})`` of a :class:`DeepLatentFactor` (mathematics §4).

    Univariate: ``z_i | f_i ~ N(S Φ^T r_i / σ_f^2, S)`` with
    ``S = (I + Φ^T Φ / σ_f^2)^{-1}``; the full multivariate model is the same
    with ``Φ`` the stacked (point, class) rows. Separable: the posterior precision
    ``Z ↦ Z + L^T L Z Φ^T Φ / σ_f^2`` is diagonal in the eigenbases of ``L^T L``
    and ``Φ^T Φ`` (see :mod:`pyro_dlf.sufficient_statistics`).

    :meth:`update` computes it from all design points by streaming over
    minibatches: only ``Φ^T Φ`` (``q×q``), ``Φ^T R`` (``q×n``, or ``c×q×n``) and
    ``‖r_i‖²`` are accumulated, so memory does not grow with the number of
    design points. Used as a Pyro guide it has the model's sites and plate:
    ``z`` inside ``pyro.plate("members", n, dim=-2)``.

    The model is held by reference (not as a submodule), so the guide owns no
    network parameters.

    :param model: the DLF whose factors this is the posterior of.
    """

    def __init__(self, model: DeepLatentFactor) -> None:
        if not isinstance(model, DeepLatentFactor):
            raise TypeError(f"model must be a pyro_dlf.models.DeepLatentFactor, got {type(model).__name__}")
        super().__init__(f"{model._pyro_name}_posterior")
        self._model = (model,)  # a tuple keeps nn.Module from registering it
        self.posterior: Optional[FactorPosterior] = None

    @property
    def model(self) -> DeepLatentFactor:
        return self._model[0]

    @property
    def num_members(self) -> int:
        self._require_posterior()
        return self.posterior.mean.shape[0]

    def _require_posterior(self) -> None:
        if self.posterior is None:
            raise RuntimeError("ExactFactorPosterior has no posterior yet: call guide.update(x, f) first")

    def set_statistics(self, stats: FactorStatistics) -> FactorPosterior:
        """E-step from precomputed sufficient statistics at the model's current parameters."""
        model = self.model
        L = model.class_factor.detach() if model.separable else None
        self.posterior = factor_posterior(stats, model.noise_variance.detach(), L)
        return self.posterior

    def update(self, x: Tensor, f: Tensor, batch_size: Optional[int] = None, observed: Optional[Tensor] = None) -> FactorPosterior:
        """Exact E-step from all design points (streamed in batches of ``batch_size``);
        with ``observed`` (``(n, m)`` booleans) each teacher from its observed points only."""
        x = check_design_points(x, "x", integer_ok=self.model.custom_body)
        self.model.check_inputs(x, "x")
        f = check_teacher_values(f, x, self.model.num_outputs, "f", min_members=1, observed=observed)
        check_dtype(f, self.model, "f")
        return self.set_statistics(self.model.statistics(x, f, batch_size, observed))

    @property
    def mean(self) -> Tensor:
        """Posterior means ``E[z_i]``, ``(n, q)`` or ``(n, c, q)``."""
        self._require_posterior()
        return self.posterior.mean

    @property
    def covariance(self) -> Tensor:
        """Posterior covariance of ``vec(z_i)`` (row-major), shared by all teachers; ``(n, q, q)``,
        one per teacher, when the teachers were observed on different points."""
        self._require_posterior()
        return self.posterior.dense_covariance()

    def forward(self, x: Tensor, f: Optional[Tensor] = None, num_members: Optional[int] = None,
                observed: Optional[Tensor] = None, subsample_size: Optional[int] = None) -> Tensor:
        """Draw ``z_i`` from the posterior (the Pyro guide); same arguments as the model.

        The factors are global to the design points, so ``observed`` and
        ``subsample_size`` (the model's minibatching) do not change them: the
        posterior is the exact one from :meth:`update` over all points.
        """
        self._require_posterior()
        n = self.num_members
        if f is not None and f.shape[0] != n:
            raise ValueError(f"f has {f.shape[0]} teachers but the posterior was fitted to {n}: call guide.update(x, f) with these teachers")
        if num_members is not None and num_members != n:
            raise ValueError(f"num_members={num_members} but the posterior was fitted to {n} teachers")
        dtype = self.model.loading_head.weight.dtype
        loc = self.posterior.mean.to(dtype)
        scale_tril = torch.linalg.cholesky(self.posterior.dense_covariance()).to(dtype)
        if scale_tril.dim() == 3:  # one covariance per teacher: align with the members plate
            scale_tril = scale_tril.unsqueeze(1)
        shape = tuple(self.model.factor_shape)
        flat = dist.MultivariateNormal(loc.reshape(n, 1, -1), scale_tril=scale_tril)
        if len(shape) == 1:
            factor_dist = flat
        else:
            # vec(Z) is row-major, so reshaping the event recovers Z (c, q).
            factor_dist = dist.TransformedDistribution(flat, [ReshapeTransform((flat.event_shape[0],), shape)])
        with pyro.plate("members", n, dim=-2):
            return pyro.sample("z", factor_dist)
