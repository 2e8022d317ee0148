"""Where one in-memory EM iteration spends its time (the evidence for the bound ratio in scale.md).

The configuration of ``pyro-dlf bench scale`` (synthetic teachers, 1 x 50 body, n = 50, q = 10, one
M-step on all points, one thread): median of 5 iterations after a warm-up, then one iteration under
cProfile, grouped by what the time does.

    python benchmarks/scripts/profile_em_iteration.py 1000000
"""
import cProfile
import pstats
import sys
import time

import pyro.optim
import torch

from pyro_dlf_bench.harness import scale
from pyro_dlf_bench.harness.known_teachers import DesignBatches, TeacherBatches, in_memory_design, teacher_functions
from pyro_dlf.infer import EM

torch.set_num_threads(1)
m = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
model, guide = scale._model(10, torch.device("cpu"))
x, f = in_memory_design(m, 50, 4096)
em = EM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1, batch_size=None)
em.step(x, f)
times = []
for _ in range(5):
    start = time.perf_counter()
    em.step(x, f)
    times.append(time.perf_counter() - start)
print(f"m = {m:,}: {sorted(times)[2]:.3f} s per iteration (median of 5)")

profile = cProfile.Profile()
profile.enable()
em.step(x, f)
profile.disable()
stats = pstats.Stats(profile).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
cumulative = {f"{k[0].rsplit('/', 2)[-1]}:{k[2]}": v[3] for k, v in stats.items()}
total = max(cumulative.values())
groups = {
    "body forward (features + heads)": ["deep_latent_factor.py:features", "deep_latent_factor.py:heads"],
    "float64 statistics (ΦᵀΦ, Φᵀr_i, ‖r_i‖²)": ["sufficient_statistics.py:batch_statistics"],
    "expected squared residual (M-step objective)": ["sufficient_statistics.py:expected_squared_error"],
    "cache checksums of x and f": ["em.py:checksum"],
}
accounted = 0.0
for label, keys in groups.items():
    seconds = sum(cumulative.get(k, 0.0) for k in keys)
    accounted += seconds
    print(f"  {label:<45s} {seconds:7.3f} s  {100 * seconds / total:5.1f} %")
print(f"  {'the rest (M-step backward and step, E-step, Python)':<45s} {total - accounted:7.3f} s  "
      f"{100 * (total - accounted) / total:5.1f} %")

# The streamed row's data: its teachers are evaluated on every pass (two per iteration), the in-memory row's once.
stream = TeacherBatches(DesignBatches(range(0, m, 4096), 4096, m, torch.device("cpu")), teacher_functions(50))
start = time.perf_counter()
for _ in stream:
    pass
print(f"  one pass of the streamed row's teachers (x_b, f_b) over the {m:,} points: {time.perf_counter() - start:.3f} s")
