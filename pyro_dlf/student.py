r"""The distilled student: a deep latent factor process as a Pyro posterior predictive (mathematics §6)."""

from __future__ import annotations

import contextlib
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import IO, TYPE_CHECKING, Optional, Union

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_dlf._version import __version__
from pyro_dlf._validation import (PREDICT_FIX, cast_inputs, check_batch_size, check_design_points, check_finite_outputs, check_flag,
                                  check_int, check_map_location, check_memory, check_noise_law, check_noise_prior, check_path,
                                  check_targets)
from pyro_dlf.likelihoods import FactorInverseGammaNoise, HeteroscedasticNoise, InverseGammaNoise, MixtureParts, NoiseLaw
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.noise import HeavyTailWarning
from pyro_dlf.quadrature import GaussianRule, gaussian_rule, integrate_softmax, softmax_summary
from pyro_dlf.student_file import (FORMAT_NAME, FORMAT_VERSION, body_record, build_model, build_noise_model, read_payload,
                                   write_payload)
from pyro_dlf.sufficient_statistics import combine

if TYPE_CHECKING:  # the records of a fit; those modules do not import the student
    from pyro_dlf.calibration import SpreadCalibration
    from pyro_dlf.design.choice import DesignChoice
    from pyro_dlf.noise import FactorNoiseFit
    from pyro_dlf.selection import BodySelection, FactorChoice

__all__ = ["Student", "RegressionPrediction", "ClassificationPrediction", "FORMAT_VERSION"]


