"""Where the streamed EM iteration spends the time the in-memory one does not (the evidence for scale.md's ratio).

The configuration of ``pyro-dlf bench scale`` (synthetic teachers evaluated per batch of 4,096 points, 1 x 50
body, n = 50, q = 10, one whole-stream M-step, one thread), at ``m`` points: the median of 3 iterations of each
(after a warm-up), then the parts of the streamed iteration that the in-memory one has no counterpart of,
timed alone: generating the teachers' batches (twice per iteration: the statistics pass and the gradient
pass) and checking each batch's values (twice too).

    python benchmarks/scripts/profile_stream_iteration.py 1000000
"""
import statistics
import sys
import time

import pyro.optim
import torch

from pyro_dlf._validation import check_teacher_values
from pyro_dlf.infer import EM, StreamingEM
from pyro_dlf_bench.harness import scale
from pyro_dlf_bench.harness.known_teachers import DesignBatches, TeacherBatches, in_memory_design, teacher_functions

torch.set_num_threads(1)
m, n, batch = (int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000), 50, 4096


def median(step, repeats: int = 3) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


model, guide = scale._model(10, torch.device("cpu"))
stream = TeacherBatches(DesignBatches(range(0, m, batch), batch, m, torch.device("cpu")), teacher_functions(n))
streaming = StreamingEM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1)
streamed = median(lambda: streaming.step(stream))
x, f = in_memory_design(m, n, batch)
em = EM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1, batch_size=None)
in_memory = median(lambda: em.step(x, f))
teachers = 2 * median(lambda: [None for _ in stream])
batches = list(stream)
checks = 2 * median(lambda: [check_teacher_values(fb, xb, None, "f_batch") for xb, fb in batches])
rest = streamed - in_memory - teachers - checks
print(f"m = {m:,} points, batches of {batch:,}, one thread")
print("| part | seconds per iteration | share of the gap |")
print("|---|---|---|")
print(f"| streamed iteration | {streamed:.3f} | |")
print(f"| in-memory iteration | {in_memory:.3f} | |")
gap = streamed - in_memory
for name, value in (("teachers' batches generated (two passes)", teachers), ("each batch's values checked (two passes)", checks),
                    ("the rest: per-batch kernels and Python ({:,} batches, two passes)".format(len(batches)), rest)):
    print(f"| {name} | {value:.3f} | {100 * value / gap:.0f} % |")
print(f"ratio streamed / in-memory: {streamed / in_memory:.2f}; without the teachers' generation: "
      f"{(streamed - teachers) / in_memory:.2f}")
