r"""arviz diagnostics for distilled students: the one module that talks to arviz.

A distilled student's predictive draws are exact, independent Monte Carlo draws
(latent factors :math:`z^{(s)} \sim \mathcal N(0, I)`, no Markov chain), so
arviz's chain diagnostics are a check of the sampler plumbing rather than of
convergence: :math:`\hat R \approx 1` and effective sample sizes near the number
of draws are expected. What arviz adds is the vocabulary users know:
``InferenceData`` with ``posterior``, ``posterior_predictive``,
``log_likelihood`` and ``observed_data`` groups, ``summary``, posterior
predictive checks (``plot_ppc``) and ``loo`` / ``waic`` / ``compare``.

**Groups.** The latents of the student's model go to ``posterior``: the
distilled process ``function`` (regression values or classification logits at
the inputs) and, from ``pyro.infer.Predictive``, ``z``, ``noise_variance``,
``nugget`` and ``noise_level``; a prediction's noise-variance draws too. The
observation draws ``y`` go to ``posterior_predictive`` (what :func:`plot_ppc`
compares with ``observed_data``).

**What loo, waic and compare measure.** With held-out targets ``observed``
(``y_j``, ``j = 1 … m``) the ``log_likelihood`` group holds, for draw ``s`` and
target ``j``,

.. math::

    \ell_{sj} = \log \frac{1}{S-1} \sum_{t \ne s} p(y_j \mid \text{draw } t),

the log predictive density of ``y_j`` estimated from the *other* ``S − 1``
draws (:math:`p(y_j \mid t) = \mathcal N(y_j;\, f^{(t)}(x_j), σ^2_{(t)})`, or
:math:`\operatorname{softmax}(f^{(t)}(x_j))_{y_j}` for a class label). The
statistical reading: the draws come from the distilled process, which never
saw the targets, so there is no posterior fitted to ``y_j`` for
leave-one-out to undo. Read per draw, :math:`\log p(y_j \mid s)`, PSIS-LOO and
WAIC would treat the spread of the draws as overfitting and "correct" for a
fit that did not happen (huge ``p_loo``, Pareto-``k`` warnings). Each
:math:`\ell_{sj}` is instead a Monte Carlo estimate of the log predictive
density :math:`\log p(y_j)` with the latent factors integrated out, and
nothing in it depends on draw ``s``'s fit to ``y_j``. So ``az.loo`` and
``az.waic`` both return the held-out log predictive density

.. math::

    \sum_j \log \frac{1}{S} \sum_s p(y_j \mid s)

less a penalty of order :math:`\sum_j \operatorname{Var}_s(p_{sj}/\bar p_j)/S^2`
(:math:`\bar p_j` the mean over draws): WAIC's ``lppd`` (``elpd_waic + p_waic``)
is this sum exactly and ``p_waic`` = :math:`\sum_j \operatorname{Var}_s(\ell_{sj})`;
``p_loo`` is as small. ``az.compare`` thus ranks students (or a student and its
teachers) by their held-out log predictive density. Compare on targets none of
them were distilled on.

Pareto ``k`` then reads as the reliability of that Monte Carlo estimate: a
large ``k`` (arviz warns above 0.7) means a few draws carry
:math:`p(y_j)` -- a target far from most draws -- so its estimated density
rests on those few; draw more, or distrust that target. Where every draw gives
``y_j`` the same density to float precision (a class label all draws are sure
of), the column is stored as that common value; arviz cannot fit a tail to a
constant and reports ``k = inf`` (and one warning) there, though the term is
exact.

Everything arviz-specific (its import-time warning, ``from_dict``'s signature)
is confined here, so a move to arviz 1.x touches only this module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from pyro_dlf._validation import check_generator, check_inference_data, check_observed_targets
from pyro_dlf.student import ClassificationPrediction, RegressionPrediction

__all__ = ["to_inference_data", "summary", "plot_ppc"]

#: Student sites with one value per input (``point`` is their first dim after the draws).
_POINT_SITES = ("function", "nugget", "y")


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


def _without_prefix(source: Mapping[str, Any]) -> dict[str, Any]:
    """Predictive output of a student with a ``prefix`` (``"dlf.function"``, ``"dlf.y"``, ...) under its plain site names."""
    for key in source:
        for site in ("function", "y"):
            prefix = key[: -len(site)] if key.endswith(site) else ""
            if prefix and all(name.startswith(prefix) for name in source):
                return {name[len(prefix):]: value for name, value in source.items()}
    return dict(source)


def _task_of_sites(posterior: Mapping[str, Tensor], predictive: Mapping[str, Tensor]) -> str:
    """A regression student samples a noise variance and real ``y``; a classifier integer ``y`` and logits ``(S, m, c)``."""
    if "noise_variance" in posterior:
        return "regression"
    if "y" in predictive:
        return "regression" if predictive["y"].is_floating_point() else "classification"
    function = posterior.get("function")
    return "classification" if function is not None and function.dim() == 3 else "regression"


def _pointwise_log_density(task: str, function: Tensor, noise: Optional[Tensor], observed: Tensor) -> Tensor:
    r"""``log p(y_j | draw s)``, ``(S, m)``, in float64.

    Regression: the Gaussian density with the draw's noise variance (summed over
    outputs for a multi-output student). Classification: the draw's log-softmax at
    the label.
    """
    f = function.double()
    y = observed.to(f.device)
    if task == "classification":
        labels = y.long().reshape(1, -1, 1).expand(f.shape[0], -1, 1)
        return f.log_softmax(-1).gather(-1, labels).squeeze(-1)
    scale = noise.double().sqrt()
    if f.dim() == 3:  # (S, m, d) with one σ² per draw (S,) or one per output (S, d)
        scale = scale.reshape(f.shape[0], 1, -1)
    elif scale.dim() == 1 or scale.shape[1:] != f.shape[1:]:
        scale = scale.reshape(-1, 1)
    density = torch.distributions.Normal(f, scale).log_prob(y.double())
    return density.sum(-1) if f.dim() == 3 else density


def _leave_one_out_log_mean(log_density: Tensor) -> Tensor:
    r"""``log (1/(S−1)) Σ_{t≠s} exp(log_density[t])`` for every ``s``, ``(S, m)``.

    Prefix and suffix log-cumulative-sums give each leave-one-out sum as
    ``logaddexp(prefix[s−1], suffix[s+1])``: exact (no subtraction of nearly equal
    sums) and ``O(S m)``.
    """
    num_draws = log_density.shape[0]
    prefix = torch.logcumsumexp(log_density, 0)
    suffix = torch.logcumsumexp(log_density.flip(0), 0).flip(0)
    empty = torch.full_like(log_density[:1], float("-inf"))
    before = torch.cat([empty, prefix[:-1]])
    after = torch.cat([suffix[1:], empty])
    return torch.logaddexp(before, after) - math.log(num_draws - 1)


def _flatten_unresolved_columns(log_likelihood: Tensor) -> Tensor:
    r"""Store a column whose PSIS tail is float rounding as its common value.

    PSIS fits a generalized Pareto law to the largest importance ratios
    ``exp(−ℓ_{sj})`` of a column, i.e. its smallest ``ℓ_{sj}`` (arviz takes the
    ``min(S/5, 3\sqrt{S/r_{eff}})`` largest ratios). For a label every draw is
    nearly sure of, those ``ℓ_{sj}`` differ by less than ``10^{-13}``: arviz's
    fit then sees a handful of rounded values and can return NaN (and a NaN
    ``elpd_loo``). Such a column carries no information beyond its value, so it
    is stored as its log-mean-exp (the held-out density stays exact); arviz
    reports ``k = inf`` for a constant column.
    """
    num_draws = log_likelihood.shape[0]
    # Half of arviz's tail at r_eff = 1: the checked draws lie inside its tail for any r_eff up to 4.
    half_tail = max(5, math.ceil(min(num_draws / 5, 3 * math.sqrt(num_draws)) / 2))
    if num_draws <= half_tail:
        return log_likelihood
    lowest = log_likelihood.min(0).values
    tail_edge = log_likelihood.kthvalue(half_tail + 1, 0).values
    unresolved = (tail_edge - lowest) <= 1e-13 * lowest.abs().clamp_min(1.0)
    if not unresolved.any():
        return log_likelihood
    common = log_likelihood.logsumexp(0) - math.log(num_draws)
    return torch.where(unresolved, common, log_likelihood)


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
          ``student.predict(x, return_samples=True)``: ``posterior`` gets
          ``function`` (the distilled process) and ``noise_variance``;
          ``posterior_predictive`` gets ``y`` (observations
          :math:`y^{(s)} \\sim \\mathcal N(f^{(s)}, \\sigma^2_{(s)})`, drawn here);
        * a :class:`~pyro_dlf.student.ClassificationPrediction` with
          ``logit_samples``: ``posterior`` gets ``function`` (logits, dims
          ``point, class``), ``posterior_predictive`` gets ``y`` (class draws
          :math:`y^{(s)} \\sim \\operatorname{Categorical}(\\operatorname{softmax} f^{(s)})`,
          drawn here);
        * the dictionary returned by ``pyro.infer.Predictive(student, ...)(x)``:
          ``y`` goes to ``posterior_predictive``, every other site
          (``function``, ``z``, ``noise_variance``, ``nugget``, ``noise_level``)
          to ``posterior``.

    :param observed: held-out targets at the same inputs: ``(m,)`` values or
        class labels, ``(m, d)`` for a multi-output regression. Stored as
        ``observed_data["y"]`` (for :func:`plot_ppc`); with the ``function``
        draws they give the ``log_likelihood`` group (see the module docstring:
        ``az.loo`` / ``az.waic`` / ``az.compare`` then report the held-out log
        predictive density).
    :param num_chains: split the ``S`` independent draws into this many
        pseudo-chains (``S`` must be divisible), so ``rhat`` is defined.
    :param point_coords: labels of the ``m`` inputs (default ``0 … m-1``).
    :param generator: source of the drawn observations ``y`` of a prediction.
    :returns: ``arviz.InferenceData``.
    :raises ValueError: on a prediction without samples, shape mismatches, fewer
        than 2 draws with ``observed``, bad labels or a bad ``num_chains``.
    :raises TypeError: on an unsupported ``source``.
    """
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive int, got {num_chains!r}")
    check_generator(generator)
    task, posterior, predictive, noise = _groups(source, generator)
    point_sites = {site: value for site, value in {**posterior, **predictive}.items() if site in _POINT_SITES}
    if any(value.dim() < 2 for value in point_sites.values()) or len({tuple(v.shape[:2]) for v in point_sites.values()}) > 1:
        shapes = sorted({tuple(value.shape) for value in point_sites.values()})
        raise ValueError(f"source: function, y and nugget must share (draws, points) leading dims, got shapes {shapes}")
    num_points = next(iter(point_sites.values())).shape[1] if point_sites else None
    if point_coords is None and num_points is not None:
        point_coords = list(range(num_points))
    if point_coords is not None and num_points is not None and len(point_coords) != num_points:
        raise ValueError(f"point_coords has {len(point_coords)} labels for {num_points} inputs")
    observed_data, log_likelihood = _observed_groups(observed, task, posterior.get("function"), predictive, noise)
    # Latent draws lose Pyro's singleton plate dims; per-input sites keep their point dim.
    posterior = {site: value if site in _POINT_SITES else _drop_singletons(value) for site, value in posterior.items()}
    dims = _dims(task, posterior, predictive, observed if observed_data is not None else None)
    draws = lambda group: {k: _as_draws(v, num_chains, k) for k, v in group.items()} or None  # noqa: E731
    return _arviz().from_dict(posterior=draws(posterior), posterior_predictive=draws(predictive),
                              log_likelihood=None if log_likelihood is None else draws(log_likelihood),
                              observed_data=observed_data, coords={"point": point_coords} if point_coords is not None else {},
                              dims=dims)


