r"""Initialization by the MMD-penalized complete likelihood (mathematics §5)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from pyro_dlf._progress import progress_bar
from pyro_dlf._validation import (check_batch_size, check_design_points, check_dtype, check_flag, check_generator, check_int,
                                  check_num_factors, check_real, check_teacher_values)
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.sufficient_statistics import combine, whiten

__all__ = ["mmd", "mmd_initialize"]


def mmd(samples: Tensor, reference: Tensor, bandwidth_multipliers: Sequence[float] = (0.5, 1.0, 2.0)) -> Tensor:
    r"""Unbiased squared maximum mean discrepancy with a mixture of RBF kernels.

    .. math::

        \widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)}\sum_{i\ne j} k(a_i, a_j)
          + \frac{1}{n'(n'-1)}\sum_{i\ne j} k(b_i, b_j) - \frac{2}{n n'}\sum_{i,j} k(a_i, b_j),

    ``k(u, v) = Σ_s exp(−‖u − v‖² / (2 s^2 h^2))`` over the multipliers ``s``.
    Bandwidth ``h``: the median heuristic, ``h^2`` = median pairwise squared
    distance of the pooled sample / 2, computed without gradient. A mixture
    around the median keeps power when the two samples differ at a scale
    other than the median one (Gretton et al., 2012).

    :param samples: ``(n, k)``, ``n ≥ 2``.
    :param reference: ``(n', k)``, ``n' ≥ 2``.
    """
    if samples.dim() != 2 or reference.dim() != 2 or samples.shape[1] != reference.shape[1]:
        raise ValueError(f"samples and reference must be (n, k) and (n', k), got {tuple(samples.shape)} and {tuple(reference.shape)}")
    if samples.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError("samples and reference need at least 2 rows each for the unbiased estimate")
    pooled = torch.cat([samples, reference])
    norms = pooled.pow(2).sum(-1)
    sq = (norms[:, None] + norms[None, :] - 2 * pooled @ pooled.T).clamp_min(0)
    n = samples.shape[0]
    with torch.no_grad():
        off = sq[~torch.eye(len(pooled), dtype=torch.bool, device=sq.device)]
        h2 = off.median().clamp_min(1e-12) / 2
    kernel = sum(torch.exp(-sq / (2 * s * s * h2)) for s in bandwidth_multipliers)
    kaa, kbb, kab = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    nb = reference.shape[0]
    return (
        (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
        + (kbb.sum() - kbb.diagonal().sum()) / (nb * (nb - 1))
        - 2 * kab.mean()
    )


def mmd_initialize(
    model: DeepLatentFactor,
    x: Tensor,
    f: Tensor,
    *,
    num_steps: int = 500,
    penalty: float = 1.0,
    lr: float = 1e-2,
    batch_size: Optional[int] = None,
    num_reference: int = 256,
    noise_floor: float = 1e-6,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    observed: Optional[Tensor] = None,
) -> Tensor:
    r"""Pre-fit θ by the penalized complete likelihood, so EM starts well (mathematics §5).

    Maximizes over θ (body, heads, ``L``) and free codes ``z_{1:n}`` jointly

    .. math::

        ℓ_{com}(θ; f, z) − λ\, \widehat{\mathrm{MMD}}^2(z_{1:n}, z'_{1:N}),
        \qquad z' \sim N(0, I) \text{ fresh at every step},

    with ``σ_f^2`` profiled out: per observed scalar,
    ``−ℓ_{com}/(nmc) = ½ \log(2π e\, \overline{r^2})`` where ``\overline{r^2}``
    is the mean squared residual. Profiling makes ``penalty`` (λ) free of the
    teachers' units. The MMD term keeps the codes distributed like prior
    draws, which pins the scale and rotation the likelihood leaves free.
    Codes of a separable model are compared as flattened ``c·q`` vectors.
    At the end ``σ_f^2`` is set to the profiled maximizer (the mean squared
    residual over all design points).

    :param penalty: λ > 0.
    :param num_reference: prior draws per step in the MMD.
    :param noise_floor: lower bound of ``σ_f^2`` relative to ``model.output_scale ** 2``.
    :param observed: optional ``(n, m)`` booleans: the mean squared residual
        runs over each teacher's observed entries only.
    :returns: the fitted codes, ``(n, q)`` or ``(n, c, q)``.
    """
    x, f = _checked(model, x, f, observed, num_steps, penalty, lr, batch_size, num_reference, noise_floor, generator, progress)
    n, m = f.shape[0], x.shape[0]
    dtype, device = model.loading_head.weight.dtype, model.loading_head.weight.device
    shape = (n,) + tuple(model.factor_shape)
    gen_device = None if generator is None else generator.device  # draws follow the generator's device
    codes = torch.randn(shape, generator=generator, device=gen_device).to(dtype=dtype, device=device).requires_grad_()
    noise_param = model.noise_variance_unconstrained
    params = [p for p in model.parameters() if p.requires_grad and p is not noise_param]
    optimizer = torch.optim.Adam(params + [codes], lr=lr)
    size = m if batch_size is None else min(batch_size, m)
    align = -1 - len(model.factor_shape)  # codes' singleton aligned with the points dimension
    order, cursor = torch.randperm(m, generator=generator, device=gen_device), 0
    for _ in progress_bar(range(num_steps), desc="MMD initialization", enabled=progress):
        if cursor + size > m:
            order, cursor = torch.randperm(m, generator=generator, device=gen_device), 0
        idx = order[cursor:cursor + size]
        cursor += size
        mean, loading = model.mean_and_loading(x[idx])
        L = model.separable_class_factor
        fitted = combine(mean, loading, codes.unsqueeze(align), L)
        squared = _squared_residuals(f[:, idx], fitted, None if observed is None else observed[:, idx])
        if squared.numel() == 0:  # a minibatch without any observed value: nothing to fit
            continue
        mse = squared.mean()
        reference = torch.randn((num_reference, codes[0].numel()), generator=generator, device=gen_device).to(dtype=dtype, device=device)
        loss = 0.5 * torch.log(mse) + penalty * mmd(codes.reshape(n, -1), reference)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _set_profiled_noise(model, x, f, codes.unsqueeze(align), observed, size, noise_floor)
    return codes.detach()


def _checked(model, x, f, observed, num_steps, penalty, lr, batch_size, num_reference, noise_floor, generator,
             progress) -> tuple[Tensor, Tensor]:
    """:func:`mmd_initialize`'s arguments, checked; the design points and teacher values as tensors."""
    if not isinstance(model, DeepLatentFactor):
        raise TypeError(f"model must be a pyro_dlf.models.DeepLatentFactor, got {type(model).__name__}")
    x = check_design_points(x, "x", integer_ok=model.custom_body)
    model.check_inputs(x, "x")
    f = check_teacher_values(f, x, model.num_outputs, "f", observed=observed)
    check_dtype(f, model, "f")
    check_num_factors(model.num_factors, f.shape[0], model.num_outputs, model.covariance_type)
    check_real(penalty, "penalty", 0)
    check_real(lr, "lr", 0)
    check_int(num_steps, "num_steps", 0)
    check_int(num_reference, "num_reference", 2)
    check_batch_size(batch_size)
    check_real(noise_floor, "noise_floor", 0, fix="a small fraction of the teachers' variance, e.g. noise_floor=1e-6")
    check_flag(progress, "progress")
    check_generator(generator)
    return x, f


def _set_profiled_noise(model: DeepLatentFactor, x: Tensor, f: Tensor, codes: Tensor, observed: Optional[Tensor],
                        size: int, noise_floor: float) -> None:
    """``σ_f²`` at its profiled maximizer: the mean squared residual over all design points (weighted by the
    nugget's growth ``w(x)`` where it grows, mathematics §9.4)."""
    with torch.no_grad():
        total, count, L = 0.0, 0, model.separable_class_factor
        for start in range(0, x.shape[0], size):
            mean, loading, weight = model.mean_loading_and_weight(x[start:start + size])
            ob = None if observed is None else observed[:, start:start + size]
            mean, loading, fb = whiten(mean, loading, f[:, start:start + size], weight)
            sq = _squared_residuals(fb, combine(mean, loading, codes, L), ob)
            total += float(sq.sum())
            count += sq.numel()  # every entry, or the observed ones (flattened) under a mask
        model.set_noise_variance(total / count, noise_floor)


def _squared_residuals(f: Tensor, fitted: Tensor, observed: Optional[Tensor]) -> Tensor:
    """``(f − fitted)²``, or only its observed entries (flattened) under a mask."""
    if observed is None:
        return (f - fitted).pow(2)
    keep = observed if f.dim() == 2 else observed.unsqueeze(-1).expand_as(f)
    return (f[keep] - fitted[keep]).pow(2)
