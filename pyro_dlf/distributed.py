r"""Distilling from a stream of batches, on one process or on many (``torchrun``).

:func:`distill_stream` is :func:`pyro_dlf.distill` for design sets that are
not held in memory: the design points and the teachers' values arrive as a
design stream (:mod:`pyro_dlf.data.streams`), and the fit is
:class:`~pyro_dlf.infer.StreamingEM` (exact E-step from streamed statistics,
by default one M-step gradient step per batch -- the schedule of
:func:`~pyro_dlf.distill`, one pass of minibatch steps per iteration -- or, with
``num_m_steps=k``, ``k`` steps on the whole stream's gradient; closed-form ``σ_f²``). Under
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
variance each (an inverse gamma is fitted to them, mathematics §2: the i.i.d. law --
the factor-dependent law of ``distill(noise_given_factors=...)`` is not
streamed).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from dataclasses import replace
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from pyro_dlf._progress import progress_bar
from pyro_dlf._warnings import say_once
from pyro_dlf._validation import (check_choice, check_design_points, check_int, check_magnitude_value, check_noise_variances,
                                  check_num_points, check_spread)
from pyro_dlf.fitting.data import resolve_num_factors
from pyro_dlf.fitting.divergence import warn_if_diverged
from pyro_dlf.fitting.network import new_network
from pyro_dlf.fitting.schedule import scheduled_adam
from pyro_dlf.fitting.options import DistillOptions, check_options
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.infer.streaming import StreamingEM
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.likelihoods import InverseGammaNoise
from pyro_dlf.noise import HeavyTailWarning
from pyro_dlf.selection import deviation_gram
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


def _batch(batch, k: int) -> tuple[Tensor, Tensor]:
    """Batch ``k`` of a design stream as real tensors ``(x_b (b, d), f_b (n, b[, c]))``, checked, on the CPU or where they are."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"stream: batch {k} is a {type(batch).__name__}; a design stream yields (x_batch, f_batch) pairs")
    parts = []
    for value, name in zip(batch, (f"stream batch {k}: x_batch", f"stream batch {k}: f_batch")):
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "c" or value.dtype.kind not in "fiu":
                check_design_points(value, name)  # raises, naming the batch
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}; give tensors (or NumPy arrays)")
        if value.is_complex() or value.dtype == torch.bool:
            check_design_points(value, name)  # complex: raises, naming the batch and the fix
            raise TypeError(f"{name} holds booleans; give real values")
        parts.append(value)
    xb, fb = parts
    if xb.dim() != 2 or xb.shape[0] == 0:
        raise ValueError(f"stream batch {k}: x_batch has shape {tuple(xb.shape)}; the MLP body needs (b, d) inputs with b >= 1")
    if fb.dim() not in (2, 3) or fb.shape[1] != xb.shape[0]:
        raise ValueError(f"stream batch {k}: f_batch has shape {tuple(fb.shape)} for {xb.shape[0]} design points; "
                         f"give (num_teachers, {xb.shape[0]}) or (num_teachers, {xb.shape[0]}, c)")
    for value, name in ((xb, "x_batch"), (fb, "f_batch")):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"stream batch {k}: {name} contains NaN or Inf; remove or impute them before distilling")
    return xb, fb


def _describe(layout: tuple[int, int, int]) -> str:
    features, teachers, outputs = layout
    return f"{teachers} teachers' values on {features} input feature(s)" + (f" with {outputs} outputs" if outputs else "")


