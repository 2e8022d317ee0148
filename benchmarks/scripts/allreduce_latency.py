"""The cost of one gradient all-reduce of the streamed data-parallel EM (a diagnostic of the data-parallel EM, docs/guide/scaling.md).

Two gloo processes on this machine all-reduce a float32 buffer the size of the scaling
benchmark's DLF gradients (1 x 50 body, q = 10) 2,000 times, one thread each: idle (nothing
else to do) and interleaved with about 8 ms of matrix work per step, like a streamed minibatch.

    python benchmarks/scripts/allreduce_latency.py
"""
import os
import socket
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_dlf_bench.harness import scale
from pyro_dlf.distributed import close_distributed


def _size() -> int:
    model, _ = scale._model(10, torch.device("cpu"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _worker(rank: int, port: int, size: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    buffer, a = torch.randn(size), torch.randn(256, 256)
    results = []
    for work in (0, 1):
        dist.barrier()
        start, compute = time.perf_counter(), 0.0
        for _ in range(2000):
            if work:
                t = time.perf_counter()
                for _ in range(60):
                    a = torch.tanh(a @ a * 1e-3)
                compute += time.perf_counter() - t
            dist.all_reduce(buffer)
        results.append((time.perf_counter() - start - compute) / 2000)
    if rank == 0:
        with open(out, "w") as fh:
            fh.write(f"{results[0] * 1e3:.3f} {results[1] * 1e3:.3f}")
    close_distributed()


if __name__ == "__main__":
    size = _size()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "r.txt")
        mp.spawn(_worker, args=(port, size, out), nprocs=2, join=True)
        idle, busy = open(out).read().split()
    print(f"{size} float32 gradients, 2 gloo processes: {idle} ms per all-reduce idle, "
          f"{busy} ms (time not spent computing) between compute steps")
