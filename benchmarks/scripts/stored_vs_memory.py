"""Is the streamed-from-stored-values iteration slower than the in-memory one, or only in a fresh process?

``pyro-dlf bench scale`` times each configuration in a fresh process. This script times the in-memory EM
iteration and the StreamingEM iteration on the same points and values (``TensorStream``, batches of 4,096), the scale
benchmark's configuration at ``m`` points (1 x 50 body, n = 50, q = 10, one whole-stream M-step, one
thread): first each in a fresh process, as the benchmark does, then both in one process in both orders
(``scale.measure``: median of 3 iterations after a warm-up, a fresh model for each). If the ratio is large only across
processes, the gap is the process's state (where its memory comes from), not the streaming algorithm.

    python benchmarks/scripts/stored_vs_memory.py 1000000
"""
import json
import os
import subprocess
import sys

KINDS = ("memory", "stored")


def _in_process(m: int, kinds: list[str]) -> dict:
    """The scale benchmark's own measurement of each kind in turn, in this process."""
    from pyro_dlf_bench.harness.scale import measure

    return {kind: measure(kind, m, 50, 10, 4096, 3)["seconds"] for kind in kinds}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(_in_process(int(sys.argv[2]), sys.argv[3:])))
        return
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000

    def child(kinds: list[str]) -> dict:
        run = subprocess.run([sys.executable, __file__, "--child", str(m), *kinds], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(run.stdout.strip().splitlines()[-1])

    fresh = {kind: child([kind])[kind] for kind in KINDS}
    print(f"m = {m:,}, each in a fresh process: memory {fresh['memory']:.3f} s, stored {fresh['stored']:.3f} s, "
          f"ratio {fresh['stored'] / fresh['memory']:.2f}")
    for order in (list(KINDS), list(reversed(KINDS))):
        both = child(order)
        print(f"m = {m:,}, one process, {' then '.join(order)}: memory {both['memory']:.3f} s, stored {both['stored']:.3f} s, "
              f"ratio {both['stored'] / both['memory']:.2f}")


if __name__ == "__main__":
    main()
