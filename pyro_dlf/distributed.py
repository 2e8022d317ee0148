r"""Distilling from a stream of batches, on one process or on many (``torchrun``).

:func:`distill_stream` is :func:`pyro_dlf.distill` for design sets that are
not held in memory: the design points and the teachers' values arrive as a
design stream (:mod:`pyro_dlf.data.streams`), and the fit is
:class:`~pyro_dlf.infer.StreamingEM` (exact E-step from streamed statistics,
one M-step gradient step per batch, closed-form ``σ_f²``). Under
``torch.distributed`` each process passes its own shard and the processes
agree on every update (see :mod:`pyro_dlf.infer.streaming`); only rank 0
shows progress. :func:`init_distributed` starts the process group from the
environment ``torchrun`` sets, with a timeout so that a failed process ends
the job instead of hanging it.

Differences from :func:`~pyro_dlf.distill`, each for a reason: the network
starts from its random initialization (the MMD initialization needs random
access to the design points); the input and output standardization come from
one extra pass (streamed, all-reduced moments); classification logits are
centred per point as they stream; regression teachers have one noise
variance each (an inverse gamma is fitted to them, SPEC §2: the i.i.d. law --
the factor-dependent law of ``distill(noise_given_factors=...)`` is not
streamed).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from pyro_dlf._validation import check_loading_hidden
from pyro_dlf.api import scheduled_adam
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.infer.streaming import StreamingEM
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.noise import fit_inverse_gamma
from pyro_dlf.student import Student

#: How long :func:`close_distributed` lets gloo's worker threads release their last tensors.
_RELEASE_PAUSE_SECONDS = 0.2

__all__ = ["close_distributed", "distill_stream", "init_distributed", "is_main_process"]


def init_distributed(backend: Optional[str] = None, timeout_seconds: float = 300.0) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``
    in the environment); returns ``(rank, world_size)``, ``(0, 1)`` outside ``torchrun``.

    :param backend: ``"gloo"`` (CPU) or ``"nccl"`` (GPU); default NCCL when CUDA is available.
    :param timeout_seconds: how long a collective waits for the other processes before failing.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
    return dist.get_rank(), dist.get_world_size()


def close_distributed(completed: bool = True) -> None:
    """Leave the process group: a barrier and a short pause (when this process ``completed``
    its work), then :func:`torch.distributed.destroy_process_group`; nothing outside a process group.

    Why: gloo runs each collective on a worker thread that lets go of the collective's
    tensors only *after* the caller has been told it finished. A tensor whose Python object
    is gone by then needs the interpreter lock to be freed; if the process has meanwhile
    reached interpreter shutdown, the worker thread cannot take the lock and the process
    aborts (``terminate called without an active exception``, SIGABRT) although its work
    was done and its files written. The barrier makes every process reach the end
    together; the pause (0.2 s, once per job) gives the worker threads time to let go while
    the interpreter is alive. After a failure (``completed=False``) the other processes
    may be gone, so there is no barrier: the group is only destroyed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if completed:
            dist.barrier()
            time.sleep(_RELEASE_PAUSE_SECONDS)
    finally:
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that logs, shows progress and saves."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class _Centred:
    """A classification stream with its logits centred per point (the DLF models centred logits)."""

    def __init__(self, stream: Iterable) -> None:
        self.stream = stream

    def __iter__(self):
        for xb, fb in self.stream:
            yield xb, fb - fb.mean(-1, keepdim=True)


