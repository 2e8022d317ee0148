"""StreamingEM: the exact EM on a stream of batches, in one process and data-parallel over two (gloo)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pyro
import pyro.optim
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_dlf.data import NpyStream, TeacherStream, TensorStream
from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM, StreamingEM
from pyro_dlf.models import DeepLatentFactor

from synthetic import synthetic_teachers


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return DeepLatentFactor(1, 3, (16,), name=f"stream{seed}").to(dtype)


def _fit(em_cls, data, steps, seed=0):
    pyro.clear_param_store()
    model = _model(seed)
    guide = ExactFactorPosterior(model)
    em = em_cls(model, guide, pyro.optim.Adam({"lr": 1e-2}))
    losses = [em.step(*data) if isinstance(data, tuple) else em.step(data) for _ in range(steps)]
    return model, losses


def test_streaming_em_is_the_in_memory_em_with_one_gradient_step_per_batch():
    _, x, f = synthetic_teachers(12, 96, seed=3)
    x, f = x.double(), f.double()
    stream = TensorStream(x, f, batch_size=32)
    streamed, losses = _fit(StreamingEM, stream, 5)
    pyro.clear_param_store()
    model = _model(0)
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=3, batch_size=32)
    em._batches = lambda m, count: iter(torch.arange(m).split(32))  # the stream's order: batches in sequence
    reference = [em.step(x, f) for _ in range(5)]
    assert losses == pytest.approx(reference, rel=1e-10)
    for a, b in zip(streamed.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_streams_from_files_and_from_callables_match_the_tensor_stream(tmp_path):
    _, x, f = synthetic_teachers(6, 50, seed=1)
    x, f = x.double(), f.double()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "f.npy", f.numpy())
    from_files = list(NpyStream(str(tmp_path / "x.npy"), str(tmp_path / "f.npy"), 16, dtype=torch.float64))
    in_memory = list(TensorStream(x, f, 16))
    teachers = [lambda xb, i=i: f[i, :].new_tensor(np.interp(xb[:, 0].numpy(), x[:, 0].numpy(), f[i].numpy())) for i in range(6)]
    sorted_x = torch.sort(x[:, 0]).values.unsqueeze(-1)
    evaluated = list(TeacherStream(list(sorted_x.split(16)), teachers))
    assert len(from_files) == len(in_memory) == 4
    for (xa, fa), (xb, fb) in zip(from_files, in_memory):
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(fa, fb)
    assert evaluated[0][1].shape == (6, 16)
    sharded = [list(NpyStream(str(tmp_path / "x.npy"), str(tmp_path / "f.npy"), 5, dtype=torch.float64, rank=r, world_size=2))
               for r in (0, 1)]
    torch.testing.assert_close(torch.cat([sharded[0][1][0], sharded[1][1][0]]), x[10:20])  # global batch 1 = rows 10-19
    with pytest.raises(ValueError, match=r"must be \(num_teachers, num_points"):
        np.save(tmp_path / "bad.npy", f.T.numpy())
        NpyStream(str(tmp_path / "x.npy"), str(tmp_path / "bad.npy"), 16)
    with pytest.raises(TypeError, match="re-iterable"):
        TeacherStream(iter([x]), teachers)


def test_a_stream_that_changes_between_passes_is_refused():
    _, x, f = synthetic_teachers(6, 40, seed=2)

    class Shrinking:
        calls = 0

        def __iter__(self):
            Shrinking.calls += 1
            yield from TensorStream(x.double(), f.double(), 10 if Shrinking.calls == 1 else 20)

    with pytest.raises(ValueError, match="must yield the same batches on every pass"):
        _fit(StreamingEM, Shrinking(), 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, crash: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from datetime import timedelta

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=20))
    try:
        _, x, f = synthetic_teachers(12, 96, seed=3)
        stream = TensorStream(x.double(), f.double(), 16).shard(rank, world)
        if crash and rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        model, losses = _fit(StreamingEM, stream, 4, seed=rank)  # different seeds: rank 0's parameters are broadcast
        if rank == 0:
            torch.save({"state": model.state_dict(), "losses": losses}, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_fit_what_one_process_fits_on_the_union_of_their_batches(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), out, False), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    _, x, f = synthetic_teachers(12, 96, seed=3)
    # One process, global batch k = the union of both shards' batch k = rows [32k, 32k + 32).
    single, losses = _fit(StreamingEM, TensorStream(x.double(), f.double(), 32), 4, seed=0)
    assert result["losses"] == pytest.approx(losses, rel=1e-9)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(result["state"][name], value, rtol=1e-6, atol=1e-8)


def test_a_crashed_process_ends_the_job_with_its_error_instead_of_a_hang(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails on purpose"):
        mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "x.pt"), True), nprocs=2, join=True)
