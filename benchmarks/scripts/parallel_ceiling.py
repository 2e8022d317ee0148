"""What two processes can gain on this machine without any communication: the streamed EM iteration of
``pyro-dlf bench scale`` on m points in one process, against two independent processes (no process group,
no collectives) on m/2 points each, run at the same time. Their ratio is the ceiling of the data-parallel
speed-up the scale benchmark measures with gloo.

    python benchmarks/scripts/parallel_ceiling.py 10000000
"""
import json
import os
import subprocess
import sys
import time


def run(m: int) -> subprocess.Popen:
    code = ("import json; from pyro_dlf_bench.harness.scale import measure; "
            f"print(json.dumps(measure('stream', {m}, 50, 10, 4096, 3)['seconds']))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


m = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
start = time.time()
one = json.loads(run(m).communicate()[0].strip().splitlines()[-1])
pair = [run(m // 2), run(m // 2)]
halves = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in pair]
print(f"m = {m:,}: one process {one:.2f} s per iteration; two independent processes on m/2 each "
      f"{halves[0]:.2f} s and {halves[1]:.2f} s at the same time: ceiling {one / max(halves):.2f}× "
      f"(wall {time.time() - start:.0f} s)")
