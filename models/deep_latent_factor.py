r"""The deep latent factor (DLF) model as a Pyro model.

A student network -- a body ``h_θ(x) ∈ R^d`` with a mean head and a loading
head -- defines a Gaussian process (mathematics §1):

* univariate (``num_outputs=None``, ``q + 1`` head outputs):
  ``f(x) = μ_θ(x) + Φ_θ(x)^T z``, ``z ~ N(0, I_q)``, so
  ``Cov(f(x), f(x')) = Φ_θ(x)^T Φ_θ(x')``;
* with ``loading_hidden``, the loadings get a body of their own,
  ``Φ_θ(x) = W g_θ(x) + b``, and the mean reads both bodies,
  ``μ_θ(x) = a^T [h_θ(x); g_θ(x)] + c``;
* multivariate separable (``num_outputs=c``, ``covariance="separable"``,
  ``c + q`` head outputs): ``f(x) = μ_θ(x) + L Z Φ_θ(x)``,
  ``Z ~ MN_{c,q}(0, I_c, I_q)``, ``L`` lower-triangular, so
  ``Cov(f_j(x), f_k(x')) = Φ_θ(x)^T Φ_θ(x') (L L^T)_{jk}``: one class
  covariance ``L L^T`` for every input;
* multivariate full (``num_outputs=c``, ``covariance="full"``, ``c + c·q``
  head outputs): ``f(x) = μ_θ(x) + Φ_θ(x) z``, ``Φ_θ(x) ∈ R^{c×q}``,
  ``z ~ N(0, I_q)``, so ``Cov(f_j(x), f_k(x')) = Σ_a Φ_θ(x)_{ja} Φ_θ(x')_{ka}``:
  each input has its own class covariance ``Φ(x) Φ(x)^T`` (rank ≤ q), and
  inputs are correlated through the shared ``z``. It is the univariate model
  on the ``m·c`` stacked (point, class) pairs.

Each teacher is one draw observed at the design points with a small isotropic
nugget ``σ_f^2`` (the noisy DLF), which keeps the likelihood well conditioned.
With the distance feature the nugget grows with the distance from the data,
``σ_f^2 (1 + d(x))^β`` (mathematics §9.4).
"""

from __future__ import annotations

import uuid
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn

from pyro_dlf._validation import (check_batch_size, check_design_points, check_dtype, check_factor_model, check_int,
                                  check_loading_hidden, check_teacher_values, check_widths, is_integer_input)
from pyro_dlf.nn import MLP
from pyro_dlf.sufficient_statistics import (
    FactorStatistics,
    batch_statistics,
    combine,
    factor_posterior,
    log_marginal_likelihood,
)

__all__ = ["DeepLatentFactor", "ACTIVATIONS", "COVARIANCES", "DISTANCE_REFERENCE_TAIL"]

#: Activations a default body may use; a saved student records the name.
ACTIVATIONS = {name: getattr(nn, name) for name in ("ReLU", "Tanh", "GELU", "SiLU", "ELU", "Softplus", "LeakyReLU")}

#: Class-covariance structures of a multivariate model.
COVARIANCES = ("separable", "full")

#: The share of new inputs among the data whose distance d(x) may exceed ``distance_reference``, where the
#: predictive starts to keep the nugget's growth (mathematics §9.4): a 95 % reach, as a tolerance interval takes it.
DISTANCE_REFERENCE_TAIL = 0.05


