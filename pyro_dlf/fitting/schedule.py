"""The optimizer schedule of a fit and the EM run under it: the MMD start, then EM (mathematics §4–§5)."""

from __future__ import annotations

import math
from typing import Optional

import pyro.optim
import torch
from torch import Tensor

from pyro_dlf._progress import progress_bar
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.infer.em import EM
from pyro_dlf.infer.mmd import mmd_initialize
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.sufficient_statistics import observed_count

__all__ = ["scheduled_adam", "run_em"]


def scheduled_adam(lr: float, lr_decay: float, warmup: float, num_iterations: int) -> pyro.optim.PyroLRScheduler:
    """Adam (gradient norm clipped at 10) whose step size ramps up linearly over the first
    ``warmup · num_iterations`` scheduler steps, then decays geometrically to ``lr · lr_decay``.

    A freshly started Adam moves every weight by about ``lr`` in its first steps whatever the gradient's
    size, which would throw the network off the MMD start; the ramp avoids that loss of likelihood.
    Call ``optim.step()`` once per iteration to advance the schedule.
    """
    ramp = max(warmup * num_iterations, 1.0)
    iterations = max(num_iterations, 1)

    def schedule(iteration: int) -> float:
        return min(1.0, (iteration + 1) / ramp) * lr_decay ** (iteration / iterations)

    return pyro.optim.LambdaLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "lr_lambda": schedule}, {"clip_norm": 10.0})


def run_em(model: DeepLatentFactor, x: Tensor, f: Tensor, observed: Optional[Tensor], o: DistillOptions,
            mmd_steps: int, num_iterations: int, generator: torch.Generator) -> list[float]:
    """The MMD start (mathematics §5), then EM (§4) with a warm-up and geometric decay of Adam's step size;
    the negative log marginal likelihood per observed value at each iteration, and after the last."""
    if o.init == "mmd" and mmd_steps > 0:
        mmd_initialize(model, x, f, num_steps=mmd_steps, penalty=o.mmd_penalty, lr=o.lr, batch_size=o.batch_size,
                       generator=generator, progress=o.progress, observed=observed)
    optim = scheduled_adam(o.lr, o.lr_decay, o.warmup, num_iterations)
    m = x.shape[0]
    steps = o.num_m_steps if o.num_m_steps is not None else math.ceil(m / min(o.batch_size, m))
    em = EM(model, ExactFactorPosterior(model), optim, num_m_steps=steps, batch_size=o.batch_size, estep=o.estep,
            generator=generator)
    history, count = [], observed_count(f, observed)
    bar = progress_bar(range(num_iterations), desc="EM", enabled=o.progress)
    for _ in bar:
        history.append(em.step(x, f, observed) / count)
        optim.step()  # advance the learning-rate schedule by one EM iteration
        bar.set_postfix(nll=f"{history[-1]:.4f}")
    history.append(em.evaluate_loss(x, f, observed) / count)
    return history