def _groups(source, generator: Optional[torch.Generator]) -> tuple[str, dict, dict, Optional[Tensor]]:
    """``(task, posterior, posterior_predictive, noise variance draws)`` of a prediction or a Predictive output."""
    posterior: dict[str, Tensor] = {}
    predictive: dict[str, Tensor] = {}
    noise: Optional[Tensor] = None
    if isinstance(source, RegressionPrediction):
        if source.function_samples is None:
            raise ValueError("source: call student.predict(x, return_samples=True) to get draws for arviz")
        task, noise = "regression", source.noise_variance_samples
        posterior["function"] = source.function_samples
        posterior["noise_variance"] = noise
        predictive["y"] = source.sample_observations(generator)
    elif isinstance(source, ClassificationPrediction):
        if source.logit_samples is None:
            raise ValueError("source: call student.predict(x, return_samples=True) to get logit draws for arviz")
        task = "classification"
        posterior["function"] = source.logit_samples
        # Class draws y^(s) ~ Categorical(softmax f^(s)): what plot_ppc compares with the observed labels.
        logits = source.logit_samples.double()
        flat = torch.multinomial(logits.softmax(-1).reshape(-1, logits.shape[-1]), 1, generator=generator)
        predictive["y"] = flat.reshape(logits.shape[:-1])
    elif isinstance(source, Mapping):
        if not source:
            raise ValueError("source: the Predictive output is empty")
        for site, value in _without_prefix(source).items():
            if not isinstance(value, Tensor):
                raise TypeError(f"source[{site!r}] must be a tensor of draws, got {type(value).__name__}")
            (predictive if site == "y" else posterior)[site] = value
        task = _task_of_sites(posterior, predictive)
        if "noise_variance" in posterior:
            noise = _drop_singletons(posterior["noise_variance"])
    else:
        raise TypeError(
            "source must be a RegressionPrediction, a ClassificationPrediction or the dict returned by "
            f"pyro.infer.Predictive, got {type(source).__name__}"
        )
    return task, posterior, predictive, noise


