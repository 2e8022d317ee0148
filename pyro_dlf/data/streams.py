r"""Design points and teacher values as streams of batches, so that no ``(n, m)`` tensor need exist.

A *design stream* is any re-iterable object whose iteration yields
``(x_batch, f_batch)`` pairs: design points ``(b, ...)`` and the teachers'
values there, ``(n, b)`` or ``(n, b, c)``. :class:`~pyro_dlf.infer.StreamingEM`
makes a few passes over it per EM iteration; every pass must yield the same
points in the same order (the exact E-step sums over all of them).

* :class:`TensorStream` -- in-memory tensors, cut into batches (and into
  equal shards for several processes: :meth:`TensorStream.shard`).
* :class:`NpyStream` -- two ``.npy`` files read memory-mapped, one batch at a
  time: ``x`` ``(m, ...)`` and the teacher values ``(n, m[, c])``.
* :class:`TeacherStream` -- batches of design points (any iterable, e.g. a
  :class:`torch.utils.data.DataLoader`) and the teachers as callables,
  evaluated batch by batch: the values are never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from pyro_dlf.arrays import load_array

__all__ = ["TensorStream", "NpyStream", "TeacherStream"]


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class TensorStream:
    """Batches of ``batch_size`` design points from in-memory ``x`` ``(m, ...)`` and ``f`` ``(n, m[, c])``."""

    def __init__(self, x: Tensor, f: Tensor, batch_size: int) -> None:
        if not isinstance(x, Tensor) or not isinstance(f, Tensor):
            raise TypeError("x and f must be tensors; for files use NpyStream, for callables TeacherStream")
        if f.dim() < 2 or f.shape[1] != x.shape[0]:
            raise ValueError(f"f must have shape (num_teachers, {x.shape[0]}, ...) to match x, got {tuple(f.shape)}")
        self.x, self.f, self.batch_size = x, f, _positive(batch_size, "batch_size")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.x.shape[0], self.batch_size):
            yield self.x[start:start + self.batch_size], self.f[:, start:start + self.batch_size]

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def shard(self, rank: int, world_size: int) -> "TensorStream":
        """This process's share for ``world_size`` processes: batch ``k`` of shard ``r`` is rows
        ``[(k·world_size + r)·b, … + b)``, so every shard has the same number of batches and batch
        ``k`` of all shards together is one global batch (the last global batch may be shorter)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank!r}, world_size={world_size!r}")
        b, m = self.batch_size, self.x.shape[0]
        per = -(-m // (b * world_size))  # batches per shard
        rows = [torch.arange(start, min(start + b, m)) for k in range(per)
                for start in [(k * world_size + rank) * b] if start < m]
        if len(rows) < per:
            raise ValueError(f"{m} design points in batches of {b} leave shard {rank} of {world_size} with fewer batches "
                             f"than the others; use a batch size that divides the points evenly over the processes")
        index = torch.cat(rows)
        return TensorStream(self.x[index], self.f[:, index], b)


class NpyStream:
    """Batches read from memory-mapped ``.npy`` files: ``x`` ``(m, ...)`` and teacher values ``(n, m[, c])``
    (the layout of :func:`pyro_dlf.distill`); only the current batch is ever in memory.

    :param dtype: the dtype of the yielded tensors (the model's).
    :param rank, world_size: this process's shard for ``world_size`` processes (batch ``k`` of shard ``r``
        is global batch ``k·world_size + r``; see :meth:`TensorStream.shard`).
    """

    def __init__(self, x_path: str, f_path: str, batch_size: int, dtype: torch.dtype = torch.float32,
                 rank: int = 0, world_size: int = 1) -> None:
        self.x, self.f = load_array(x_path, "x_path", mmap=True), load_array(f_path, "f_path", mmap=True)
        if self.f.ndim < 2 or self.f.shape[1] != self.x.shape[0]:
            raise ValueError(f"f_path holds shape {self.f.shape}: it must be (num_teachers, num_points[, c]) with "
                             f"num_points = {self.x.shape[0]} as in x_path")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={rank!r}, world_size={world_size!r}")
        self.batch_size, self.dtype = _positive(batch_size, "batch_size"), dtype
        self.rank, self.world_size = rank, world_size
        m, b = self.x.shape[0], self.batch_size
        self.starts = list(range(rank * b, m, b * world_size))
        if len(self.starts) != -(-m // (b * world_size)):
            raise ValueError(f"{m} design points in batches of {b} leave shard {rank} of {world_size} with fewer batches "
                             f"than the others; use a batch size that divides the points evenly over the processes")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in self.starts:
            stop = start + self.batch_size
            xb = torch.from_numpy(np.array(self.x[start:stop])).to(self.dtype)
            fb = torch.from_numpy(np.array(self.f[:, start:stop])).to(self.dtype)
            yield xb, fb

    def __len__(self) -> int:
        return len(self.starts)


class TeacherStream:
    """Design-point batches with the teachers evaluated on each: ``(x_b, stack_i teacher_i(x_b))``.

    :param batches: a re-iterable of design-point batches (e.g. a ``DataLoader`` without shuffling,
        or a list); a batch may also be an ``(x, ...)`` tuple, whose first entry is used.
    :param teachers: callables ``x_b → (b,)`` or ``(b, c)`` values; evaluated without gradients.
    """

    def __init__(self, batches: Iterable, teachers: Sequence[Callable[[Tensor], Tensor]]) -> None:
        if isinstance(batches, Iterator):
            raise TypeError("batches must be re-iterable (a list, a DataLoader), not a one-shot iterator: EM passes over it several times")
        if not teachers or not all(callable(t) for t in teachers):
            raise TypeError("teachers must be a non-empty sequence of callables x -> values")
        self.batches, self.teachers = batches, list(teachers)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.batches:
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            with torch.no_grad():
                fb = torch.stack([t(xb) for t in self.teachers])
            yield xb, fb

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]
