r"""The scaling benchmark's teachers: ``n`` draws of a known DLF, on design points generated on demand.

``x ~ N(0, I_d)`` (``d = 8``); a random DLF (body 1 × 50, ``q_true = 5``) gives
``f_i(x) = μ(x) + Φ(x)^T z_i + σ ε`` with ``z_i ~ N(0, I)``, ``σ² = 0.01`` (float32),
so the covariance of a teacher at any inputs is known. Shared by
:mod:`pyro_dlf_bench.harness.scale` and :mod:`pyro_dlf_bench.harness.covariance_race`.
"""

from __future__ import annotations

import torch

__all__ = ["HIDDEN", "INPUT_DIM", "NUM_FACTORS_TRUE", "DesignBatches", "TeacherBatches", "in_memory_design", "inputs",
           "teacher_functions", "truth"]

#: Input dimension, true number of factors, and body width of the known DLF.
INPUT_DIM, NUM_FACTORS_TRUE, HIDDEN = 8, 5, 50


def truth(seed: int = 0):
    """The known DLF (seeded)."""
    from pyro_dlf.models import DeepLatentFactor

    torch.manual_seed(seed)
    return DeepLatentFactor(INPUT_DIM, NUM_FACTORS_TRUE, (HIDDEN,), name="scale_truth")


def teacher_functions(n: int, seed: int = 1):
    """The ``n`` teachers as one function ``values(x, key) -> (n, len(x))``; the observation noise is
    drawn from a generator seeded by ``key`` (a batch's first index), so a batch has the same values
    on every pass over a stream."""
    known = truth()
    z = torch.randn(n, NUM_FACTORS_TRUE, generator=torch.Generator().manual_seed(seed))

    def values(x: torch.Tensor, key: int) -> torch.Tensor:
        with torch.no_grad():
            mean, loading = known.mean_and_loading(x.cpu())
            f = mean + z @ loading.T
            noise = torch.randn(f.shape, generator=torch.Generator().manual_seed(1_000_003 * seed + key))
            return (f + 0.1 * noise).to(x.device)

    return values


def inputs(m: int, seed: int = 2) -> torch.Tensor:
    """``m`` design points ``x ~ N(0, I_d)`` (seeded)."""
    return torch.randn(m, INPUT_DIM, generator=torch.Generator().manual_seed(seed))


def in_memory_design(m: int, n: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The streamed design's ``m`` points and ``n`` teachers' values as two tensors ``(m, d)``, ``(n, m)``
    (the same batches, joined)."""
    stream = TeacherBatches(DesignBatches(range(0, m, batch_size), batch_size, m, torch.device("cpu")), teacher_functions(n))
    xs, fs = zip(*stream)
    return torch.cat(xs), torch.cat(fs, 1)


class DesignBatches:
    """Design-point batches ``(start, x_b)`` generated on demand (the same points on every pass; nothing stored)."""

    def __init__(self, starts, batch_size: int, m: int, device) -> None:
        self.starts, self.batch_size, self.m, self.device = list(starts), batch_size, m, device

    def __iter__(self):
        for start in self.starts:
            size = min(self.batch_size, self.m - start)
            yield start, torch.randn(size, INPUT_DIM, generator=torch.Generator().manual_seed(10_000 + start)).to(self.device)

    def __len__(self) -> int:
        return len(self.starts)


class TeacherBatches:
    """``(x_b, f_b)`` with all teachers evaluated at once on each batch (one body pass of the truth)."""

    def __init__(self, batches, teachers) -> None:
        self.batches, self.teachers = batches, teachers

    def __iter__(self):
        for start, xb in self.batches:
            yield xb, self.teachers(xb, start)
