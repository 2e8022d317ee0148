"""Saying so when a fit went wrong, instead of returning a student that silently reports nonsense."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from pyro_dlf.models.deep_latent_factor import DeepLatentFactor

__all__ = ["warn_if_diverged", "design_variance"]


def warn_if_diverged(history: list[float], lr: float, variance: Optional[float], spread: float, num_outputs: Optional[int],
                     candidate: Optional[str] = None, caller: str = "distill") -> None:
    """Say so when the fit went wrong instead of returning a student that silently reports nonsense.

    Signs: a non-finite likelihood; a likelihood worse at the end of EM than at its start by more than a nat
    per observed value (each iteration of exact EM should not lose likelihood, up to minibatch noise); or an
    epistemic ``variance`` at the design points (when given) a hundred times the teachers' ``spread`` (a
    maximum-likelihood fit matches the teachers' second moments). ``candidate`` names a candidate fit of a choice.
    """
    finite = all(math.isfinite(h) for h in history) and (variance is None or math.isfinite(variance))
    # A loss of a whole nat per observed value is far beyond minibatch noise (fits differ by hundredths).
    worse = history[-1] > history[0] + 1.0
    inflated = variance is not None and variance > 100 * max(spread, 1e-300) * (num_outputs or 1)
    if not finite or worse or inflated:
        which = "the fit" if candidate is None else f"a candidate fit of the {candidate}"
        sizes = "" if variance is None else (f"; epistemic variance at the design points {variance:.3g} against the "
                                              f"teachers' spread {spread:.3g}")
        warnings.warn(
            f"{caller}: {which} looks diverged (negative log-likelihood per value {history[0]:.4g} at the start of EM, "
            f"{history[-1]:.4g} at the end{sizes}); lower lr (now {lr:g}) or raise num_iterations", RuntimeWarning,
            stacklevel=4)


def design_variance(model: DeepLatentFactor, x: Tensor) -> float:
    """The student's mean epistemic variance ``‖Φ(x)‖²`` over the design points."""
    with torch.no_grad():
        return float(torch.cat([model.loading(x[s:s + 4096]).double().pow(2).flatten(1).sum(1)
                                for s in range(0, x.shape[0], 4096)]).mean())
