"""What the bound of scale.md assumes, against what the in-memory iteration's own kernels reach here.

The bound divides the iteration's flops by the rate of one large square product (2048 x 512 by 512 x 512)
and its bytes by the rate of one large ``sum``. The iteration works in chunks of ``CHUNK_VALUES`` teacher
values (5,242 points of the scale benchmark's n = 50 teachers) through a 1 x 50 body with q = 10: thin
products and element-wise maps on fresh tensors of about 1 MB. This script times, in one process and one
thread, each product at the chunk's shapes against the square one, and one element-wise map (ReLU, ``clamp_min(h, 0)``) into a
fresh tensor against the same map into a reused buffer (each product also in the other orientation, the
transposed product transposed back: the same numbers, another BLAS path); then the whole in-memory iteration at ``m`` points
in two child processes, one with glibc's default allocator settings and one with its mmap and trim
thresholds raised (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so that freed tensors are
reused instead of being returned to the system and faulted in again. Each child runs 5 iterations after
a warm-up and reports their median; the two children alternate, twice each, and the faster of each
pair is kept.

    python benchmarks/scripts/kernel_rates.py 1000000
"""
import json
import os
import subprocess
import sys
import time

import torch

from pyro_dlf.infer.em import CHUNK_VALUES

N, Q, INPUT, HIDDEN = 50, 10, 8, 50
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(1 << 25), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def best_of(fn, repeats: int = 50) -> float:
    """Fastest of ``repeats`` calls, seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def kernels() -> list[str]:
    torch.manual_seed(0)
    b = CHUNK_VALUES // N
    x, h = torch.randn(b, INPUT), torch.randn(b, HIDDEN)
    body, heads = torch.randn(HIDDEN, INPUT), torch.randn(1 + Q, HIDDEN)
    f64, rows = torch.randn(N, b, dtype=torch.float64), torch.randn(b, Q, dtype=torch.float64)
    a, square = torch.randn(2048, 512), torch.randn(512, 512)
    products = {
        "the bound's product 2048 x 512 by 512 x 512": (lambda: a @ square, 2 * 2048 * 512 * 512),
        f"body {b} x {INPUT} by {INPUT} x {HIDDEN}": (lambda: x @ body.T, 2 * b * INPUT * HIDDEN),
        f"heads {b} x {HIDDEN} by {HIDDEN} x {1 + Q}": (lambda: h @ heads.T, 2 * b * HIDDEN * (1 + Q)),
        "  the same, computed as (heads h^T)^T": (lambda: (heads @ h.T).T, 2 * b * HIDDEN * (1 + Q)),
        f"statistics (float64) {N} x {b} by {b} x {Q}": (lambda: f64 @ rows, 2 * N * b * Q),
        "  the same, computed as (rows^T f^T)^T": (lambda: (rows.T @ f64.T).T, 2 * N * b * Q),
    }
    lines = [f"chunk of {b:,} points ({CHUNK_VALUES:,} teacher values), one thread:"]
    for name, (fn, flops) in products.items():
        seconds = best_of(fn)
        lines.append(f"  {name:<48s} {1e6 * seconds:8.1f} µs  {flops / seconds / 1e9:6.1f} GFLOP/s")
    buffer = torch.empty_like(h)
    fresh, reused = best_of(lambda: torch.clamp_min(h, 0)), best_of(lambda: torch.clamp_min(h, 0, out=buffer))
    lines.append(f"  ReLU of {h.numel():,} values into a fresh tensor     {1e6 * fresh:8.1f} µs  "
                 f"({1e9 * fresh / h.numel():.2f} ns per value)")
    lines.append(f"  the same into a reused buffer                    {1e6 * reused:8.1f} µs  "
                 f"({1e9 * reused / h.numel():.2f} ns per value)")
    return lines


def iteration(m: int) -> float:
    """Median seconds of 5 in-memory iterations of the scale benchmark's configuration at ``m`` points."""
    from pyro_dlf_bench.harness.scale import measure

    return measure("memory", m, N, Q, 4096, 5)["seconds"]


def child(m: int, allocator: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(ALLOCATOR if allocator else {})}
    code = f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import kernel_rates; print(json.dumps(kernel_rates.iteration({m})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    torch.set_num_threads(1)
    print("\n".join(kernels()))
    default, raised = [], []
    for _ in range(2):
        default.append(child(m, False))
        raised.append(child(m, True))
    print(f"in-memory iteration at m = {m:,}: {min(default):.3f} s with glibc's defaults, {min(raised):.3f} s with its "
          f"mmap and trim thresholds raised ({min(default) / min(raised):.2f}x)")


if __name__ == "__main__":
    main()
