r"""Exact EM over a stream of design-point batches, on one process or sharded over many (torch.distributed).

:class:`StreamingEM` runs the iteration of :class:`~pyro_dlf.infer.EM` on a
*design stream* (:mod:`pyro_dlf.data.streams`: an iterable of ``(x_b, f_b)``
batches), so the teacher values never need to exist as one ``(n, m)`` tensor:

1. **E-step**: the sufficient statistics ``Σ_j Φ_j^T Φ_j``, ``Σ_j Φ_j^T r_ij``,
   ``Σ_j ‖r_ij‖²`` (mathematics §3) are sums over design points, accumulated batch by
   batch; the posterior of every teacher's factors follows in closed form.
   (They come from the previous iteration's last pass, as in ``EM``.)
2. **M-step for θ**: ``num_m_steps`` optimizer steps, each on the gradient of the
   expected complete-data negative log-likelihood of the *whole* stream,
   accumulated over one pass (each batch's per-scalar objective weighted by its
   share of the scalars). This is the mathematics of ``EM(..., num_m_steps=k,
   batch_size=None)``: the same objective, the same steps, up to the order of
   floating-point sums. With ``per_batch_steps=True`` the M-step is instead one
   pass of one step per batch (stochastic minibatch steps in stream order, as
   ``EM(..., batch_size=b)`` takes them in shuffled order).
3. **M-step for σ_f²** and the next E-step's statistics: one more pass at the
   new θ.

So an iteration is ``num_m_steps + 1`` passes over the stream (two with
``per_batch_steps=True``), and memory is that of one batch plus ``O(n q²)``.
Each batch's layout and dtype are checked on every pass; its values are not
scanned again: every value reaches the pass's sums and the step's gradient,
which are checked instead, and only when one of them is not finite is the
stream searched for the batch at fault, which the error names.

**Several processes** (``torch.distributed`` initialized, e.g. by ``torchrun``;
gloo on CPU, NCCL on GPU): each process streams its own shard of the design
points (:meth:`~pyro_dlf.data.streams.TensorStream.shard`); the statistics and
the ``σ_f²`` sums are all-reduced, so every process computes the same
posterior, the same PX-EM step and the same ``σ_f²``. Each M-step's gradient is
all-reduced once (summed: each process has weighted its batches by their share
of *all* processes' scalars), so the fit is the single-process fit on the union
of the shards and an iteration costs ``num_m_steps`` all-reduces for the M-step
and four for the statistics (five with a nugget that grows with the distance),
whatever the number of batches. With ``per_batch_steps=True`` each batch's gradient is
averaged over processes before its step (what ``DistributedDataParallel``
does): one collective per batch, and with equal shard batches the iteration is
the single-process one on the union of the shards' batches. Parameters are
broadcast from rank 0 at the first step. Every process must yield the same
number of batches (checked at the first pass); collective operations time out
after the process group's ``timeout``, so a crashed process ends the job with
an error instead of a hang.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable, Optional

import pyro.optim
import torch
import torch.distributed as dist
from torch import Tensor

from pyro_dlf._validation import (check_design_points, check_dtype, check_finite_outputs, check_flag, check_num_factors,
                                  check_teacher_values)
from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior
from pyro_dlf.infer.em import EM
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor
from pyro_dlf.sufficient_statistics import FactorStatistics, batch_statistics, expected_squared_error_from_statistics

__all__ = ["StreamingEM"]


class StreamingEM(EM):
    """Exact EM on a design stream, single-process or data-parallel (see the module docstring).

    :param model: a :class:`~pyro_dlf.models.DeepLatentFactor`.
    :param guide: its :class:`~pyro_dlf.guides.ExactFactorPosterior`.
    :param optim: a :class:`pyro.optim.PyroOptim`, as for SVI.
    :param loss: the M-step objective (default :func:`~pyro_dlf.infer.expected_complete_nll`), a
        mean over a batch's scalars (the whole stream's objective is their count-weighted mean).
    :param num_m_steps: optimizer steps per iteration, each on the whole stream's gradient (one pass each),
        as ``EM(num_m_steps=..., batch_size=None)``; ignored with ``per_batch_steps=True``.
    :param per_batch_steps: take one step per batch instead (one pass per iteration; stochastic minibatch
        steps in stream order, one collective per batch under ``torch.distributed``).
    :param noise_floor: lower bound of ``σ_f²`` relative to ``model.output_scale ** 2``.
    :param expand: the parameter-expanded EM step after each E-step.
    :param process_group: the ``torch.distributed`` group (default: the world, when initialized).
    """

    def __init__(self, model: DeepLatentFactor, guide: ExactFactorPosterior, optim: pyro.optim.PyroOptim,
                 loss: Optional[Callable[..., Tensor]] = None, *, num_m_steps: int = 10, per_batch_steps: bool = False,
                 noise_floor: float = 1e-6, expand: bool = True, process_group=None) -> None:
        super().__init__(model, guide, optim, loss, num_m_steps=num_m_steps, batch_size=None, noise_floor=noise_floor, expand=expand)
        self.per_batch_steps = check_flag(per_batch_steps, "per_batch_steps")
        self.distributed = dist.is_available() and dist.is_initialized()
        self.group = process_group
        self._stream_stats: Optional[FactorStatistics] = None
        self._stream_count: Optional[int] = None
        self._num_batches: Optional[int] = None
        self._synced = False
        self._stream: Optional[Iterable] = None

    # ---------------------------------------------------------- collectives
    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if self.distributed else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if self.distributed else 1

    def _sum(self, t: Tensor) -> Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def _reduce_gradients(self, params: list[Tensor], average: bool = True) -> None:
        if not self.distributed:
            return
        # One all-reduce per dtype (as DDP buckets them): a collective's latency, not its size,
        # dominates at these parameter counts.
        buckets: dict = {}
        for p in params:
            buckets.setdefault((p.dtype, p.device), []).append(p)
        for group in buckets.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            if average:
                flat /= self.world_size
            for p, part in zip(group, flat.split([p.numel() for p in group])):
                p.grad = part.view_as(p)

    def _broadcast_parameters(self) -> None:
        if self.distributed and not self._synced:
            with torch.no_grad():
                for t in (*self.model.parameters(), *self.model.buffers()):
                    dist.broadcast(t.data, src=0, group=self.group)
        self._synced = True

    def _check_batch_count(self, count: int) -> None:
        if self._num_batches is None:
            counts = torch.tensor([count, -count], dtype=torch.float64)
            if self.distributed:
                dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=self.group)
            if counts[0] != -counts[1]:
                raise ValueError(f"stream: the processes yield different numbers of batches (between {int(-counts[1])} "
                                 f"and {int(counts[0])}); give every process a shard with the same batch count")
            self._num_batches = count
        elif count != self._num_batches:
            raise ValueError(f"stream: this pass yielded {count} batches, the first {self._num_batches}; a design stream "
                             f"must yield the same batches on every pass")

    # --------------------------------------------------------------- passes
    def _check_batch(self, xb: Tensor, fb: Tensor, values: bool = False, name: str = "f_batch") -> Tensor:
        """A batch's layout and dtype, on every pass. Its values are scanned only with ``values``: a pass's sums
        and each step's gradient are checked instead (every value reaches them, so a NaN or Inf anywhere makes
        them non-finite), and only then is the stream searched for the batch at fault
        (:meth:`_raise_non_finite`) -- one scan of the data fewer per pass."""
        fb = check_teacher_values(fb, xb, self.model.num_outputs, name, finite=values)
        check_dtype(fb, self.model, name)
        return fb

    def _raise_non_finite(self, stream: Iterable) -> None:
        """Called when a pass's sums or the whole stream's gradient are not finite: find the batch at fault --
        non-finite inputs or values, or network outputs that overflow at its inputs -- and raise naming it."""
        model = self.model
        with torch.no_grad():
            for k, (xb, fb) in enumerate(stream):
                check_design_points(xb, f"stream batch {k}: x_batch", integer_ok=model.custom_body)
                self._check_batch(xb, fb, values=True, name=f"stream batch {k}: f_batch")
                check_finite_outputs(model.mean_loading_and_weight(xb), xb, model.loading_head.weight.dtype,
                                     f"stream batch {k}: x_batch")
        raise ValueError("stream: the sums over its batches are not finite, yet every batch this process streams is finite "
                         "and gives finite outputs: a batch of another process is at fault (see its error), the stream "
                         "yields different values on different passes (a design stream must not), or the values are too "
                         "large for the model's dtype (standardize them)")

    def _check_gradients(self, params: list[Tensor]) -> None:
        if self._stream is not None and not all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params):
            for p in params:
                p.grad = None
            self._raise_non_finite(self._stream)

    def _pass(self, stream: Iterable) -> tuple[FactorStatistics, int]:
        """Statistics (summed over processes) and the observed scalars (for ``σ_f²``)."""
        model = self.model
        stats, count, batches = None, 0, 0
        with torch.no_grad():
            for xb, fb in stream:
                fb = self._check_batch(xb, fb)
                mean, loading, weight = model.mean_loading_and_weight(xb)
                part = batch_statistics(mean, loading, fb, weight=weight)
                stats = part if stats is None else stats + part
                count += fb.numel()
                batches += 1
        self._check_batch_count(batches)
        if stats is None:
            raise ValueError("stream: yielded no batch; a design stream must yield (x_batch, f_batch) pairs")
        stats.gram, stats.cross, stats.residual_sq = (self._sum(t.clone()) for t in (stats.gram, stats.cross, stats.residual_sq))
        if isinstance(stats.log_weight, torch.Tensor):  # a nugget that grows with the distance (mathematics §9.4)
            stats.log_weight = self._sum(stats.log_weight.clone())
        totals = (stats.gram, stats.cross, stats.residual_sq) + ((stats.log_weight,) if isinstance(stats.log_weight, Tensor) else ())
        if not all(bool(torch.isfinite(t).all()) for t in totals):
            self._raise_non_finite(stream)
        sums = self._sum(torch.tensor([float(count), float(stats.num_points)], dtype=torch.float64))
        stats.num_points = int(sums[1])
        check_num_factors(model.num_factors, stats.num_members, model.num_outputs, model.covariance_type)
        return stats, int(sums[0])

    def _accumulated_step(self, stream: Iterable, count: int) -> None:
        """One optimizer step on the whole stream's objective: the batches' gradients, each weighted
        by its share of the ``count`` scalars of all processes, summed over one pass and over processes."""
        params = self._accumulate(((xb, self._check_batch(xb, fb), None) for xb, fb in stream), count)
        self._apply_gradients(params, average=False)  # each process weighted its batches by their share of all

    # ------------------------------------------------------------------ API
    def step(self, stream: Iterable, observed: Optional[Tensor] = None) -> float:  # type: ignore[override]
        """One EM iteration over ``stream`` (``num_m_steps + 1`` passes, or two with ``per_batch_steps``);
        returns the negative log marginal likelihood (summed over teachers and over all processes'
        design points) before the update."""
        if observed is not None:
            raise NotImplementedError("observed: masked teachers are not streamed yet; use EM with observed=")
        self._broadcast_parameters()
        self._stream = stream
        try:
            return self._step(stream)
        finally:
            self._stream = None

    def _step(self, stream: Iterable) -> float:
        """:meth:`step` on a stream whose gradients :meth:`_check_gradients` can search."""
        if self._stream_stats is None:
            self._stream_stats, self._stream_count = self._pass(stream)
        stats = self._stream_stats
        self.guide.set_statistics(stats)
        loss = -float(self._log_likelihood(stats).sum())
        if self.expand:
            self._expand()
        if self.per_batch_steps:
            for xb, fb in stream:
                self._gradient_step(xb, self._check_batch(xb, fb))
        else:
            for _ in range(self.num_m_steps):
                self._accumulated_step(stream, self._stream_count)
        # The next E-step's statistics; σ_f² at the new θ (and the posterior of the old) follows from them.
        stats, count = self._pass(stream)
        self._set_noise(float(expected_squared_error_from_statistics(stats, self.guide.posterior, self.model.separable_class_factor)) / count)
        self._stream_stats, self._stream_count = stats, count
        return loss

    def evaluate_loss(self, stream: Iterable) -> float:  # type: ignore[override]
        """The negative log marginal likelihood at the current parameters (one pass; no update)."""
        stats = self._pass(stream)[0]
        self.guide.set_statistics(stats)
        return -float(self._log_likelihood(stats).sum())
