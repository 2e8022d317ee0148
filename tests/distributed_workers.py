"""Helpers of the multi-process tests, in a module the spawned processes can import by name
(tests/ is on the path of every test process; a test module's own name is not importable there)."""

import os
import socket
from datetime import timedelta

import pyro
import pyro.optim
import torch
import torch.distributed as dist

from pyro_dlf.data import TensorStream
from pyro_dlf.distributed import close_distributed
from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import StreamingEM
from pyro_dlf.models import DeepLatentFactor
from synthetic import synthetic_teachers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return DeepLatentFactor(1, 3, (16,), name=f"stream{seed}").to(dtype)


def fit(em_cls, data, steps, seed=0, **options):
    """``steps`` iterations of ``em_cls(..., **options)`` (EM or StreamingEM) from a seeded model; (model, losses)."""
    pyro.clear_param_store()
    model = small_model(seed)
    em = em_cls(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), **options)
    losses = [em.step(*data) if isinstance(data, tuple) else em.step(data) for _ in range(steps)]
    return model, losses


#: The M-step schedules the multi-process tests compare with one process.
SCHEDULES = {"accumulated": {"num_m_steps": 2}, "per_batch": {"per_batch_steps": True}}


def streaming_worker(rank: int, world: int, port: int, out: str, crash: bool, schedule: str = "accumulated") -> None:
    """One process of a gloo job: its shard of the synthetic teachers, 4 StreamingEM iterations with the
    ``schedule`` of :data:`SCHEDULES`; rank 0 saves the fit and the number of all-reduces of the last
    iteration. With ``crash`` rank 1 raises before the first collective."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=20))
    completed = False
    try:
        _, x, f = synthetic_teachers(12, 96, seed=3)
        stream = TensorStream(x.double(), f.double(), 16).shard(rank, world)
        if crash and rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        pyro.clear_param_store()
        model = small_model(rank)  # different seeds: rank 0's parameters are broadcast
        em = StreamingEM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), **SCHEDULES[schedule])
        losses = [em.step(stream) for _ in range(3)]
        calls, all_reduce = [], dist.all_reduce

        def counted(*args, **kwargs):
            calls.append(1)
            return all_reduce(*args, **kwargs)

        dist.all_reduce = counted  # the fourth iteration's collectives
        try:
            losses.append(em.step(stream))
        finally:
            dist.all_reduce = all_reduce
        if rank == 0:
            torch.save({"state": model.state_dict(), "losses": losses, "all_reduces": len(calls),
                        "batches": len(list(stream))}, out)
        completed = True
    finally:
        close_distributed(completed)