class DeepLatentFactor(PyroModule):
    r"""Deep latent factor model: a Gaussian process whose mean and factor
    loadings come from one small network.

    :param in_features: input dimension for the default MLP body.
    :param num_factors: ``q``, the number of latent factors.
    :param hidden: hidden widths of the default body (``()`` gives linear heads
        on the standardized inputs).
    :param num_outputs: ``None`` for the univariate model, ``c ≥ 2`` for a
        multivariate model (e.g. ``c`` logits).
    :param covariance: multivariate only: ``"separable"`` (one class covariance
        ``L L^T`` shared by all inputs, ``c + q`` head outputs, the paper's
        model) or ``"full"`` (a ``c×q`` loading per input, so each input has
        its own class covariance; ``c + c·q`` head outputs).
    :param centered_loadings: full model only: project every loading column
        onto the classes' zero-sum subspace, ``Φ(x) ← (I − 11^T/c) Φ(x)``. With
        teacher logits centred per input the residuals lie in that subspace,
        so the projection keeps the fitted covariance off the all-ones
        direction that softmax ignores (mathematics §1).
    :param loading_hidden: hidden widths of a separate MLP body for the
        loadings (default ``None``: one body for both heads). The mean head then
        reads both bodies' features, so the parameter-expansion step of EM
        (``μ ← μ + Φ η``) stays exact; the loading head reads the loading
        body's only. With one shared body the features are shaped mostly by
        the mean, which carries most of the likelihood; a small body of its
        own lets the loadings vary off the data as a small network's do while
        the mean keeps the capacity it needs (measured in the documentation's UCI
        results, "A separate loading body against the shared body"). Default MLP body only.
    :param body: a user-supplied ``nn.Module`` mapping ``(m, *input)`` to
        ``(m, body_features)``; replaces the default MLP.
    :param body_features: output width of ``body`` (required with ``body``).
    :param activation: activation class of the default body (a name in
        :data:`ACTIVATIONS`).
    :param noise_variance: initial nugget ``σ_f^2`` (a ``PyroParam`` with a
        positive constraint).
    :param distance_anchors: default MLP body only: the loading body (or, without one,
        the shared body) also reads ``d(x)``, the distance from ``x`` to the nearest of
        this many anchor rows of the data, in units of their typical spacing
        (mathematics §9.3; set by :meth:`set_anchors`), so that ``‖Φ(x)‖`` can keep
        growing beyond the data. Default ``None``: no distance feature.
    :param name: the Pyro name (prefix of the param-store names); unique per
        instance by default so that several models can run under Pyro handlers
        in one process without sharing parameters.

    Inputs are standardized by the buffers ``input_loc``/``input_scale`` and
    head outputs rescaled by ``output_loc``/``output_scale`` (identity by
    default; :func:`pyro_dlf.distill` sets them from the design data), so
    ``μ(x) = output_loc + output_scale · head_μ(h)`` and
    ``Φ(x) = output_scale · head_Φ(h)`` are in the teachers' units.
    """

    def __init__(
        self,
        in_features: Optional[int] = None,
        num_factors: int = 10,
        hidden: Sequence[int] = (50,),
        num_outputs: Optional[int] = None,
        *,
        body: Optional[nn.Module] = None,
        body_features: Optional[int] = None,
        activation: str = "ReLU",
        noise_variance: float = 1.0,
        name: Optional[str] = None,
        covariance: str = "separable",
        centered_loadings: bool = False,
        loading_hidden: Optional[Sequence[int]] = None,
        distance_anchors: Optional[int] = None,
    ) -> None:
        # A unique Pyro name per instance: under a Pyro handler PyroModule
        # parameters live in the global param store by name, and two models
        # sharing names would silently overwrite each other's L and σ_f².
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be None (a unique name) or a non-empty str, got {name!r}")
        super().__init__(name if name is not None else f"dlf_{uuid.uuid4().hex[:8]}")
        num_factors, num_outputs, in_features, centered_loadings, distance_anchors = check_factor_model(
            num_factors, num_outputs, in_features, centered_loadings, covariance, COVARIANCES, activation, ACTIVATIONS,
            noise_variance, distance_anchors)
        if body is None:
            if in_features is None:
                raise ValueError("in_features is required when no body is given (or pass body= and body_features=)")
            hidden = check_widths(hidden, "hidden")
            # Without a loading body the shared body reads the distance feature too (mathematics §9.3).
            shared_in = in_features + (1 if distance_anchors is not None and loading_hidden is None else 0)
            body = MLP(shared_in, hidden[:-1], hidden[-1], ACTIVATIONS[activation]) if hidden else nn.Identity()
            if hidden:
                body.append(ACTIVATIONS[activation]())
            body_features = hidden[-1] if hidden else shared_in
            self.custom_body = False
        else:
            if not isinstance(body, nn.Module):
                raise TypeError(f"body must be a torch.nn.Module, got {type(body).__name__}")
            if body_features is None:
                raise ValueError("body_features: give the output width of the custom body")
            body_features = check_int(body_features, "body_features", 1, fix="the output width of the custom body")
            hidden = ()
            self.custom_body = True
        loading_hidden = check_loading_hidden(loading_hidden, self.custom_body)
        if distance_anchors is not None and self.custom_body:
            raise ValueError("distance_anchors measures distances between (m, d) rows: drop it with a custom body")
        if loading_hidden is not None:
            loading_in_features = in_features + (1 if distance_anchors is not None else 0)
            self.loading_body = MLP(loading_in_features, loading_hidden[:-1], loading_hidden[-1], ACTIVATIONS[activation])
            self.loading_body.append(ACTIVATIONS[activation]())
        self.in_features = in_features
        self.num_factors = num_factors
        self.hidden = tuple(hidden)
        self.num_outputs = num_outputs
        self.covariance_type = covariance if num_outputs is not None else None
        self.centered_loadings = bool(centered_loadings)
        self.body_features = int(body_features)
        self.activation = activation
        self.loading_hidden = loading_hidden
        self.distance_anchors = distance_anchors

        self.body = body
        self._build_heads(noise_variance)
        self._register_buffers()

    def _build_heads(self, noise_variance: float) -> None:
        """The mean and loading heads, ``σ_f²`` and (separable) the class factor ``L`` (mathematics §1)."""
        num_factors, num_outputs, loading_hidden = self.num_factors, self.num_outputs, self.loading_hidden
        # The mean reads every feature, [h; g] with a loading body; the loadings read g (else h).
        loading_in = loading_hidden[-1] if loading_hidden is not None else self.body_features
        mean_in = self.body_features + (loading_in if loading_hidden is not None else 0)
        self.mean_head = nn.Linear(mean_in, num_outputs or 1)
        loadings_out = num_factors * (num_outputs if self.covariance_type == "full" else 1)
        self.loading_head = nn.Linear(loading_in, loadings_out)
        self.noise_variance = PyroParam(torch.tensor(float(noise_variance)), constraints.positive)
        if self.covariance_type == "separable":
            # L: class-to-class factor of the separable covariance (Cholesky-type,
            # positive diagonal); only L L^T is identified.
            self.class_factor = PyroParam(torch.eye(num_outputs), constraints.lower_cholesky)

    def _register_buffers(self) -> None:
        """The standardization buffers, and the distance feature's anchors and nugget growth (mathematics §9.3–§9.4)."""
        in_features, num_outputs, distance_anchors = self.in_features, self.num_outputs, self.distance_anchors
        shape_in = (in_features,) if in_features is not None else ()
        self.register_buffer("input_loc", torch.zeros(shape_in))
        self.register_buffer("input_scale", torch.ones(shape_in))
        self.register_buffer("output_loc", torch.zeros(num_outputs or ()))
        self.register_buffer("output_scale", torch.ones(()))
        if distance_anchors is not None:
            # Data rows (standardized) and the typical distance of a new input from them (mathematics §9.3).
            self.register_buffer("anchors", torch.zeros(distance_anchors, in_features))
            self.register_buffer("distance_scale", torch.ones(()))
            # Where "beyond the data" starts for the predictive's nugget growth: the distance that all but
            # DISTANCE_REFERENCE_TAIL of new inputs among the data stay within (mathematics §9.4).
            self.register_buffer("distance_reference", torch.ones(()))
            # The nugget's growth with the distance, σ_f²(x) = σ_f² (1 + d(x))^β (mathematics §9.4): the
            # teachers' disagreement the q factors do not carry grows away from the data too.
            self.nugget_growth = PyroParam(torch.tensor(0.5), constraints.positive)

    # ------------------------------------------------------------------ shape
    @property
    def multivariate(self) -> bool:
        return self.num_outputs is not None

    @property
    def separable(self) -> bool:
        """A multivariate model with the separable class covariance ``L L^T``."""
        return self.covariance_type == "separable"

    @property
    def separable_class_factor(self) -> Optional[Tensor]:
        """``L`` of the separable model, ``None`` otherwise (what :func:`~pyro_dlf.sufficient_statistics.combine` takes)."""
        return self.class_factor if self.separable else None

    @property
    def factor_shape(self) -> torch.Size:
        """Shape of one teacher's latent factors: ``(q,)`` (univariate, full) or ``(c, q)`` (separable)."""
        q = self.num_factors
        return torch.Size((self.num_outputs, q) if self.separable else (q,))

    def config(self) -> dict:
        """Constructor arguments as plain types (for saving)."""
        return {
            "in_features": self.in_features,
            "num_factors": self.num_factors,
            "hidden": list(self.hidden),
            "num_outputs": self.num_outputs,
            "body_features": self.body_features,
            "activation": self.activation,
            "custom_body": self.custom_body,
            "covariance": self.covariance_type,
            "centered_loadings": self.centered_loadings,
            "loading_hidden": None if self.loading_hidden is None else list(self.loading_hidden),
            "distance_anchors": self.distance_anchors,
        }

    def check_inputs(self, x: Tensor, name: str = "x") -> None:
        """Raise a clear error when ``x`` does not fit the default body or the model's dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of inputs (num_points, ...), got {type(x).__name__}; convert with "
                            f"torch.as_tensor({name}, dtype=torch.float32)")
        if not self.custom_body and (x.dim() != 2 or x.shape[1] != self.in_features):
            raise ValueError(f"{name} must have shape (num_points, {self.in_features}) for this model, got {tuple(x.shape)}")
        if self.custom_body and is_integer_input(x):
            return  # token ids or codes: the body embeds them
        check_dtype(x, self, name)

    def set_noise_variance(self, value: float, floor: float = 1e-6) -> None:
        """Set ``σ_f^2``, floored at ``floor · output_scale²`` (a floor in the teachers' units)."""
        param = self.noise_variance_unconstrained
        lower = floor * float(self.output_scale) ** 2
        with torch.no_grad():
            param.copy_(torch.tensor(max(float(value), lower), dtype=param.dtype, device=param.device).log())

    # ------------------------------------------------------- the network parts
    @property
    def loading_features(self) -> slice:
        """The columns of :meth:`features` that the loading head reads (all of them without a loading body)."""
        return slice(self.body_features, None) if self.loading_hidden is not None else slice(None)

    def features(self, x: Tensor) -> Tensor:
        """Body features of standardized inputs, ``(m, d)``: ``h_θ(x)``, or ``[h_θ(x); g_θ(x)]`` with a loading body; with
        the distance feature the loading body (else the shared body) reads ``[x; d(x)]`` (mathematics §9.3)."""
        return self._features_and_distance(x)[0]

    def _features_and_distance(self, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`features` and the distance ``d(x)`` ``(m, 1)`` they read (``None`` without the feature)."""
        if is_integer_input(x):
            return self.body(x), None  # a custom body embedding ids/codes; nothing to standardize
        x = (x - self.input_loc) / self.input_scale
        if self.distance_anchors is None:
            return (self.body(x) if self.loading_hidden is None else torch.cat([self.body(x), self.loading_body(x)], -1)), None
        distance = self.data_distance(x, standardized=True)
        with_distance = torch.cat([x, distance], -1)
        if self.loading_hidden is None:
            return self.body(with_distance), distance
        return torch.cat([self.body(x), self.loading_body(with_distance)], -1), distance

    def set_anchors(self, x: Tensor, generator: Optional[torch.Generator] = None) -> None:
        r"""Set the distance feature's anchors from the data ``x`` (original units, ``(n, d)``).

        ``distance_anchors`` rows of ``x`` (all of them when there are fewer, drawn without
        replacement otherwise) are kept in standardized coordinates; the scale is the
        median distance from an anchor to its nearest other anchor (repeated rows are
        not neighbours), so the feature is about 1 at a typical new input among the data
        and grows linearly beyond them (mathematics §9.3). ``distance_reference`` is the
        ``1 − DISTANCE_REFERENCE_TAIL`` quantile of those distances in the same units (at
        least 1; 1 when no two rows differ): where the predictive starts to keep the
        nugget's growth (mathematics §9.4).
        """
        if self.distance_anchors is None:
            raise ValueError("set_anchors: this model has no distance feature (distance_anchors=None)")
        with torch.no_grad():
            xs = (x.to(self.input_loc) - self.input_loc) / self.input_scale
            k = self.distance_anchors
            rows = torch.randperm(xs.shape[0], generator=generator)[:k].to(xs.device) if xs.shape[0] > k else torch.arange(xs.shape[0], device=xs.device)
            chosen = xs[rows]
            # Exact differences, not the matrix-product shortcut, so that repeated rows give exactly 0.
            gaps = torch.cdist(chosen, chosen, compute_mode="donot_use_mm_for_euclid_dist")
            gaps.fill_diagonal_(float("inf"))
            gaps[gaps == 0] = float("inf")  # repeated rows are not neighbours
            nearest = gaps.min(1).values
            nearest = nearest[torch.isfinite(nearest)]
            scale = nearest.median() if nearest.numel() else torch.ones((), dtype=xs.dtype, device=xs.device)
            scale = scale.clamp_min(torch.finfo(xs.dtype).eps)
            # An anchor's distance to the other anchors is that of a new input drawn among the data rows.
            reach = torch.quantile(nearest / scale, 1 - DISTANCE_REFERENCE_TAIL) if nearest.numel() else torch.ones_like(scale)
            # Fewer data rows than anchors: repeat the first ones (the minimum distance is unchanged).
            self.anchors.copy_(chosen[torch.arange(k, device=xs.device) % chosen.shape[0]])
            self.distance_scale.copy_(scale)
            self.distance_reference.copy_(reach.clamp_min(1.0))

    def data_distance(self, x: Tensor, standardized: bool = False) -> Tensor:
        """Distance of each input from the nearest anchor, in units of ``distance_scale``, ``(m, 1)``."""
        if not standardized:
            x = (x - self.input_loc) / self.input_scale
        return torch.cdist(x, self.anchors).min(-1, keepdim=True).values / self.distance_scale

    def nugget_weight(self, x: Tensor) -> Optional[Tensor]:
        r"""The nugget's relative size ``w(x) = (1 + d(x))^β`` at each input, ``(m,)``, or ``None``
        without the distance feature (a constant nugget; mathematics §9.4)."""
        if self.distance_anchors is None:
            return None
        return self._weight(self.data_distance(x))

    def _weight(self, distance: Tensor) -> Tensor:
        return (1 + distance[:, 0]).pow(self.nugget_growth)

    def nugget_variance(self, x: Tensor) -> Tensor:
        r"""The nugget ``σ_f^2(x) = σ_f^2 w(x)`` at each input, ``(m,)`` (mathematics §9.4)."""
        return self._scaled_nugget(self.nugget_weight(x), x.shape[0])

    def _scaled_nugget(self, weight: Optional[Tensor], num_points: int) -> Tensor:
        """``σ_f^2 w``, or ``σ_f^2`` at each of ``num_points`` inputs for a constant nugget (``weight=None``)."""
        noise = self.noise_variance
        return noise.expand(num_points) if weight is None else noise * weight

    def nugget_growth_variance(self, x: Tensor) -> Tensor:
        r"""The nugget's growth beyond the distances of new inputs among the data,
        ``σ_f^2 ((1 + d(x))^β − (1 + d_ref)^β)_+`` with ``d_ref`` = ``distance_reference``, ``(m,)``;
        zero without the distance feature (mathematics §9.4)."""
        if self.distance_anchors is None:
            return self.noise_variance.new_zeros(x.shape[0])
        return self.growth_at_distance(self.data_distance(x)[:, 0])

    def growth_at_distance(self, distance: Tensor) -> Tensor:
        r"""The nugget's growth ``σ_f^2 ((1 + d)^β − (1 + d_ref)^β)_+`` at distances ``d`` in the units of
        :meth:`data_distance`, ``(m,)`` (mathematics §9.4)."""
        weight = self._weight(distance.unsqueeze(-1))
        return self.noise_variance * (weight - (1 + self.distance_reference).pow(self.nugget_growth)).clamp_min(0)

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and loadings from body features (in the teachers' units)."""
        mean = self.output_loc + self.output_scale * self.mean_head(h)
        if not self.multivariate:
            mean = mean.squeeze(-1)
        loading = self.output_scale * self.loading_head(h[..., self.loading_features])
        if self.covariance_type == "full":
            loading = loading.unflatten(-1, (self.num_outputs, self.num_factors))
            if self.centered_loadings:
                loading = loading - loading.mean(-2, keepdim=True)
        return mean, loading

    def mean_and_loading(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``μ_θ(x)`` (``(m,)`` or ``(m, c)``) and ``Φ_θ(x)`` (``(m, q)``, full model ``(m, c, q)``) in one body pass."""
        return self.mean_loading_and_weight(x)[:2]

    def mean_loading_and_weight(self, x: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """:meth:`mean_and_loading` and :meth:`nugget_weight` in one pass (the distance ``d(x)`` is measured once)."""
        try:
            h, distance = self._features_and_distance(x)
        except (RuntimeError, AttributeError, TypeError):
            # Diagnosed only on failure, so the training loops pay nothing: name the input and its fix.
            self.check_inputs(x, "x")
            raise
        return (*self.heads(h), None if distance is None else self._weight(distance))

    def mean(self, x: Tensor) -> Tensor:
        """The mean function ``μ_θ(x)``."""
        return self.mean_and_loading(x)[0]

    def loading(self, x: Tensor) -> Tensor:
        """The factor loadings ``Φ_θ(x)``, ``(m, q)`` (full model ``(m, c, q)``)."""
        return self.mean_and_loading(x)[1]

    def class_covariance(self, x: Optional[Tensor] = None) -> Optional[Tensor]:
        """The class covariance of the noise-free process: ``L L^T`` (separable;
        with ``x``, scaled by ``‖Φ(x)‖²`` per input, ``(m, c, c)``), ``Φ(x) Φ(x)^T``
        per input (full; needs ``x``), or ``None`` (univariate)."""
        if not self.multivariate:
            return None
        if self.separable:
            L = self.class_factor
            shared = L @ L.T
            return shared if x is None else self.loading(x).pow(2).sum(-1)[:, None, None] * shared
        if x is None:
            raise ValueError("x: the full model's class covariance depends on the input; call class_covariance(x)")
        phi = self.loading(x)
        return phi @ phi.mT

    def function_variance(self, x: Tensor) -> Tensor:
        r"""Epistemic variance of each output at ``x``: ``‖Φ(x)‖²`` (``(m,)``),
        separable ``diag(L L^T) ‖Φ(x)‖²``, full ``Σ_a Φ(x)_{ka}^2`` (``(m, c)``)."""
        phi = self.loading(x)
        if self.separable:
            L = self.class_factor
            return phi.pow(2).sum(-1, keepdim=True) * L.pow(2).sum(-1)
        return phi.pow(2).sum(-1)

    def covariance(self, x1: Tensor, x2: Optional[Tensor] = None):
        r"""Function-space covariance of the noise-free process.

        Univariate: the ``(m1, m2)`` matrix ``Φ(x1) Φ(x2)^T``.
        Separable: the pair ``(Φ(x1) Φ(x2)^T, L L^T)`` of Kronecker factors;
        ``Cov(f_j(x), f_k(x')) = K_x[x, x'] · K_c[j, k]``, i.e. the covariance
        of the column-stacked ``vec(F)`` is ``K_c ⊗ K_x``.
        Full: the ``(m1·c, m2·c)`` matrix of the (point, class) pairs with the
        class index fastest (row ``j·c + k`` is class ``k`` at ``x_j``, GPyTorch's
        interleaved multitask order): ``Φ_stacked(x1) Φ_stacked(x2)^T``.
        """
        for name, value in (("x1", x1), ("x2", x2)):
            if value is not None or name == "x1":
                value = check_design_points(value, name, integer_ok=self.custom_body, fix="covariances need finite inputs")
                self.check_inputs(value, name)
        phi1 = self.loading(x1)
        phi2 = phi1 if x2 is None else self.loading(x2)
        if self.covariance_type == "full":
            return phi1.flatten(0, 1) @ phi2.flatten(0, 1).T
        k_x = phi1 @ phi2.T
        return (k_x, self.class_covariance()) if self.multivariate else k_x

    # ------------------------------------------------------------ the algebra
    def statistics(self, x: Tensor, f: Tensor, batch_size: Optional[int] = None, observed: Optional[Tensor] = None) -> FactorStatistics:
        """Sufficient statistics over all design points, streamed in batches (no gradient).

        ``observed`` (``(n, m)`` booleans) restricts each teacher to its observed points.
        """
        check_batch_size(batch_size)
        m = x.shape[0]
        step = m if batch_size is None else batch_size
        total = None
        with torch.no_grad():
            for start in range(0, m, step):
                mean, loading, weight = self.mean_loading_and_weight(x[start:start + step])
                mask = None if observed is None else observed[:, start:start + step]
                part = batch_statistics(mean, loading, f[:, start:start + step], observed=mask, weight=weight)
                total = part if total is None else total + part
        return total

    def log_marginal_likelihood(self, x: Tensor, f: Tensor, batch_size: Optional[int] = None,
                                observed: Optional[Tensor] = None) -> Tensor:
        r"""Exact ``log p(f_i)`` for each teacher, shape ``(n,)`` (float64).

        Uses the determinant lemma and Woodbury identity (mathematics §3): cost
        ``O(m q^2 + q^3 + m q n)``, memory independent of ``m`` when
        ``batch_size`` is given; no ``m×m`` matrix is ever formed. With
        ``observed`` (``(n, m)`` booleans) teacher ``i``'s density is that of its
        observed values only (mathematics §4, teachers observed on different points).
        """
        x = check_design_points(x, "x", integer_ok=self.custom_body)
        self.check_inputs(x, "x")
        f = check_teacher_values(f, x, self.num_outputs, "f", min_members=1, observed=observed)
        check_dtype(f, self, "f")
        stats = self.statistics(x, f, batch_size, observed)
        L = self.class_factor.detach() if self.separable else None
        noise = self.noise_variance.detach()
        posterior = factor_posterior(stats, noise, L)
        return log_marginal_likelihood(stats, posterior, noise, L)

    # -------------------------------------------------------------- sampling
    def sample(self, x: Tensor, num_samples: int = 1, include_noise: bool = False) -> Tensor:
        """Draws of the process at ``x``: ``(S, m)`` or ``(S, m, c)``.

        The body runs once; each draw costs one ``q``-vector product per input.
        ``include_noise`` adds the nugget (a draw of a teacher, not of the
        smooth process).
        """
        x = check_design_points(x, "x", integer_ok=self.custom_body)
        self.check_inputs(x, "x")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        with torch.no_grad():
            mean, loading = self.mean_and_loading(x)
            z = torch.randn((num_samples, 1) + tuple(self.factor_shape), dtype=loading.dtype, device=loading.device)
            values = combine(mean, loading, z, self.separable_class_factor)  # z (S, 1, ...) broadcasts over inputs
            if include_noise:
                scale = self.nugget_variance(x).sqrt()
                values = values + (scale.unsqueeze(-1) if self.multivariate else scale) * torch.randn_like(values)
        return values

    # ------------------------------------------------------------ Pyro model
    def forward(self, x: Tensor, f: Optional[Tensor] = None, num_members: Optional[int] = None,
                observed: Optional[Tensor] = None, subsample_size: Optional[int] = None) -> Tensor:
        """The generative model of the teachers (a Pyro model).

        Sites: ``z`` -- latent factors, one per teacher, in the plate
        ``members`` (dim -2); ``function`` -- the noise-free draw at ``x``
        (deterministic); ``f`` -- the teacher values at the design points,
        plate ``design_points`` (dim -1), observed when ``f`` is given.

        :param x: design points ``(m, ...)``.
        :param f: teacher values ``(n, m)`` or ``(n, m, c)``, or ``None`` to sample.
        :param num_members: number of teachers to draw when ``f`` is ``None`` (default 1).
        :param observed: ``(n, m)`` booleans: where each teacher is observed; the
            site ``f`` is masked elsewhere (its values there are ignored).
        :param subsample_size: draw this many design points per call (the plate
            ``design_points`` subsamples and Pyro scales the likelihood by
            ``m / subsample_size``), so :class:`pyro.infer.SVI` can take
            minibatch steps; the network then runs on the subsample only.
        :returns: the teacher values (observed or sampled) at the (subsampled) points.
        """
        self.check_inputs(x, "x")
        m = x.shape[0]
        if f is not None:
            f = check_teacher_values(f, x, self.num_outputs, "f", min_members=1, observed=observed)
            n = f.shape[0]
            if observed is not None:
                # Unobserved entries (possibly NaN) must not reach the likelihood's log-density.
                keep = observed if f.dim() == 2 else observed.unsqueeze(-1)
                f = torch.where(keep, f, torch.zeros_like(f))
        else:
            n = 1 if num_members is None else int(num_members)
        L = self.separable_class_factor
        event = len(self.factor_shape)
        with pyro.plate("members", n, dim=-2):
            z = pyro.sample("z", dist.Normal(self.noise_variance.new_zeros(()), 1.0).expand(self.factor_shape).to_event(event))
            with pyro.plate("design_points", m, subsample_size=subsample_size, dim=-1) as idx:
                if subsample_size is not None:
                    x = x[idx]
                    f = None if f is None else f[:, idx]
                    observed = None if observed is None else observed[:, idx]
                mean, loading, weight = self.mean_loading_and_weight(x)
                function = combine(mean, loading, z, L)
                function = pyro.deterministic("function", function, event_dim=1 if self.multivariate else 0)
                noise_scale = self._scaled_nugget(weight, x.shape[0]).sqrt()
                likelihood = dist.Normal(function, noise_scale.unsqueeze(-1) if self.multivariate else noise_scale)
                if self.multivariate:
                    likelihood = likelihood.to_event(1)
                if observed is not None:
                    likelihood = likelihood.mask(observed)
                return pyro.sample("f", likelihood, obs=f)
