"""Where the two-process streamed iteration of scale.md spends the time one process on half the points does not.

Two gloo processes run the scale benchmark's streamed configuration (teachers evaluated per batch of 4,096
points, 1 x 50 body, n = 50, q = 10, one whole-stream M-step, one thread each) on their shards of m points,
as ``pyro-dlf bench scale`` does. Each process times every iteration three ways: the wall clock, its own
CPU time (``time.process_time``), and the wall time spent inside ``torch.distributed`` collectives. Wall
minus CPU is time it did not run (waiting in a collective, or descheduled); the collectives' share of it
says which. The median over 3 iterations after a warm-up, per process.

    python benchmarks/scripts/parallel_waits.py 10000000
"""
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_dlf.distributed import close_distributed

ITERATIONS = 3


def _timed_collectives(clock: list) -> None:
    """Wrap the collectives StreamingEM uses so that their wall time adds up in ``clock[0]``."""
    for name in ("all_reduce", "broadcast"):
        original = getattr(dist, name)

        def timed(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                clock[0] += time.perf_counter() - start

        setattr(dist, name, timed)


def _worker(rank: int, port: int, m: int, out: str) -> None:
    import pyro.optim

    from pyro_dlf.infer import StreamingEM
    from pyro_dlf_bench.harness import scale
    from pyro_dlf_bench.harness.known_teachers import DesignBatches, TeacherBatches, teacher_functions

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=600))
    completed = False
    try:
        clock = [0.0]
        _timed_collectives(clock)
        model, guide = scale._model(10, torch.device("cpu"))
        starts = range(rank * 4096, m, 4096 * 2)
        stream = TeacherBatches(DesignBatches(starts, 4096, m, torch.device("cpu")), teacher_functions(50))
        em = StreamingEM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1)
        em.step(stream)  # warm-up
        rows = []
        for _ in range(ITERATIONS):
            clock[0] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            em.step(stream)
            rows.append((time.perf_counter() - wall, time.process_time() - cpu, clock[0]))
        with open(f"{out}.{rank}", "w") as fh:
            json.dump([statistics.median(column) for column in zip(*rows)], fh)
        completed = True
    finally:
        close_distributed(completed)


def main() -> None:
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank")
        start = time.time()
        mp.spawn(_worker, args=(port, m, out), nprocs=2, join=True)
        for rank in (0, 1):
            with open(f"{out}.{rank}") as fh:
                wall, cpu, collectives = json.load(fh)
            print(f"m = {m:,}, rank {rank}: {wall:.2f} s per iteration, {cpu:.2f} s of it on the CPU, {wall - cpu:.2f} s not "
                  f"running, {collectives:.2f} s inside collectives")
        print(f"(wall {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
