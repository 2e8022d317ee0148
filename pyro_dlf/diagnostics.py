r"""arviz diagnostics for distilled students: the one module that talks to arviz.

A distilled student's predictive draws are exact, independent Monte Carlo draws
(latent factors :math:`z^{(s)} \sim \mathcal N(0, I)`, no Markov chain), so
arviz's chain diagnostics are a check of the sampler plumbing rather than of
convergence: :math:`\hat R \approx 1` and effective sample sizes near the number
of draws are expected. What arviz adds is the vocabulary users know:
``InferenceData`` with ``posterior``, ``posterior_predictive`` and
``observed_data`` groups, ``summary`` and posterior predictive checks
(``plot_ppc``).

With held-out targets (``observed=``) the ``log_likelihood`` group holds the
pointwise log density of each target under each draw,
:math:`\log p(y_j \mid f^{(s)}(x_j), σ^2_{(s)})` (classification:
:math:`\log \operatorname{softmax}(f^{(s)}(x_j))_{y_j}`), so ``az.compare``,
``az.loo`` and ``az.waic`` run and different students (or a student and its
teachers) can be ranked by their held-out expected log predictive density.
Read that as the held-out log predictive density
:math:`\sum_j \log \frac1S \sum_s p(y_j \mid s)`, not as leave-one-out
cross-validation: the draws come from the distilled process, which never saw
the targets, so there is no posterior to leave a point out of -- PSIS-LOO's
importance weights and WAIC's effective-parameter penalty correct for a fit
that did not happen (their ``p_loo``/``p_waic`` measure only the spread of the
draws). Compare students on targets none of them were distilled on.

Everything arviz-specific (its import-time warning, ``from_dict``'s signature)
is confined here, so a move to arviz 1.x touches only this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from pyro_dlf.student import ClassificationPrediction, RegressionPrediction

__all__ = ["to_inference_data", "summary", "plot_ppc"]

#: Student sites that are predictive quantities (the rest are latent: ``z``, ``noise_variance``, ``nugget``).
_PREDICTIVE_SITES = ("function", "y")


def _arviz():
    with warnings.catch_warnings():
        # arviz 0.23 announces its 1.x refactor once a day at import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _as_draws(value: Union[Tensor, np.ndarray], num_chains: int, name: str) -> np.ndarray:
    """``(S, ...)`` draws as arviz's ``(chain, draw, ...)`` array."""
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.ndim == 0 or array.shape[0] % num_chains:
        raise ValueError(
            f"{name}: {array.shape[0] if array.ndim else 0} draws cannot be split into num_chains={num_chains} "
            "equal chains; pass a num_chains that divides the number of draws"
        )
    return array.reshape(num_chains, array.shape[0] // num_chains, *array.shape[1:])


def _drop_singletons(value: Tensor) -> Tensor:
    """Latent draws ``(S, 1, q)`` (Pyro's plate dims) as ``(S, q)``; the draw dim is kept."""
    return value.reshape(value.shape[0], *[size for size in value.shape[1:] if size != 1])


def to_inference_data(
    source: Union[RegressionPrediction, ClassificationPrediction, Mapping[str, Tensor]],
    *,
    observed: Optional[Tensor] = None,
    num_chains: int = 1,
    point_coords: Optional[Sequence[Any]] = None,
    generator: Optional[torch.Generator] = None,
) -> Any:
    """Build an ``arviz.InferenceData`` from a student's predictive draws.

    :param source: one of

        * a :class:`~pyro_dlf.student.RegressionPrediction` from
          ``student.predict(x)`` (with samples): ``posterior_predictive`` gets
          ``function`` (the distilled process) and ``y`` (observations
          :math:`y^{(s)} \\sim \\mathcal N(f^{(s)}, \\sigma^2_{(s)})`, drawn here);
          ``posterior`` gets ``noise_variance``;
        * a :class:`~pyro_dlf.student.ClassificationPrediction` with
          ``logit_samples``: ``posterior_predictive`` gets ``function`` (logits,
          dims ``point, class``);
        * the dictionary returned by ``pyro.infer.Predictive(student, ...)(x)``:
          ``function`` and ``y`` go to ``posterior_predictive``, every other
          site (``z``, ``noise_variance``, ``nugget``) to ``posterior``.

    :param observed: observed targets at the same inputs, shape ``(m,)``, stored
        as ``observed_data["y"]`` (needed by :func:`plot_ppc`).
    :param num_chains: split the ``S`` independent draws into this many
        pseudo-chains (``S`` must be divisible), so ``rhat`` is defined.
    :param point_coords: labels of the ``m`` inputs (default ``0 … m-1``).
    :param generator: source of the observation noise for a regression prediction.
    :returns: ``arviz.InferenceData``.
    :raises ValueError: on a prediction without samples, shape mismatches or a bad ``num_chains``.
    :raises TypeError: on an unsupported ``source``.
    """
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
    posterior: dict[str, Tensor] = {}
    predictive: dict[str, Tensor] = {}
    if isinstance(source, RegressionPrediction):
        if source.function_samples is None:
            raise ValueError("source: call student.predict(x, return_samples=True) to get draws for arviz")
        noise = source.noise_variance_samples
        predictive["function"] = source.function_samples
        scale = noise.sqrt().unsqueeze(-1) if noise.dim() == 1 else noise.sqrt()  # heteroscedastic: (S, m)
        predictive["y"] = source.function_samples + scale * torch.randn(
            source.function_samples.shape, generator=generator, dtype=source.function_samples.dtype
        ).to(source.function_samples.device)
        posterior["noise_variance"] = noise
    elif isinstance(source, ClassificationPrediction):
        if source.logit_samples is None:
            raise ValueError("source: call student.predict(x, return_samples=True) to get logit draws for arviz")
        predictive["function"] = source.logit_samples
        # Class draws y^(s) ~ Categorical(softmax f^(s)): what plot_ppc compares with the observed labels.
        logits = source.logit_samples.double()
        flat = torch.multinomial(logits.softmax(-1).reshape(-1, logits.shape[-1]), 1, generator=generator)
        predictive["y"] = flat.reshape(logits.shape[:-1])
    elif isinstance(source, Mapping):
        if not source:
            raise ValueError("source: the Predictive output is empty")
        for site, value in source.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"source[{site!r}] must be a tensor of draws, got {type(value).__name__}")
            (predictive if site in _PREDICTIVE_SITES else posterior)[site] = value
    else:
        raise TypeError(
            "source must be a RegressionPrediction, a ClassificationPrediction or the dict returned by "
            f"pyro.infer.Predictive, got {type(source).__name__}"
        )

    shapes = {tuple(value.shape[:2]) for value in predictive.values()}
    if len(shapes) > 1 or any(value.dim() < 2 for value in predictive.values()):
        raise ValueError(f"source: predictive sites must share (draws, points) leading dims, got shapes {sorted(shapes)}")
    num_points = shapes.pop()[1] if shapes else None
    posterior = {site: _drop_singletons(value) for site, value in posterior.items()}
    if point_coords is None and num_points is not None:
        point_coords = list(range(num_points))
    if point_coords is not None and num_points is not None and len(point_coords) != num_points:
        raise ValueError(f"point_coords has {len(point_coords)} labels for {num_points} inputs")

    dims: dict[str, list[str]] = {}
    for site, value in predictive.items():
        extra = value.dim() - 2
        dims[site] = ["point"] + [f"{site}_dim_{k}" for k in range(extra)]
        if extra == 1 and isinstance(source, ClassificationPrediction):
            dims[site] = ["point", "class"]
    coords = {"point": point_coords} if point_coords is not None else {}

    observed_data = None
    log_likelihood = None
    if observed is not None:
        if not isinstance(observed, Tensor) or observed.dim() != 1 or (num_points is not None and observed.shape[0] != num_points):
            raise ValueError(f"observed must be a tensor of shape ({num_points},), one target per input")
        observed_data = {"y": observed.detach().cpu().numpy()}
        dims.setdefault("y", ["point"])
        log_likelihood = _pointwise_log_likelihood(source, posterior, predictive, observed)

    az = _arviz()
    return az.from_dict(
        posterior={k: _as_draws(v, num_chains, k) for k, v in posterior.items()} or None,
        posterior_predictive={k: _as_draws(v, num_chains, k) for k, v in predictive.items()} or None,
        log_likelihood=None if log_likelihood is None else {"y": _as_draws(log_likelihood, num_chains, "y")},
        observed_data=observed_data,
        coords=coords,
        dims=dims,
    )