def _observed_groups(observed: Optional[Tensor], task: str, function: Optional[Tensor], predictive: dict,
                     noise: Optional[Tensor]) -> tuple[Optional[dict], Optional[dict]]:
    """``observed_data`` and the held-out ``log_likelihood`` (leave-one-draw-out, see the module docstring)."""
    if observed is None:
        return None, None
    check_observed_targets(observed, task, function, predictive.get("y"))
    observed_data, log_likelihood = {"y": observed.detach().cpu().numpy()}, None
    if function is not None and (task == "classification" or noise is not None):
        if function.shape[0] < 2:
            raise ValueError("observed: the held-out log density needs at least 2 draws; predict with num_samples >= 2")
        log_density = _pointwise_log_density(task, function, noise, observed)
        log_likelihood = {"y": _flatten_unresolved_columns(_leave_one_out_log_mean(log_density))}
    return observed_data, log_likelihood


def _dims(task: str, posterior: dict, predictive: dict, observed: Optional[Tensor]) -> dict[str, list[str]]:
    """arviz dimension names: ``point`` for per-input sites, then ``class`` or ``output``."""
    last = "class" if task == "classification" else "output"
    function = posterior.get("function")
    dims: dict[str, list[str]] = {}
    for site, value in {**posterior, **predictive}.items():
        if site in _POINT_SITES:
            dims[site] = ["point"] + ([last] if value.dim() == 3 else [f"{site}_dim_{k}" for k in range(value.dim() - 2)])
    if function is not None and "noise_variance" in posterior:
        shape = tuple(posterior["noise_variance"].shape[1:])
        if shape == tuple(function.shape[1:]):  # heteroscedastic: one variance per input (and output)
            dims["noise_variance"] = ["point"] + (["output"] if len(shape) == 2 else [])
        elif function.dim() == 3 and shape == tuple(function.shape[2:]):  # one variance per output
            dims["noise_variance"] = ["output"]
    if observed is not None:
        dims["y"] = ["point"] + ([last] if observed.dim() == 2 else [])
    return dims