def _moments(stream: Iterable, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
    """Streamed means and standard deviations of the inputs (per feature) and of the teacher values
    (overall; per class for logits), summed over processes."""
    sx = sxx = sf = sff = None
    rows = values = 0
    for xb, fb in stream:
        xb, fb = xb.to(device=device, dtype=torch.float64).flatten(1), fb.to(device=device, dtype=torch.float64)
        flat = fb.reshape(-1, fb.shape[-1]) if fb.dim() == 3 else fb.reshape(-1, 1)
        parts = (xb.sum(0), xb.pow(2).sum(0), flat.sum(0), flat.pow(2).sum(0))
        sx, sxx, sf, sff = parts if sx is None else (sx + parts[0], sxx + parts[1], sf + parts[2], sff + parts[3])
        rows, values = rows + xb.shape[0], values + flat.shape[0]
    if sx is None:
        raise ValueError("stream: yielded no batch; a design stream must yield (x_batch, f_batch) pairs")
    packed = torch.cat([sx, sxx, sf, sff, torch.tensor([rows, values], dtype=torch.float64, device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(packed)
    d, c = sx.numel(), sf.numel()
    sx, sxx, sf, sff = packed[:d], packed[d:2 * d], packed[2 * d:2 * d + c], packed[2 * d + c:2 * d + 2 * c]
    rows, values = int(packed[-2]), int(packed[-1])
    x_mean = sx / rows
    x_sd = (sxx / rows - x_mean ** 2).clamp_min(0).sqrt()
    f_mean = sf / values
    f_var = float((sff.sum() / (values * c) - (sf.sum() / (values * c)) ** 2))
    x_sd = torch.where(x_sd > 1e-8, x_sd, torch.ones_like(x_sd))
    return x_mean.to(dtype), x_sd.to(dtype), f_mean.to(dtype), torch.tensor(max(f_var, 1e-16) ** 0.5, dtype=dtype), rows, values


def distill_stream(
    stream: Iterable,
    *,
    num_factors: int,
    teacher_noise_variances: Optional[Union[Tensor, Sequence[float]]] = None,
    task: str = "regression",
    covariance: Optional[str] = None,
    hidden: Sequence[int] = (50,),
    loading_hidden: Optional[Sequence[int]] = None,
    num_iterations: int = 100,
    lr: float = 1e-2,
    lr_decay: float = 0.1,
    warmup: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> Student:
    """Distill a teacher ensemble given as a design stream (see the module docstring).

    :param stream: re-iterable ``(x_batch (b, d), f_batch (n, b) or (n, b, c))`` pairs; under
        ``torch.distributed`` this process's shard (the same number of batches on every process).
    :param num_factors: ``q``.
    :param teacher_noise_variances: regression: each teacher's noise variance (``n`` values).
    :param task: ``"regression"`` or ``"classification"`` (logits, centred per point).
    :param covariance: classification: ``"full"`` (default) or ``"separable"``.
    :param hidden: widths of the MLP body.
    :param loading_hidden: widths of a separate body for the loadings (as :func:`~pyro_dlf.distill`).
    :param num_iterations: EM iterations (each: two passes over the stream).
    :param lr, lr_decay, warmup: Adam's step size and its schedule (as :func:`~pyro_dlf.distill`).
    :param seed: seeds the network initialization (identical on every process).
    :param device: where the model lives; batches are moved there as they stream.
    :returns: the fitted :class:`~pyro_dlf.student.Student`; ``student.history`` holds the
        negative log marginal likelihood per observed scalar before each iteration.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
    loading_hidden = check_loading_hidden(loading_hidden, False)
    device = torch.device(device) if device is not None else torch.device("cpu")
    source = _Centred(stream) if task == "classification" else stream
    moved = _OnDevice(source, device, dtype)
    first_x, first_f = next(iter(moved))
    multivariate = first_f.dim() == 3
    if task == "classification" and not multivariate:
        raise ValueError("stream: classification batches must hold logits (n, b, c)")
    if task == "regression":
        if teacher_noise_variances is None:
            raise ValueError("teacher_noise_variances: regression needs each teacher's noise variance (n values)")
        noise_prior = fit_inverse_gamma(torch.as_tensor(teacher_noise_variances, dtype=torch.float64).reshape(-1))
    else:
        if teacher_noise_variances is not None:
            raise ValueError("teacher_noise_variances is for regression teachers; drop it for logits")
        noise_prior = (None, None)
    x_mean, x_sd, f_mean, f_sd, _, _ = _moments(moved, dtype, device)
    num_outputs = first_f.shape[-1] if multivariate else None
    covariance = covariance or ("full" if task == "classification" else "separable")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = DeepLatentFactor(first_x.shape[1], num_factors, tuple(hidden), num_outputs,
                                 covariance=covariance if multivariate else "separable",
                                 centered_loadings=task == "classification" and covariance == "full",
                                 loading_hidden=loading_hidden).to(dtype=dtype, device=device)
    with torch.no_grad():
        model.input_loc.copy_(x_mean)
        model.input_scale.copy_(x_sd)
        model.output_loc.copy_(f_mean if multivariate else f_mean.reshape(()))
        model.output_scale.copy_(f_sd)
    model.set_noise_variance(0.1 * float(f_sd) ** 2)
    optim = scheduled_adam(lr, lr_decay, warmup, num_iterations)
    em = StreamingEM(model, ExactFactorPosterior(model), optim)
    history: list[float] = []
    count = None
    bar = tqdm(range(num_iterations), desc="EM (stream)", disable=not (progress and is_main_process()), leave=False)
    for _ in bar:
        loss = em.step(moved)
        if count is None:  # observed scalars: teachers × points × outputs, over all processes
            count = em._stream_stats.num_members * em._stream_stats.num_points * (num_outputs or 1)
        history.append(loss / count)
        optim.step()
        bar.set_postfix(nll=f"{history[-1]:.4f}")
    history.append(em.evaluate_loss(moved) / count)
    student = Student(model, task, *noise_prior, centered_logits=task == "classification")
    student.history = history
    if not all(math.isfinite(h) for h in history):
        raise RuntimeError(f"distill_stream: the fit diverged (negative log-likelihood per value {history[-1]}); lower lr (now {lr:g})")
    return student


class _OnDevice:
    """The stream's batches moved to the model's device and dtype."""

    def __init__(self, stream: Iterable, device: torch.device, dtype: torch.dtype) -> None:
        self.stream, self.device, self.dtype = stream, device, dtype

    def __iter__(self):
        for xb, fb in self.stream:
            yield xb.to(device=self.device, dtype=self.dtype), fb.to(device=self.device, dtype=self.dtype)