def _pointwise_log_likelihood(source, posterior: dict, predictive: dict, observed: Tensor) -> Optional[Tensor]:
    """``log p(y_j | draw s)``, ``(S, m)``: Gaussian with the draw's noise variance, or the draw's
    log-softmax at the label; ``None`` when the draws do not determine it (no noise variance)."""
    function = predictive.get("function")
    if function is None:
        return None
    y = observed.to(function.device)
    if function.dim() == 3:  # logits (S, m, c): the observed labels' log-probabilities
        labels = y.long().reshape(1, -1, 1).expand(function.shape[0], -1, 1)
        return function.double().log_softmax(-1).gather(-1, labels).squeeze(-1)
    noise = posterior.get("noise_variance")
    if noise is None:
        return None
    scale = noise.double().sqrt()
    scale = scale.reshape(-1, 1) if scale.dim() == 1 or scale.shape[1:] != function.shape[1:] else scale
    return torch.distributions.Normal(function.double(), scale).log_prob(y.double())


def summary(idata: Any, **kwargs: Any) -> Any:
    """``arviz.summary`` (a pandas ``DataFrame``); ``kwargs`` go to arviz (e.g. ``group``, ``var_names``)."""
    return _arviz().summary(idata, **kwargs)


def plot_ppc(idata: Any, **kwargs: Any) -> Any:
    """``arviz.plot_ppc`` of ``y`` against ``observed_data`` (matplotlib axes)."""
    kwargs.setdefault("data_pairs", {"y": "y"})
    kwargs.setdefault("var_names", ["y"])
    az = _arviz()
    with warnings.catch_warnings():
        # arviz 0.23's matplotlib backend uses an API matplotlib 3.11 deprecates.
        warnings.filterwarnings("ignore", message=".*alias_mapping.*")
        return az.plot_ppc(idata, **kwargs)