def summary(idata: Any, **kwargs: Any) -> Any:
    """``arviz.summary`` (a pandas ``DataFrame``); ``kwargs`` go to arviz (e.g. ``group``, ``var_names``).

    A variable every draw agrees on -- a class label the student is sure of, in
    ``group="posterior_predictive"`` -- has no spread, so its ``r_hat`` and
    ``mcse_sd`` are 0/0: arviz reports NaN, the right answer, and numpy's
    invalid-division signal is silenced for this call only.
    """
    # With filter_vars the names are patterns, matched by arviz.
    names = None if kwargs.get("filter_vars") else kwargs.get("var_names")
    check_inference_data(idata, {}, names, kwargs.get("group", "posterior"))
    with np.errstate(invalid="ignore"):
        return _arviz().summary(idata, **kwargs)


def plot_ppc(idata: Any, **kwargs: Any) -> Any:
    """``arviz.plot_ppc`` of ``y`` against ``observed_data`` (matplotlib axes)."""
    kwargs.setdefault("data_pairs", {"y": "y"})
    kwargs.setdefault("var_names", ["y"])
    fix = "pass observed= (the held-out targets) to to_inference_data"
    check_inference_data(idata, {"posterior_predictive": "build idata from draws (return_samples=True)", "observed_data": fix},
                         kwargs["var_names"], "posterior_predictive")
    az = _arviz()
    with warnings.catch_warnings():
        # arviz 0.23's matplotlib backend uses an API matplotlib 3.11 deprecates.
        warnings.filterwarnings("ignore", message=".*alias_mapping.*")
        return az.plot_ppc(idata, **kwargs)