class _Survey:
    """One pass over a design stream: its layout, checked on every batch; the input and output moments;
    the largest magnitudes; and the Gram matrix of the teachers' deviations (for ``num_factors="auto"``)."""

    def __init__(self, stream: Iterable, classification: bool, separable: bool, dtype: torch.dtype, device: torch.device) -> None:
        sx = sxx = sf = sff = gram = None
        rows = values = batches = 0
        x_max = f_max = 0.0
        layout = None
        for k, batch in enumerate(stream):
            xb, fb = _batch(batch, k)
            shape = (xb.shape[1], fb.shape[0], fb.shape[2] if fb.dim() == 3 else 0)
            if layout is None:
                layout = shape
            elif shape != layout:
                raise ValueError(f"stream batch {k} holds {_describe(shape)} but batch 0 holds {_describe(layout)}: every batch "
                                 f"must hold the same teachers' values on inputs of the same width")
            x64, f64 = xb.to(device=device, dtype=torch.float64), fb.to(device=device, dtype=torch.float64)
            x_max, f_max = max(x_max, float(x64.abs().max())), max(f_max, float(f64.abs().max()))
            if classification:
                f64 = f64 - f64.mean(-1, keepdim=True)
            flat = f64.reshape(-1, f64.shape[-1]) if f64.dim() == 3 else f64.reshape(-1, 1)
            parts = (x64.sum(0), x64.pow(2).sum(0), flat.sum(0), flat.pow(2).sum(0), deviation_gram(f64, separable=separable))
            sx, sxx, sf, sff, gram = parts if sx is None else (sx + parts[0], sxx + parts[1], sf + parts[2], sff + parts[3], gram + parts[4])
            rows, values, batches = rows + xb.shape[0], values + flat.shape[0], batches + 1
        if sx is None:
            raise ValueError("stream: yielded no batch; a design stream must yield (x_batch, f_batch) pairs")
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            # Every process must stream the same teachers on the same inputs.
            agree = torch.tensor([*layout, *(-v for v in layout)], dtype=torch.float64, device=device)
            dist.all_reduce(agree, op=dist.ReduceOp.MAX)
            if agree[:3].tolist() != [-v for v in agree[3:].tolist()]:
                raise ValueError("stream: the processes' shards hold different numbers of teachers, inputs or outputs; "
                                 "give every process a shard of the same data")
        d, c = sx.numel(), sf.numel()
        packed = torch.cat([sx, sxx, sf, sff, gram.flatten(), torch.tensor([rows, values], dtype=torch.float64, device=device)])
        largest = torch.tensor([x_max, f_max], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(packed)
            dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        sx, sxx, sf, sff = packed[:d], packed[d:2 * d], packed[2 * d:2 * d + c], packed[2 * d + c:2 * d + 2 * c]
        self.gram = packed[2 * d + 2 * c:-2].reshape(gram.shape)
        self.rows, self.values = int(packed[-2]), int(packed[-1])
        self.x_max, self.f_max = (float(v) for v in largest)
        self.in_features, self.num_teachers = layout[0], layout[1]
        self.num_outputs = layout[2] or None
        x_mean = sx / self.rows
        x_sd = (sxx / self.rows - x_mean ** 2).clamp_min(0).sqrt()
        f_mean = sf / self.values
        f_var = float((sff.sum() / (self.values * c) - (sf.sum() / (self.values * c)) ** 2))
        # A constant input column (no spread beyond rounding) is left unscaled.
        x_sd = torch.where(x_sd > 16 * torch.finfo(dtype).eps * x_mean.abs(), x_sd, torch.ones_like(x_sd))
        x_sd = torch.where(x_sd > 0, x_sd, torch.ones_like(x_sd))
        self.x_mean, self.x_sd, self.f_mean = x_mean.to(dtype), x_sd.to(dtype), f_mean.to(dtype)
        self.f_sd = torch.tensor(max(f_var, 0.0) ** 0.5, dtype=dtype)
        # The mean squared deviation across teachers (the trace of the Gram over the values).
        self.spread = float(self.gram.trace()) / (self.values * c)


def distill_stream(
    stream: Iterable,
    *,
    num_factors: Union[int, str] = "auto",
    teacher_noise_variances: Optional[Union[Tensor, Sequence[float]]] = None,
    task: str = "regression",
    covariance: Optional[str] = None,
    hidden: Sequence[int] = (50,),
    loading_hidden: Optional[Sequence[int]] = None,
    num_iterations: int = 100,
    num_m_steps: Optional[int] = None,
    lr: float = 1e-2,
    lr_decay: float = 0.1,
    warmup: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> Student:
    """Distill a teacher ensemble given as a design stream (see the module docstring).

    Every input is checked before the fit, in one extra pass over the stream (each batch's
    layout, finite values, magnitudes; the same teachers in every batch). Each warning of a call
    is said once.

    :param stream: re-iterable ``(x_batch (b, d), f_batch (n, b) or (n, b, c))`` pairs; under
        ``torch.distributed`` this process's shard (the same number of batches on every process).
    :param num_factors: ``q``, or ``"auto"`` (default): chosen from the teachers' streamed values as
        by :func:`pyro_dlf.distill` (:func:`pyro_dlf.selection.choose_num_factors`);
        ``student.num_factors_choice`` records it.
    :param teacher_noise_variances: regression: each teacher's noise variance (``n`` positive values).
    :param task: ``"regression"`` or ``"classification"`` (logits, centred per point).
    :param covariance: multivariate teachers: ``"full"`` (classification default) or ``"separable"``.
    :param hidden: widths of the MLP body.
    :param loading_hidden: widths of a separate body for the loadings (as :func:`~pyro_dlf.distill`).
    :param num_iterations: EM iterations.
    :param num_m_steps: ``None`` (default): one gradient step per batch, one pass per iteration (what
        :func:`~pyro_dlf.distill` does with its minibatches, here in stream order; one collective per
        batch under ``torch.distributed``); an integer ``k``: ``k`` steps per iteration, each on the
        whole stream's gradient (``k`` passes, one collective each; :class:`~pyro_dlf.infer.StreamingEM`).
    :param lr, lr_decay, warmup: Adam's step size and its schedule (as :func:`~pyro_dlf.distill`).
    :param seed: seeds the network initialization (identical on every process).
    :param progress: show a bar over the EM iterations (rank 0 only; ``TQDM_DISABLE`` hides it).
    :param device: where the model lives; batches are moved there as they stream.
    :param dtype: the model's dtype, ``torch.float32`` or ``torch.float64``.
    :returns: the fitted :class:`~pyro_dlf.student.Student`; ``student.history`` holds the
        negative log marginal likelihood per observed scalar before each iteration.
    """
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            student = _distill_stream(stream, num_factors, teacher_noise_variances, task, covariance, hidden, loading_hidden,
                                      num_iterations, num_m_steps, lr, lr_decay, warmup, seed, progress, device, dtype)
    finally:
        say_once(caught, 2)
    return student


def _stream_options(stream, num_factors, task, covariance, hidden, loading_hidden, num_iterations, num_m_steps, lr, lr_decay,
                    warmup, seed, progress, device, dtype) -> DistillOptions:
    """The options :func:`distill_stream` shares with :func:`~pyro_dlf.distill`, checked once by the same
    :func:`~pyro_dlf.fitting.options.check_options`, and the stream's own constraints."""
    if isinstance(stream, (Tensor, np.ndarray, str, bytes)) or not isinstance(stream, Iterable):
        raise TypeError(f"stream must be a re-iterable design stream of (x_batch, f_batch) pairs (TensorStream, NpyStream, "
                        f"TeacherStream or a list), got {type(stream).__name__}; for tensors use TensorStream(x, f, batch_size)")
    if isinstance(stream, Iterator):
        raise TypeError("stream is a one-shot iterator (e.g. a generator); EM passes over the stream several times: pass a "
                        "list of batches, TensorStream, NpyStream or TeacherStream")
    task = check_choice(task, "task", ("regression", "classification"))
    num_iterations = check_int(num_iterations, "num_iterations", 1)
    num_m_steps = check_int(num_m_steps, "num_m_steps", 1, allow_none=True,
                            fix="None takes one step per batch, an integer k takes k whole-stream steps per iteration")
    o = check_options(num_factors=num_factors, covariance=covariance, hidden=hidden, loading_hidden=loading_hidden, lr=lr,
                      lr_decay=lr_decay, warmup=warmup, seed=seed, progress=progress, device=device, dtype=dtype)
    if o.hidden_candidates is not None:
        raise ValueError(f"hidden: a streamed fit takes one body's widths such as (50,), got {hidden!r}")
    return replace(o, task=task, num_iterations=num_iterations, num_m_steps=num_m_steps, device=o.device or torch.device("cpu"))


def _survey(stream, o: DistillOptions, teacher_noise_variances) -> tuple["_Survey", Optional[InverseGammaNoise]]:
    """One checking pass over the stream (layout, magnitudes, spread) and the regression noise law (mathematics §2.4)."""
    if o.task == "classification" and teacher_noise_variances is not None:
        raise ValueError("teacher_noise_variances is for regression teachers; drop it for logits")
    if o.task == "regression" and teacher_noise_variances is None:
        raise ValueError("teacher_noise_variances: regression needs each teacher's noise variance (n values)")
    covariance = o.covariance or ("full" if o.task == "classification" else "separable")
    survey = _Survey(stream, o.task == "classification", covariance == "separable", o.dtype, o.device)
    if o.task == "classification" and survey.num_outputs is None:
        raise ValueError("stream: classification batches must hold logits (n, b, c)")
    if o.covariance is not None and survey.num_outputs is None:
        raise ValueError(f"covariance={o.covariance!r} is an output-covariance structure for (n, b, c) teachers; drop it for one regression output")
    check_num_points(survey.rows, "stream (its design points)")
    check_magnitude_value(survey.x_max, survey.rows * survey.in_features, o.dtype, "stream x_batch (the design points)")
    check_magnitude_value(survey.f_max, survey.values * (survey.num_outputs or 1), o.dtype, "stream f_batch (the teacher values)")
    check_spread(survey.spread, o.dtype, "stream f_batch (the teacher values)")
    if o.task != "regression":
        return survey, None
    v = check_noise_variances(teacher_noise_variances, survey.num_teachers)
    if v.dim() != 1:
        raise ValueError(f"teacher_noise_variances: a streamed fit takes one variance per teacher ({survey.num_teachers},), "
                         f"got {tuple(v.shape)}")
    return survey, InverseGammaNoise.fit(v)


def _run_stream_em(model: DeepLatentFactor, moved: Iterable, o: DistillOptions) -> list[float]:
    """EM on the stream (:class:`~pyro_dlf.infer.StreamingEM`) with :func:`~pyro_dlf.distill`'s Adam schedule."""
    optim = scheduled_adam(o.lr, o.lr_decay, o.warmup, o.num_iterations)
    if o.num_m_steps is None:
        em = StreamingEM(model, ExactFactorPosterior(model), optim, per_batch_steps=True)
    else:
        em = StreamingEM(model, ExactFactorPosterior(model), optim, num_m_steps=o.num_m_steps)
    history: list[float] = []
    count = None
    bar = progress_bar(range(o.num_iterations), desc="EM (stream)", enabled=o.progress and is_main_process())
    for _ in bar:
        loss = em.step(moved)
        if count is None:  # observed scalars: teachers × points × outputs, over all processes
            count = em._stream_stats.num_members * em._stream_stats.num_points * (model.num_outputs or 1)
        history.append(loss / count)
        optim.step()
        bar.set_postfix(nll=f"{history[-1]:.4f}")
    history.append(em.evaluate_loss(moved) / count)
    return history


def _distill_stream(stream, num_factors, teacher_noise_variances, task, covariance, hidden, loading_hidden, num_iterations,
                    num_m_steps, lr, lr_decay, warmup, seed, progress, device, dtype) -> Student:
    o = _stream_options(stream, num_factors, task, covariance, hidden, loading_hidden, num_iterations, num_m_steps, lr,
                        lr_decay, warmup, seed, progress, device, dtype)
    survey, noise_law = _survey(stream, o, teacher_noise_variances)
    num_outputs, multivariate = survey.num_outputs, survey.num_outputs is not None
    covariance = o.covariance or ("full" if o.task == "classification" else "separable")
    # Centred logits sum to zero over classes: each teacher then gives only c − 1 free columns.
    free_outputs = None if num_outputs is None else num_outputs - (1 if o.task == "classification" else 0)
    num_factors, factor_choice = resolve_num_factors(o.num_factors, lambda: survey.gram, survey.num_teachers, free_outputs,
                                                     covariance, multivariate)
    source = _OnDevice(stream, o.device, o.dtype)
    moved = _Centred(source) if o.task == "classification" else source
    with torch.random.fork_rng(devices=[o.device] if o.device.type == "cuda" else []):
        torch.manual_seed(o.seed)
        model = new_network(survey.in_features, num_factors, o.hidden, num_outputs, covariance,
                            o.task == "classification" and covariance == "full", o, o.device)
    with torch.no_grad():
        model.input_loc.copy_(survey.x_mean)
        model.input_scale.copy_(survey.x_sd)
        model.output_loc.copy_(survey.f_mean if multivariate else survey.f_mean.reshape(()))
        model.output_scale.copy_(survey.f_sd)
    model.set_noise_variance(0.1 * float(survey.f_sd) ** 2)
    history = _run_stream_em(model, moved, o)
    # The design points' epistemic variance would need another pass over the stream: the likelihood's signs are checked.
    warn_if_diverged(history, o.lr, None, survey.spread, num_outputs, caller="distill_stream")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeavyTailWarning)  # fit_inverse_gamma said it, naming teacher_noise_variances
        student = Student(model, o.task, centered_logits=o.task == "classification", noise_law=noise_law)
    student.history = history
    student.num_factors_choice = factor_choice
    return student


class _OnDevice:
    """The stream's batches (checked: :func:`_batch`) moved to the model's device and dtype."""

    def __init__(self, stream: Iterable, device: torch.device, dtype: torch.dtype) -> None:
        self.stream, self.device, self.dtype = stream, device, dtype

    def __iter__(self):
        for k, batch in enumerate(self.stream):
            xb, fb = _batch(batch, k)
            yield xb.to(device=self.device, dtype=self.dtype), fb.to(device=self.device, dtype=self.dtype)