@dataclass
class RegressionPrediction:
    """Predictive summary at ``m`` inputs (original units).

    :ivar mean: ``μ(x)``, ``(m,)``.
    :ivar epistemic_variance: ``‖Φ(x)‖²``, the distilled ensemble spread, ``(m,)``.
    :ivar aleatoric_variance: ``E[σ²] = b/(a − 1)`` of the noise prior, ``(m,)``
        (heteroscedastic teachers: ``E[σ²(x)]`` at each input).
    :ivar function_samples: draws ``f^{(s)}(x)`` of the distilled process, ``(S, m)``.
    :ivar noise_variance_samples: the paired draws ``σ²_{(s)}``, ``(S,)``
        (heteroscedastic: ``σ²_{(s)}(x)``, ``(S, m)``).
    """

    mean: Tensor
    epistemic_variance: Tensor
    aleatoric_variance: Tensor
    function_samples: Optional[Tensor]
    noise_variance_samples: Optional[Tensor]

    @property
    def total_variance(self) -> Tensor:
        return self.epistemic_variance + self.aleatoric_variance

    def sample_observations(self, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draws ``y^{(s)} ~ N(f^{(s)}(x), σ²_{(s)})``, shaped like :attr:`function_samples`.

        :param generator: the noise source (CPU generator; default torch's global one).
        """
        if self.function_samples is None:
            raise ValueError("predict(..., return_samples=True) is needed to draw observations")
        function, scale = self.function_samples, self.noise_variance_samples.sqrt()
        if function.dim() == 3:  # several outputs: one σ² per draw (S,) or one per output (S, d)
            scale = scale.reshape(scale.shape[0], 1, -1)
        elif scale.dim() == 1:  # one σ² per draw; heteroscedastic draws are (S, m) already
            scale = scale.unsqueeze(-1)
        noise = torch.randn(function.shape, generator=generator, dtype=function.dtype).to(function.device)
        return function + scale * noise


@dataclass
class ClassificationPrediction:
    """Predictive summary at ``m`` inputs for ``c`` classes.

    :ivar probs: ``(1/S) Σ_s softmax(f^{(s)}(x))``, ``(m, c)``.
    :ivar total_entropy: entropy of ``probs``, ``(m,)``.
    :ivar expected_entropy: mean entropy of the per-sample softmax (aleatoric), ``(m,)``.
    :ivar mutual_information: total − expected (epistemic), ``(m,)``.
    :ivar logit_samples: draws ``f^{(s)}(x)``, ``(S, m, c)`` (only if requested).
    """

    probs: Tensor
    total_entropy: Tensor
    expected_entropy: Tensor
    mutual_information: Tensor
    logit_samples: Optional[Tensor]


def _law_arguments(law: NoiseLaw) -> tuple:
    """``(a, b, heteroscedastic model, β, Ĝ)`` of a noise law, for the student's checks."""
    if isinstance(law, HeteroscedasticNoise):
        return None, None, law, 0.0, None
    if isinstance(law, FactorInverseGammaNoise):
        return law.concentration, law.rate, None, law.exponent, law.gram
    if isinstance(law, InverseGammaNoise):
        return law.concentration, law.rate, None, 0.0, None
    raise TypeError(f"noise_law must be one of the laws of pyro_dlf.likelihoods, got {type(law).__name__}")


class Student(PyroModule):
    r"""A distilled student: the posterior predictive of a fitted DLF.

    ``forward(x, y=None)`` is a Pyro model, so
    ``pyro.infer.Predictive(student, num_samples=S)(x)`` draws from the
    distilled process:

    * ``z ~ N(0, I)`` (one per predictive draw; site ``z``),
    * ``function = μ(x) + Φ(x)^T z`` (separable ``μ(x) + L Z Φ(x)``, full
      ``μ(x) + Φ(x) z`` with ``Φ(x) ∈ R^{c×q}``; site ``function``),
    * regression: ``noise_variance ~ IG(a, b)`` (the fitted law of the teachers'
      noise variances) and ``y ~ N(function, noise_variance)``; with a
      factor-dependent noise law (:meth:`set_noise_law`, ``β ≠ 0``) the rate is
      ``b · u(z)^β``, ``u(z) = z^T \hat G z``: a draw whose function strays
      further from the mean draws a larger (``β > 0``) noise variance, as the
      teachers that stray further are noisier (:func:`pyro_dlf.noise.fit_factor_inverse_gamma`); heteroscedastic
      teachers (``noise_model``, :mod:`pyro_dlf.likelihoods.heteroscedastic`):
      ``noise_level ~ N(0, 1)`` and ``noise_variance(x) = exp(g(x) + τ · noise_level)``;
      classification: ``y ~ Categorical(logits=function)``; both in the plate
      ``data`` (dim -1).

    The predictive draws follow mathematics §6 and leave out the nugget ``σ_f²``: it is
    the model's allowance for teacher variation outside the ``q`` factors, not
    part of the smooth process. A nugget that grows with the distance from the
    data, ``σ_f² (1 + d(x))^β``, is a different matter: its growth beyond the
    distances new inputs among the data have (``d_ref``, their 95 % reach) is the
    teachers' disagreement beyond the data, so the draws keep
    ``σ_f² ((1 + d(x))^β − (1 + d_ref)^β)_+`` (site ``nugget``, mathematics §9.4).

    Under a Pyro handler a student registers its parameters in Pyro's global
    param store under a name unique to the instance, so several students can
    be used side by side in one process.

    **Frozen by default (a prior, not a trainee).** A distilled student is the
    ensemble's knowledge; used inside your own model and fitted with
    :class:`pyro.infer.SVI` (or inside a GPyTorch model) it must not be
    retrained by accident. So its network's parameters have
    ``requires_grad=False`` and :meth:`forward` hides their param sites
    (:func:`pyro.poutine.block`): no optimizer -- SVI's, or a ``torch.optim``
    built from a wrapping module's ``parameters()`` -- can change them.
    Fine-tuning is the explicit opt-in :meth:`unfreeze` (or ``trainable=True``).

    **Composing.** ``prefix`` is put before every site and plate name
    (``prefix + "z"``, ``prefix + "function"``, ``prefix + "y"``,
    ``prefix + "data"``), so the student can sit in a model that has its own
    ``y``; :meth:`function_dist` gives the distilled process at ``x`` as one
    :class:`~pyro.distributions.LowRankMultivariateNormal`, to use as a prior
    in any model (e.g. ``f = pyro.sample("f", student.function_dist(x))``).

    :param dlf: the fitted model.
    :param task: ``"regression"`` (univariate DLF) or ``"classification"`` (multivariate).
    :param noise_concentration: ``a > 0`` of the regression noise prior ``IG(a, b)``
        (:func:`pyro_dlf.noise.fit_inverse_gamma` fits ``a, b``). The predictive's aleatoric
        variance is its mean ``E[σ²] = b/(a − 1)``: for ``a ≤ 1`` there is none, the student
        warns (:class:`~pyro_dlf.noise.HeavyTailWarning`) and reports it as infinite.
        A multi-output regression takes one number or one per output.
    :param noise_rate: ``b > 0`` of the regression noise prior.
    :param noise_factor_exponent: ``β`` of a factor-dependent noise law (default 0: the
        i.i.d. inverse gamma of mathematics §2.4); needs ``noise_factor_gram``.
    :param noise_factor_gram: ``\hat G`` (``q×q``, trace 1) of that law.
    :param noise_model: regression with heteroscedastic teachers: the fitted
        :class:`~pyro_dlf.likelihoods.heteroscedastic.HeteroscedasticNoise` (replaces ``a, b``).
    :param noise_law: the fitted noise law as one object (:mod:`pyro_dlf.likelihoods`), in place of the
        arguments above; :attr:`noise_law` holds it either way.
    :param include_nugget: add the nugget ``σ_f²`` to the predictive draws
        (``function = μ + Φ^T z + v``, ``v ~ N(0, σ_f² I)``), i.e. predict a new
        *teacher* rather than the smooth process. The default follows mathematics §6
        (the smooth process); the nugget holds teacher variation outside the
        ``q`` factors, which can be a large share of the ensemble's spread on
        points the teachers were trained on. A nugget that grows with the
        distance from the data (mathematics §9.4) keeps its growth
        ``σ_f² ((1 + d(x))^β − (1 + d_ref)^β)_+`` in the predictive either way (site ``nugget``).
    :param centered_logits: classification: the teachers' logits were centred
        per input before fitting, so the student's logits are centred too
        (compare them with centred teacher logits; probabilities are unaffected).
    :param trainable: leave the network trainable (fine-tuning); default frozen.
    :param prefix: put before every site and plate name (default none).

    **Records of the fit.** Every student carries these fields; :func:`pyro_dlf.distill`
    fills them, a student built by hand, streamed or loaded from a file has the empty
    values (``[]`` or ``None``):

    :ivar history: the negative log-likelihood per value over the EM iterations.
    :ivar body_selection: the held-out comparison of candidate bodies
        (:class:`~pyro_dlf.selection.BodySelection`), or ``None``.
    :ivar num_factors_choice: how ``num_factors="auto"`` chose ``q``
        (:class:`~pyro_dlf.selection.FactorChoice`), or ``None``.
    :ivar noise_fit: the noise law given the factors and its test
        (:class:`~pyro_dlf.noise.FactorNoiseFit`), or ``None``.
    :ivar spread_calibration: the rescaling of the loadings to the teachers' held-out
        spread (:class:`~pyro_dlf.calibration.SpreadCalibration`), or ``None``.
    :ivar design_choice: the design points of the fit and why
        (:class:`~pyro_dlf.design.choice.DesignChoice`), or ``None``.
    """

    history: list[float]
    body_selection: Optional["BodySelection"]
    num_factors_choice: Optional["FactorChoice"]
    noise_fit: Optional["FactorNoiseFit"]
    spread_calibration: Optional["SpreadCalibration"]
    design_choice: Optional["DesignChoice"]

    def __init__(self, dlf: DeepLatentFactor, task: str, noise_concentration: Optional[float] = None, noise_rate: Optional[float] = None,
                 centered_logits: bool = False, include_nugget: bool = False, *, trainable: bool = False, prefix: str = "",
                 noise_model: Optional[HeteroscedasticNoise] = None, noise_factor_exponent: float = 0.0,
                 noise_factor_gram: Optional[Tensor] = None, noise_law: Optional[NoiseLaw] = None) -> None:
        # Unique Pyro name: see DeepLatentFactor (param-store names never collide).
        super().__init__(f"student_{uuid.uuid4().hex[:8]}")
        if noise_law is not None:
            # A fitted law stands for the arguments it replaces, and is checked as they are.
            if task != "regression":
                raise ValueError("noise_law is for regression students; drop it for classification")
            if noise_concentration is not None or noise_rate is not None or noise_model is not None \
                    or noise_factor_exponent != 0 or noise_factor_gram is not None:
                raise ValueError("noise_law replaces noise_concentration, noise_rate, noise_model, noise_factor_exponent and "
                                 "noise_factor_gram; pass the law or those arguments")
            noise_concentration, noise_rate, noise_model, noise_factor_exponent, noise_factor_gram = _law_arguments(noise_law)
        if not isinstance(dlf, DeepLatentFactor):
            raise TypeError(f"dlf must be a fitted pyro_dlf.models.DeepLatentFactor (e.g. pyro_dlf.distill(...).dlf), "
                            f"got {type(dlf).__name__}")
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        given = noise_concentration is not None or noise_rate is not None
        if task == "regression":
            if noise_model is not None:
                if not isinstance(noise_model, HeteroscedasticNoise):
                    raise TypeError(f"noise_model must be a pyro_dlf.likelihoods.heteroscedastic.HeteroscedasticNoise, got {type(noise_model).__name__}")
                if dlf.multivariate:
                    raise ValueError("noise_model: heteroscedastic noise is for one regression output")
                if given:
                    raise ValueError("noise_model replaces noise_concentration and noise_rate; pass one or the other")
            else:
                # One inverse gamma (floats), or one per output of a multi-output regression (tuples).
                noise_concentration, noise_rate = check_noise_prior(noise_concentration, noise_rate,
                                                                    dlf.num_outputs if dlf.multivariate else None)
                shapes = noise_concentration if isinstance(noise_concentration, tuple) else (noise_concentration,)
                if min(shapes) <= 1:
                    warnings.warn(f"noise_concentration a = {min(shapes):.3g} <= 1: the noise prior IG(a, b) has no mean, so the "
                                  "aleatoric variance E[σ²] is reported as infinite (the predictive's draws and densities stay proper)",
                                  HeavyTailWarning, stacklevel=2)
        elif noise_model is not None:
            raise ValueError("noise_model is for regression students")
        elif given:
            raise ValueError("noise_concentration and noise_rate are for regression students; drop them for classification")
        elif not dlf.multivariate:
            raise ValueError("task='classification' needs a multivariate DeepLatentFactor (num_outputs=c)")
        self.dlf = dlf
        self.task = task
        # The noise law (pyro_dlf.likelihoods): every use of the noise goes through it; None for classification.
        self.noise_law: Optional[NoiseLaw] = (noise_model if noise_model is not None else None if task != "regression"
                                              else InverseGammaNoise(noise_concentration, noise_rate))
        if isinstance(noise_factor_exponent, Real) and not isinstance(noise_factor_exponent, bool) \
                and noise_factor_exponent == 0 and noise_factor_gram is None:
            pass  # the i.i.d. inverse gamma
        elif task != "regression" or noise_model is not None or dlf.multivariate:
            raise ValueError("noise_factor_exponent and noise_factor_gram are for one-output regression students with an "
                             "inverse-gamma noise prior; drop them")
        elif isinstance(noise_factor_exponent, Real) and noise_factor_exponent == 0:
            raise ValueError("noise_factor_gram is used only with a nonzero noise_factor_exponent; drop it or give the exponent")
        else:
            self._set_noise_law(noise_concentration, noise_rate, noise_factor_exponent, noise_factor_gram, prefix="",
                                names=("noise_concentration", "noise_rate", "noise_factor_exponent", "noise_factor_gram"))
        self.centered_logits = check_flag(centered_logits, "centered_logits")
        self.include_nugget = check_flag(include_nugget, "include_nugget")
        check_flag(trainable, "trainable")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str such as 'dlf.', got {type(prefix).__name__}")
        self.prefix = prefix
        self.history, self.body_selection, self.num_factors_choice, self.noise_fit, self.spread_calibration = [], None, None, None, None
        self.design_choice = None
        if trainable:
            self.unfreeze()
        else:
            self.freeze()

    # ------------------------------------------------------------ the noise law's parameters
    @property
    def noise_model(self) -> Optional[HeteroscedasticNoise]:
        """The heteroscedastic noise law (:class:`~pyro_dlf.likelihoods.HeteroscedasticNoise`), or ``None``."""
        return self.noise_law if isinstance(self.noise_law, HeteroscedasticNoise) else None

    @property
    def noise_concentration(self):
        """``a`` of an inverse-gamma noise law (a tuple with one law per output), else ``None``."""
        return getattr(self.noise_law, "concentration", None)

    @property
    def noise_rate(self):
        """``b`` of an inverse-gamma noise law (a tuple with one law per output), else ``None``."""
        return getattr(self.noise_law, "rate", None)

    @property
    def noise_factor_exponent(self) -> float:
        """``β`` of noise that follows the factors (0: the i.i.d. law)."""
        return getattr(self.noise_law, "exponent", 0.0)

    @property
    def noise_factor_gram(self) -> Optional[Tensor]:
        r"""``\hat G`` of noise that follows the factors, else ``None``."""
        return getattr(self.noise_law, "gram", None)

    def _hidden_params(self):
        """A context that hides a frozen student's weights from Pyro's param sites."""
        return poutine.block(hide_types=["param"]) if not self._trainable else contextlib.nullcontext()

    # ------------------------------------------------------------ training
    @property
    def trainable(self) -> bool:
        """Whether the network's parameters take gradients and show as param sites (see :meth:`unfreeze`)."""
        return self._trainable

    def freeze(self) -> "Student":
        """Stop every parameter from training: ``requires_grad=False``, no param sites under Pyro
        handlers, and the network in eval mode (a custom body's dropout off)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self._trainable = False
        return self

    def unfreeze(self) -> "Student":
        """Opt in to fine-tuning: parameters take gradients and appear as Pyro param sites, so SVI
        (or EM) on a model that uses the student updates them."""
        for p in self.parameters():
            p.requires_grad_(True)
        self.train()
        self._trainable = True
        return self

    def _network(self, x: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
        """``μ(x)``, ``Φ(x)``, ``L`` (separable) and ``σ_f²``; param sites hidden while frozen."""
        dlf = self.dlf
        with poutine.block(hide_types=["param"]) if not self._trainable else contextlib.nullcontext():
            mean, loading = dlf.mean_and_loading(x)
            return mean, loading, dlf.separable_class_factor, dlf.noise_variance

    def function_dist(self, x: Tensor, include_nugget: bool = True) -> dist.LowRankMultivariateNormal:
        r"""The distilled process at ``x`` as one Gaussian: ``N(μ(x), W W^T + D)`` (mathematics §1).

        Regression: ``W = Φ(x)`` (``m×q``). Classification: the ``m·c``
        (point, class) pairs with the class index fastest (the event is the
        flattened ``(m, c)`` logits): full ``W`` the stacked ``Φ(x)``
        (``mc×q``); separable ``W = Φ(x) ⊗ L`` (``mc×cq``, since
        ``L Z Φ(x) = (Φ(x)^T ⊗ L) vec Z``).

        ``D = diag σ_f²(x)`` by default (``σ_f² I`` unless the nugget grows with the
        distance from the data, mathematics §9.4): the fitted model's own law of a new teacher's
        function at ``x`` (the marginal the teachers were fitted under), which is
        what a prior on ``f`` in a model needs -- a proper density on ``R^m``
        whose posterior geometry NUTS and SVI handle. With
        ``include_nugget=False`` it is the smooth process of the predictive
        (mathematics §6): rank ``≤ q`` plus the nugget's growth beyond the data (zero
        with a constant nugget), so ``D`` adds a jitter of ``10⁻⁶ σ_f²`` (a
        :class:`~pyro.distributions.LowRankMultivariateNormal` needs a positive
        diagonal); that law is nearly singular in ``R^m`` -- fine for drawing,
        ill-conditioned as a prior for inference (use the factors themselves
        then: ``student(x)`` with a :attr:`prefix` samples ``z`` and
        ``function = μ + Φ^T z``).

        :param x: inputs, ``(m, ...)``.
        :param include_nugget: add ``σ_f² I`` (default) or only the jitter.
        """
        include_nugget = check_flag(include_nugget, "include_nugget")
        x = check_design_points(x, "x", integer_ok=self.dlf.custom_body, fix=PREDICT_FIX)
        self.dlf.check_inputs(x, "x")
        mean, loading, L, noise = self._network(x)
        nugget = self._nugget(x, include_nugget).to(mean)
        if self.dlf.multivariate:
            loading = torch.kron(loading, L) if L is not None else loading.flatten(0, 1)
            nugget = nugget.expand(mean.shape).flatten()
            mean = mean.flatten()
        diagonal = (nugget + (0 if include_nugget else 1e-6 * noise)).expand(mean.shape)
        return dist.LowRankMultivariateNormal(mean, loading, diagonal)

    # ---------------------------------------------------------------- Pyro
    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The posterior predictive as a Pyro model (see the class docstring)."""
        dlf, name = self.dlf, self.prefix
        x = check_design_points(x, "x", integer_ok=dlf.custom_body, fix=PREDICT_FIX)
        dlf.check_inputs(x, "x")
        if y is not None:
            shape = (x.shape[0],) + ((dlf.num_outputs,) if dlf.multivariate and self.task == "regression" else ())
            y = check_targets(y, shape, dlf.num_outputs if self.task == "classification" else None)
        mean, loading, L, _ = self._network(x)
        z = pyro.sample(name + "z", dist.Normal(loading.new_zeros(()), 1.0).expand(dlf.factor_shape).to_event(len(dlf.factor_shape)))
        law = self.noise_law
        state = None if law is None else law.sample_sites(name, x, z, loading, dlf.multivariate, self._hidden_params)
        with pyro.plate(name + "data", x.shape[0], dim=-1):
            noise_variance = None if law is None else law.plate_variance(name, state)
            function = combine(mean, loading, z, L)
            if self.include_nugget or dlf.distance_anchors is not None:
                # The nugget, or its growth beyond the data (zero where d(x) ≤ d_ref: a tiny floor keeps the scale valid).
                scale = self._nugget(x).to(function).sqrt().clamp_min(torch.finfo(function.dtype).tiny)
                nugget = dist.Normal(torch.zeros_like(function), scale.expand_as(function) if dlf.multivariate else scale)
                function = function + pyro.sample(name + "nugget", nugget.to_event(1) if dlf.multivariate else nugget)
            function = pyro.deterministic(name + "function", function, event_dim=1 if dlf.multivariate else 0)
            if self.task == "regression":
                likelihood = dist.Normal(function, noise_variance.sqrt())
                return pyro.sample(name + "y", likelihood.to_event(1) if dlf.multivariate else likelihood, obs=y)
            return pyro.sample(name + "y", dist.Categorical(logits=function), obs=y)

    def _nugget(self, x: Tensor, include_nugget: Optional[bool] = None) -> Tensor:
        r"""The part of the nugget the predictive keeps at ``x``, ``(m,)`` (``(m, 1)`` for several outputs):
        ``σ_f²(x)`` when it includes the nugget, else its growth beyond the data ``σ_f² (w(x) − (1 + d_ref)^β)_+``,
        zero for a constant nugget (mathematics §6, §9.4)."""
        dlf = self.dlf
        include = self.include_nugget if include_nugget is None else include_nugget
        with poutine.block(hide_types=["param"]) if not self._trainable else contextlib.nullcontext():
            part = dlf.nugget_variance(x) if include else dlf.nugget_growth_variance(x)
        return part.unsqueeze(-1) if dlf.multivariate else part

    def _add_nugget(self, values: Tensor, x: Tensor) -> Tensor:
        if not self.include_nugget and self.dlf.distance_anchors is None:
            return values
        return values + self._nugget(x).to(values).sqrt() * torch.randn_like(values)

    def set_noise_law(self, concentration: float, rate: float, exponent: float = 0.0, gram: Optional[Tensor] = None) -> "Student":
        r"""Replace the regression noise law by ``IG(a, b · u(z)^β)``, ``u(z) = z^T \hat G z``.

        ``β = 0`` (and no ``gram``) is the i.i.d. law ``IG(a, b)``. Fit ``(a, b, β, \hat G)``
        with :func:`pyro_dlf.noise.fit_factor_inverse_gamma` (``distill`` does, see its
        ``noise_given_factors``). One-output regression students with a scalar inverse gamma only.
        ``a, b > 0``; the aleatoric variance ``E_z[b u(z)^β] / (a − 1)`` is infinite for ``a ≤ 1``.
        """
        if self.task != "regression" or self.noise_model is not None or self.dlf.multivariate:
            raise ValueError("set_noise_law: a noise law is for one-output regression students with an inverse-gamma noise prior")
        return self._set_noise_law(concentration, rate, exponent, gram)

    def _set_noise_law(self, concentration, rate, exponent, gram, prefix: str = "set_noise_law: ",
                       names: tuple[str, str, str, str] = ("concentration", "rate", "exponent", "gram")) -> "Student":
        """:meth:`set_noise_law` after its task check; errors name the caller's arguments (``prefix``, ``names``)."""
        a, b, exponent, g = check_noise_law(concentration, rate, exponent, gram, self.dlf.num_factors, prefix=prefix, names=names)
        if g is None:
            self.noise_law = InverseGammaNoise(a, b)
            return self
        weight = self.dlf.loading_head.weight
        law = FactorInverseGammaNoise(a, b, exponent, g.to(dtype=weight.dtype, device=weight.device))
        # The rate's average b E_z[u(z)^β] must be a positive number: an extreme β overflows it.
        average = FactorInverseGammaNoise(a, b, exponent, g).average_rate(weight.detach().cpu())
        if not (0 < b * average < math.inf):
            raise ValueError(f"{prefix}{names[2]} {exponent:g} makes the noise law's average rate b E_z[u(z)^β] "
                             f"{'infinite' if b * average >= math.inf or math.isnan(average) else 'zero'}; fit the law with "
                             "pyro_dlf.noise.fit_factor_inverse_gamma")
        self.noise_law = law
        return self

    # ------------------------------------------------------------ summaries
    @property
    def aleatoric_variance(self):
        """``E[σ²] = b/(a − 1)`` (infinite when ``a ≤ 1``); a tuple, one per output, for a
        multi-output regression; heteroscedastic students vary with x (see :meth:`predict`)."""
        if self.noise_law is None:
            raise ValueError("aleatoric_variance is for regression students")
        if self.noise_law.per_input:
            raise ValueError("aleatoric_variance: this student's noise depends on x; read predict(x).aleatoric_variance")
        return self.noise_law.constant_mean(self.dlf.loading_head.weight)

    def predict(self, x: Tensor, num_samples: Optional[int] = None, *, batch_size: int = 4096,
                return_samples: bool = False, max_nodes: int = 512) -> Union[RegressionPrediction, ClassificationPrediction]:
        """Predictive summaries at ``x``; the body runs once per input, in batches of ``batch_size``.

        Regression summaries are closed form (mathematics §6.1). Classification summaries
        integrate over the factors with a fixed rule of at most ``max_nodes`` nodes
        (:func:`pyro_dlf.quadrature.gaussian_rule`, mathematics §6.1) unless ``num_samples``
        asks for Monte Carlo draws.

        :param x: inputs ``(m, ...)``, finite, and small enough that the network's
            outputs do not overflow the student's dtype (else a :class:`ValueError`).
        :param num_samples: ``S`` draws of ``z`` (a positive int), shared across inputs so the
            function draws are coherent over ``x``. ``None`` (default): no draws for the
            summaries, and 1,000 draws when ``return_samples`` asks for them. Regression
            summaries never draw, so there it matters only with ``return_samples``.
        :param batch_size: inputs per body pass, a positive int (``None``: all at
            once); with ``return_samples=False`` memory is ``O(batch_size · K · c)``
            (``K`` nodes or draws) whatever the number of inputs.
        :param return_samples: also return the ``S`` function (or logit) draws at
            every input, ``(S, m)`` or ``(S, m, c)`` -- kept only when asked, since
            they grow with ``S · m · c`` (16 GB at 200k inputs, 1,000 draws, 10 classes).
        :param max_nodes: node budget of the classification rule, a positive int.
        """
        x = check_design_points(x, "x", integer_ok=self.dlf.custom_body, fix=PREDICT_FIX)
        if num_samples is not None:
            num_samples = check_int(num_samples, "num_samples")
        check_batch_size(batch_size)
        batch_size = x.shape[0] if batch_size is None else batch_size
        return_samples = check_flag(return_samples, "return_samples")
        max_nodes = check_int(max_nodes, "max_nodes")
        dlf = self.dlf
        dtype, device = dlf.loading_head.weight.dtype, dlf.loading_head.weight.device
        x = cast_inputs(x, dtype, device)
        dlf.check_inputs(x, "x")
        draws_wanted = return_samples or (num_samples is not None and self.task == "classification")
        num_draws = (1000 if num_samples is None else num_samples) if draws_wanted else 0
        use_rule = self.task == "classification" and not draws_wanted
        # z, the draws or nodes (at most max_nodes) of one batch and their softmax, and with return_samples every draw.
        outputs, rows = dlf.num_outputs or 1, min(batch_size, x.shape[0])
        per_batch = num_draws or (max_nodes if use_rule else 1)
        check_memory(dtype.itemsize * (num_draws * math.prod(dlf.factor_shape) + 3 * per_batch * rows * outputs
                                       + (num_draws * x.shape[0] * outputs if return_samples else 0)),
                     device, *(("num_samples", num_samples, "use fewer draws (e.g. num_samples=1000)"
                                + ("" if return_samples else " or a smaller batch_size")) if num_draws else
                               ("max_nodes", max_nodes, "use fewer nodes (the default is 512) or a smaller batch_size")))
        rule = self._rule(max_nodes).to(dlf.loading_head.weight) if use_rule else None
        z = torch.randn((num_draws, 1) + tuple(dlf.factor_shape), dtype=dtype, device=device)
        levels = torch.randn(num_draws, dtype=dtype, device=device) if self.task == "regression" and self.noise_law.per_input else None
        parts = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size]
                mean, loading = dlf.mean_and_loading(xb)
                check_finite_outputs((mean, loading), xb, dtype, "x")
                draws = self._add_nugget(combine(mean, loading, z, dlf.separable_class_factor), xb) if draws_wanted else None
                if self.task == "regression":
                    parts.append(self._regression_batch(xb, mean, loading, draws, levels if return_samples else None))
                elif rule is None:
                    weights = draws.new_full((num_draws,), 1.0 / num_draws)
                    parts.append((*softmax_summary(draws.permute(1, 2, 0), weights), draws if return_samples else None))
                else:
                    parts.append((*integrate_softmax(*self._logit_law(xb, mean, loading), rule), None))
            cat = lambda i, dim=0: None if parts[0][i] is None else torch.cat([p[i] for p in parts], dim)  # noqa: E731
            if self.task == "classification":
                return ClassificationPrediction(cat(0), cat(1), cat(2), cat(3), cat(4, 1))
            noise_samples = cat(4, 1) if self.noise_law.per_input else self.noise_law.draws(None, z, None) if return_samples else None
            return RegressionPrediction(mean=cat(0), epistemic_variance=cat(1), aleatoric_variance=cat(3),
                                        function_samples=cat(2, 1), noise_variance_samples=noise_samples)

    def _regression_batch(self, xb: Tensor, mean: Tensor, loading: Tensor, draws: Optional[Tensor],
                          levels: Optional[Tensor]) -> tuple:
        """One batch's regression summaries (mathematics §6.1): ``(mean, epistemic, draws, aleatoric, noise draws)``;
        heteroscedastic noise is drawn at ``levels`` when given."""
        dlf, law = self.dlf, self.noise_law
        aleatoric = law.mean(xb, mean)
        noise_draws = law.draws(xb, None, levels) if law.per_input and levels is not None else None
        epistemic = (dlf.function_variance(xb) if dlf.multivariate else loading.pow(2).sum(-1)) + self._nugget(xb).to(mean)
        # An inverse gamma with a <= 1 has an infinite mean by law, not by overflow.
        heteroscedastic = aleatoric if law.per_input else None
        check_finite_outputs((epistemic, heteroscedastic, draws, noise_draws), xb, mean.dtype, "x")
        return mean, epistemic, draws, aleatoric, noise_draws

    def integration_rule(self, max_nodes: int = 512) -> GaussianRule:
        """The fixed rule of the classification predictive: :func:`~pyro_dlf.quadrature.gaussian_rule` in the
        dimension ``d`` of the per-input logit law ``μ(x) + B(x) u`` (``q`` for the full model, ``c`` for the
        separable one, ``c`` more when a nugget is kept; mathematics §6.1)."""
        if self.task != "classification":
            raise ValueError("integration_rule: regression summaries are closed form; the rule is for classification students")
        return self._rule(check_int(max_nodes, "max_nodes"))

    def _rule(self, max_nodes: int) -> GaussianRule:
        dlf = self.dlf
        kept_nugget = self.include_nugget or dlf.distance_anchors is not None
        dim = (dlf.num_outputs if dlf.separable else dlf.num_factors) + (dlf.num_outputs if kept_nugget else 0)
        return gaussian_rule(dim, max_nodes)

    def _logit_law(self, x: Tensor, mean: Tensor, loading: Tensor) -> tuple[Tensor, Tensor]:
        r"""The logits at each input as ``μ(x) + B(x) u``, ``u ~ N(0, I_d)`` (mathematics §6.1).

        Full: ``B = Φ(x)`` (``c×q``). Separable: ``L Z φ(x)`` has the law of ``‖φ(x)‖ L u``,
        ``u ∈ R^c``. A kept nugget ``s²(x)`` adds the columns ``s(x) I_c``. Pointwise summaries
        need only this per-input law, not draws shared across inputs.
        """
        dlf = self.dlf
        L = dlf.separable_class_factor
        factor = loading if L is None else loading.norm(dim=-1)[:, None, None] * L
        if self.include_nugget or dlf.distance_anchors is not None:
            scale = self._nugget(x).to(mean).sqrt()  # (b, 1)
            eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
            factor = torch.cat([factor, scale.unsqueeze(-1) * eye], -1)
        return mean, factor

    def predictive_mixture(self, x: Tensor, num_components: int = 64) -> tuple[Tensor, Tensor]:
        r"""The regression predictive density as an equal-weight Gaussian mixture.

        Given ``σ²`` the predictive is exactly ``N(μ(x), ‖Φ(x)‖² + σ²)``; ``σ²`` is
        integrated over ``IG(a, b)`` (heteroscedastic: over the log-normal law of
        ``σ²(x)`` at each input) with ``num_components`` equal-probability
        quantile nodes (deterministic quadrature).

        With a factor-dependent noise law (``β ≠ 0``) ``σ²`` and the function are no
        longer independent, so ``z`` is integrated too: ``K = 16 · num_components``
        (1,024 by default, kept small because the mixture's CRPS costs ``O(K²)``)
        components ``N(μ(x) + Φ(x)^T z_k, σ²_k)``, where ``(z_k, σ²_k)`` run over one
        low-discrepancy set: scrambled Sobol points (seed 0) in ``q + 1`` dimensions
        give ``z_k`` (mirrored, ``±z``) and a probability level at which ``σ²_k`` is the
        quantile of ``IG(a, b u(z_k)^β)`` (:meth:`~pyro_dlf.likelihoods.FactorInverseGammaNoise.mixture`;
        its accuracy against a brute-force average over draws of ``z`` is tested).

        :returns: ``(means, variances)`` of shape ``(K, m)`` (``(K, m, d)`` for several outputs), equal-weight
            components to score a mixture density with (its NLL or CRPS).
        """
        if self.task != "regression":
            raise ValueError("predictive_mixture is for regression students; use predict(x).probs for classification")
        x = check_design_points(x, "x", integer_ok=self.dlf.custom_body, fix=PREDICT_FIX)
        num_components = check_int(num_components, "num_components")
        weight = self.dlf.loading_head.weight
        x = cast_inputs(x, weight.dtype, weight.device)
        self.dlf.check_inputs(x, "x")
        # The (K, m) means and variances; a factor-dependent noise law integrates z too (16 K components).
        check_memory(2 * weight.dtype.itemsize * num_components * x.shape[0] * (self.dlf.num_outputs or 1)
                     * self.noise_law.mixture_factor, weight.device, "num_components", num_components,
                     "use fewer components (e.g. num_components=64) or fewer inputs per call")
        with torch.no_grad():
            mean, loading = self.dlf.mean_and_loading(x)
            epistemic = self.dlf.function_variance(x) if self.dlf.multivariate else loading.pow(2).sum(-1)
            parts = MixtureParts(x, mean, loading, epistemic, self._nugget(x).to(mean), self.dlf.num_factors)
            means, variances = self.noise_law.mixture(parts, num_components)
            check_finite_outputs((means, variances), x, mean.dtype, "x")
        return means, variances

    # -------------------------------------------------------------- saving
    def save(self, path: Union[str, os.PathLike, IO[bytes]]) -> None:
        """Write a versioned, checksummed config and state dict (loadable with ``weights_only=True``).

        A path is written atomically: to a temporary file in the same folder,
        then renamed over ``path``, so a failed save never destroys the file
        already there (:mod:`pyro_dlf.student_file`); a replaced file keeps its
        permission bits, a new one gets the umask's default. A binary file
        object (``open(..., "wb")``, :class:`io.BytesIO`) is written in place.

        With a custom body the file records the body's class and its
        submodules' classes; :meth:`load` then refuses a body of another class.
        """
        path = check_path(path, "path", write=True)
        record = body_record(self.dlf.body) if self.dlf.custom_body else None
        noise, noise_factors, noise_state = (None, None, {}) if self.noise_law is None else self.noise_law.record()
        payload = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "pyro_dlf_version": __version__,
            "task": self.task,
            "centered_logits": self.centered_logits,
            "include_nugget": self.include_nugget,
            "prefix": self.prefix,
            "noise_factors": noise_factors,
            "noise": noise,
            "model": self.dlf.config(),
            **({} if record is None else {"body_class": record[0], "body_modules": record[1]}),
            "dtype": str(self.dlf.loading_head.weight.dtype).replace("torch.", ""),
            "state_dict": {k: v.detach().cpu() for k, v in self.dlf.state_dict().items()} | noise_state,
        }
        write_payload(payload, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike, IO[bytes]], body: Optional[nn.Module] = None,
             map_location: Union[str, torch.device] = "cpu") -> "Student":
        """Read a student written by :meth:`save` (a path or a binary file object).

        The file is checked before anything is built from it: header, every
        configuration field, every width against the saved weights' sizes,
        weight shapes against the configuration (without allocating), finite
        weights and the checksum; a damaged file raises a :class:`ValueError`
        that says so.

        :param body: required when the student was built with a custom body: a
            module of the same class and architecture (its weights are
            overwritten); a body of another class is refused. Files written
            before the body's class was recorded are not checked for it.
        :param map_location: the device to load onto: a device string such as
            ``"cpu"`` or ``"cuda:0"``, or a :class:`torch.device`.
        """
        path = check_path(path, "path", write=False)
        map_location = check_map_location(map_location)
        payload = read_payload(path, map_location)
        where = repr(path) if isinstance(path, str) else "the file object"
        dlf = build_model(payload, body, where).to(map_location)
        noise_model = build_noise_model(payload, where)
        if noise_model is not None:
            noise_model.to(map_location)
        noise = payload["noise"] if isinstance(payload["noise"], list) else [None, None]
        try:
            student = cls(dlf, payload["task"], noise[0], noise[1], centered_logits=payload.get("centered_logits", False),
                          include_nugget=payload.get("include_nugget", False), prefix=payload.get("prefix", ""),
                          noise_model=noise_model)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: the saved student is invalid ({err}); the file is corrupted") from err
        factors = payload.get("noise_factors")
        if factors:
            try:
                student.set_noise_law(student.noise_concentration, student.noise_rate, factors["exponent"], factors["gram"])
            except ValueError as err:
                raise ValueError(f"{where}: the saved noise law is invalid ({err}); the file is corrupted") from err
        return student
