r"""The scaling benchmark, run by ``pyro-dlf bench scale``: EM cost against the number of design points.

Every measurement runs in a fresh process (so that the peak resident memory
is that configuration's alone), on synthetic teachers with a known truth:

* **Teachers**: ``x ~ N(0, I_d)`` (``d = 8``); a random DLF (body 1 × 50,
  ``q_true = 5``) gives ``f_i(x) = μ(x) + Φ(x)^T z_i + σ ε`` with
  ``z_i ~ N(0, I)``, ``σ² = 0.01`` (float32).
* **In memory** (:class:`~pyro_dlf.infer.EM` with ``num_m_steps=1,
  batch_size=None``): one iteration is one M-step gradient step on all ``m``
  points and one pass for the next E-step's statistics (from which the
  closed-form ``σ_f²`` follows), for a 1 × 50 body and ``q`` factors; the
  median of ``repeats`` iterations after one warm-up.
  Grid: ``m`` in ``sizes`` at ``n = 50, q = 10``; ``n`` in ``(10, 50, 200)``
  and ``q`` in ``(5, 20)`` at the middle size.
* **Streamed** (:class:`~pyro_dlf.infer.StreamingEM` with ``num_m_steps=1``
  on teachers evaluated batch by batch, ``batch_size`` points at a time, and
  never stored): the same mathematics as the in-memory iteration -- one step
  on the whole stream's accumulated gradient, one statistics pass -- so the
  ratio of the two at equal ``m`` is the cost of streaming, the teachers'
  evaluation on both passes included; peak memory and time per iteration at
  ``stream_sizes``.
* **Streamed from stored values** (the same ``StreamingEM`` on a
  :class:`~pyro_dlf.data.TensorStream` over the in-memory rows' tensors, at
  the streamed sizes up to the largest in-memory one): the streaming
  algorithm's own cost -- per-batch checks and kernels -- without the
  teachers' evaluation, as when the values are read from a file. The in-memory rows are built from
  the same batches, so both see the same design points and teacher values
  (each batch's observation noise is fixed by its position, so every pass
  sees the same values).
* **Processes**: the streamed iteration at the largest streamed size on 1 and
  on 2 processes (``torch.multiprocessing`` with gloo), each process its shard
  (one gradient all-reduce per M-step, four for the statistics).
* **Limits**: the bytes of teacher values one iteration must read (``4·n·m``,
  twice: the M-step and the statistics pass), against the memory bandwidth
  measured on this machine (a large ``sum``), and the body's flops (one
  forward pass ``2·m·(d·50 + 50·(1 + q))`` for the statistics, and a forward
  and a backward pass, counted as three, for the M-step) against the measured
  matmul rate; the ratio of measured time to that bound is reported.
* **Prediction**: ``S`` draws of the student at 1,000 inputs against ``n``
  forwards of a teacher ensemble (2 × 100 MLPs).
* **Covariance race** (:mod:`pyro_dlf_bench.harness.covariance_race`): the DLF, a
  deep-kernel GP of the same network, GPyTorch's SVGP (``q`` inducing points)
  and its exact GP fitting the same teachers' covariance, each for
  ``race_budget_seconds`` of training at ``race_sizes``, scored on one clock.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from pyro_dlf import __version__
from pyro_dlf._files import atomic_write
from pyro_dlf_bench.harness.known_teachers import HIDDEN, INPUT_DIM, DesignBatches, TeacherBatches, in_memory_design, inputs, teacher_functions

__all__ = ["ScaleBenchConfig", "measure", "run_scale_benchmark", "write_scale_report"]



@dataclass
class ScaleBenchConfig:
    """Settings of one scaling run (the defaults are the documented protocol)."""

    sizes: tuple = (1_000, 10_000, 100_000, 1_000_000)
    stream_sizes: tuple = (10_000, 1_000_000, 10_000_000)
    teachers: tuple = (10, 50, 200)
    factors: tuple = (5, 20)
    batch_size: int = 4096
    repeats: int = 3
    processes: int = 2
    race_sizes: tuple = (1_000, 10_000, 100_000)
    race_budget_seconds: float = 60.0
    device: str = "cpu"
    timeout_seconds: float = 1800.0
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(["pyro-dlf"] + sys.argv[1:]))


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _model(q: int, device):
    import pyro

    from pyro_dlf.guides import ExactFactorPosterior
    from pyro_dlf.models import DeepLatentFactor

    pyro.clear_param_store()
    torch.manual_seed(0)
    model = DeepLatentFactor(INPUT_DIM, q, (HIDDEN,), name=f"scale{q}").to(device)
    return model, ExactFactorPosterior(model)


def _time(fn, repeats: int, device) -> float:
    fn()  # warm-up (allocations, first-call costs)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(kind: str, m: int, n: int, q: int, batch_size: int, repeats: int, device: str = "cpu",
            rank: int = 0, world_size: int = 1) -> dict:
    """One configuration in this process: ``kind`` is ``"memory"`` (EM on in-memory tensors), ``"stream"``
    (StreamingEM on teachers evaluated per batch) or ``"stored"`` (StreamingEM on batches of the in-memory
    tensors); returns seconds per iteration and the peak resident memory (CPU) or peak allocated memory
    (GPU) in MiB."""
    import pyro.optim

    from pyro_dlf.data import TensorStream
    from pyro_dlf.infer import EM, StreamingEM

    torch.set_num_threads(1)
    dev = torch.device(device)
    model, guide = _model(q, dev)
    before = _peak_rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses: list[float] = []  # the negative log marginal likelihood before each iteration (warm-up included)
    if kind == "memory":
        x, f = (t.to(dev) for t in in_memory_design(m, n, batch_size))
        em = EM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1, batch_size=None)
        seconds = _time(lambda: losses.append(em.step(x, f)), repeats, dev)
    elif kind == "stream":
        starts = range(rank * batch_size, m, batch_size * world_size)
        stream = TeacherBatches(DesignBatches(starts, batch_size, m, dev), teacher_functions(n))
        em = StreamingEM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1)
        seconds = _time(lambda: losses.append(em.step(stream)), repeats, dev)
    elif kind == "stored":
        x, f = (t.to(dev) for t in in_memory_design(m, n, batch_size))
        em = StreamingEM(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_m_steps=1)
        stream = TensorStream(x, f, batch_size)
        seconds = _time(lambda: losses.append(em.step(stream)), repeats, dev)
    else:
        raise ValueError(f"kind must be 'memory', 'stream' or 'stored', got {kind!r}")
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else _peak_rss_mib()
    return {"kind": kind, "m": m, "n": n, "q": q, "seconds": seconds, "peak_mib": peak, "baseline_mib": before,
            "device": device, "processes": world_size, "losses": losses}


def _subprocess(args: dict, timeout: float) -> dict:
    code = ("import json, sys; from pyro_dlf_bench.harness.scale import measure; "
            f"print(json.dumps(measure(**{args!r})))")
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {**args, "error": f"over {timeout:.0f} s"}
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["killed"])[-1]
        return {**args, "error": last[:200]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _two_process_worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from pyro_dlf.distributed import close_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    completed = False
    try:
        result = measure(**args, rank=rank, world_size=world)
        if rank == 0:
            with open(out, "w") as fh:
                json.dump(result, fh)
        completed = True
    finally:
        close_distributed(completed)


def _processes(args: dict, world: int) -> dict:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "r.json")
        mp.spawn(_two_process_worker, args=(world, port, args, out), nprocs=world, join=True)
        with open(out) as fh:
            return json.load(fh)


def _limits(n: int, m: int, q: int) -> dict:
    """This machine's memory bandwidth and matmul rate (one thread), and the iteration's lower bound."""
    torch.set_num_threads(1)
    big = torch.randn(2 ** 25)  # 128 MiB
    start = time.perf_counter()
    for _ in range(5):
        big.sum()
    bandwidth = 5 * big.numel() * 4 / (time.perf_counter() - start)
    a, b = torch.randn(2048, 512), torch.randn(512, 512)
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    flops = 5 * 2 * 2048 * 512 * 512 / (time.perf_counter() - start)
    bytes_read = 2 * 4 * n * m  # teacher values, read by the M-step and by the statistics pass
    # The statistics pass's forward, and the M-step's forward and backward (about twice a forward).
    forward = 4 * 2 * m * (INPUT_DIM * HIDDEN + HIDDEN * (1 + q))
    return {"bandwidth_gb_s": bandwidth / 1e9, "matmul_gflop_s": flops / 1e9,
            "bound_seconds": bytes_read / bandwidth + forward / flops, "bytes_read": bytes_read, "flops": forward}


def _predictive(n: int) -> dict:
    """Seconds to predict 1,000 inputs: the student's predictive (closed form for regression) against ``n``
    teacher forwards."""
    from torch import nn

    from pyro_dlf import Student

    torch.set_num_threads(1)
    x = inputs(1000)
    model, _ = _model(10, torch.device("cpu"))
    student = Student(model, "regression", 3.0, 1.0)
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Linear(INPUT_DIM, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 1)) for _ in range(n)]

    def ensemble() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([member(x) for member in members])

    device = torch.device("cpu")
    return {"student_seconds": _time(lambda: student.predict(x), 3, device),
            "teacher_seconds": _time(ensemble, 3, device), "teachers": n}


def run_scale_benchmark(config: ScaleBenchConfig) -> dict:
    """Every configuration, each in its own process; returns the result dictionary."""
    from pyro_dlf._progress import progress_bar

    started = time.time()
    mid = config.sizes[len(config.sizes) // 2]
    jobs = [("memory", m, 50, 10) for m in config.sizes]
    jobs += [("memory", mid, n, 10) for n in config.teachers if n != 50]
    jobs += [("memory", mid, 50, q) for q in config.factors if q != 10]
    jobs += [("stream", m, 50, 10) for m in config.stream_sizes]
    jobs += [("stored", m, 50, 10) for m in config.stream_sizes if m <= max(config.sizes)]
    rows = []
    for kind, m, n, q in progress_bar(jobs, desc="scale", enabled=config.progress, leave=True):
        args = dict(kind=kind, m=m, n=n, q=q, batch_size=config.batch_size, repeats=config.repeats, device=config.device)
        rows.append(_subprocess(args, config.timeout_seconds))
    largest = max(config.stream_sizes)
    parallel = []
    for world in sorted({1, config.processes}):
        args = dict(kind="stream", m=largest, n=50, q=10, batch_size=config.batch_size, repeats=config.repeats, device="cpu")
        try:
            parallel.append(_processes(args, world) if world > 1 else _subprocess(args, config.timeout_seconds))
        except Exception as error:  # a failed run is reported, not fatal to the benchmark
            parallel.append({**args, "processes": world, "error": str(error).splitlines()[0][:200]})
    limits = _limits(50, max(config.sizes), 10)
    from pyro_dlf_bench.harness.covariance_race import covariance_race

    race = [covariance_race(m, budget_seconds=config.race_budget_seconds)
            for m in progress_bar(config.race_sizes, desc="covariance race", enabled=config.progress, leave=True)]
    return {"benchmark": "scale", "command": config.command, "config": asdict(config), "rows": rows, "parallel": parallel,
            "limits": limits, "race": race, "predictive": [_predictive(n) for n in config.teachers],
            "versions": {"pyro_dlf": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": config.device,
                        "gpu": torch.cuda.get_device_name(0) if config.device.startswith("cuda") else None},
            "wall_seconds": time.time() - started}


def _streamed_lines(rows: list[dict], memory: dict) -> list[str]:
    """The streamed rows against the in-memory ones at equal m: time ratios and the agreement of the fits."""
    lines = []
    losses = {(r["kind"], r["m"]): r.get("losses") for r in rows if r["n"] == 50 and r["q"] == 10 and r.get("losses")}
    for kind, what in (("stream", "streamed (the teachers evaluated per batch, on both passes)"),
                       ("stored", "streamed from stored values (the streaming algorithm alone)")):
        streamed = {r["m"]: r["seconds"] for r in rows if r["kind"] == kind and r["n"] == 50 and r["q"] == 10 and "seconds" in r}
        both = sorted(set(memory) & set(streamed))
        if not both:
            continue
        lines.append(f"- {what} against the in-memory iteration (the same mathematics, the same data; target ≤ 1.5× at 10⁶): "
                     + ", ".join(f"{streamed[m] / memory[m]:.2f}× at m = {m:,}" for m in both))
        agree = [(m, max(abs(a - b) / abs(b) for a, b in zip(losses[(kind, m)], losses[("memory", m)])))
                 for m in both if (kind, m) in losses and ("memory", m) in losses]
        if agree:
            lines.append(f"- {what} and in-memory fits from the same start, largest relative difference of the "
                         "negative log marginal likelihood over their iterations (target ≤ 1e-5): "
                         + ", ".join(f"{d:.1e} at m = {m:,}" for m, d in agree))
    return lines


def _slope(rows: list[dict], low: int, high: int) -> Optional[float]:
    """The log-log slope of time against m between ``low`` and ``high`` (n = 50, q = 10, in memory)."""
    pick = {r["m"]: r["seconds"] for r in rows if r["kind"] == "memory" and r["n"] == 50 and r["q"] == 10 and "seconds" in r}
    if low in pick and high in pick:
        return math.log(pick[high] / pick[low]) / math.log(high / low)
    return None


def write_scale_report(result: dict, output_dir: str, name: str = "scale") -> tuple[str, str]:
    """Write ``{name}.json``, ``{name}.md`` and ``{name}.png`` (time and memory against m); atomically."""
    os.makedirs(output_dir, exist_ok=True)
    json_path, md_path = os.path.join(output_dir, f"{name}.json"), os.path.join(output_dir, f"{name}.md")
    atomic_write(json_path, lambda fh: json.dump(result, fh, indent=1))
    rows, machine, limits = result["rows"], result["machine"], result["limits"]
    fmt = lambda r, k, f: ("–" if k not in r else f.format(r[k]))  # noqa: E731
    lines = [f"# Scaling benchmark ({name})", "", f"Command: `{result['command']}`  ",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs, device {machine['device']}"
             + (f" ({machine['gpu']})" if machine.get("gpu") else "") + f", torch {result['versions']['torch']} (one thread per "
             f"process), pyro_dlf {result['versions']['pyro_dlf']}; wall time {result['wall_seconds'] / 60:.1f} min.", "",
             "| kind | m | n | q | seconds / iteration | peak memory (MiB) | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['m']:,} | {r['n']} | {r['q']} | {fmt(r, 'seconds', '{:.4g}')} | {fmt(r, 'peak_mib', '{:.0f}')} "
                     f"| {r.get('error', '')} |")
    slope = _slope(rows, 10_000, 1_000_000)
    stream = {r["m"]: r for r in rows if r["kind"] == "stream" and "peak_mib" in r}
    lines += ["", "## Targets", ""]
    if slope is not None:
        lines.append(f"- iteration time linear in m (log-log slope ≤ 1.05 between 10⁴ and 10⁶): "
                     f"{'met' if slope <= 1.05 else '**not met**'} (slope {slope:.3f})")
    if 10_000 in stream and 1_000_000 in stream:
        ratio = stream[1_000_000]["peak_mib"] / stream[10_000]["peak_mib"]
        lines.append(f"- streamed peak memory at 10⁶ ≤ 1.2 × at 10⁴: {'met' if ratio <= 1.2 else '**not met**'} (ratio {ratio:.3f})")
    done = [p for p in result["parallel"] if "seconds" in p]
    if len(done) == 2:
        speedup = done[0]["seconds"] / done[1]["seconds"]
        lines.append(f"- 2 processes ≥ 1.7× faster than 1 at m = {done[0]['m']:,}: {'met' if speedup >= 1.7 else '**not met**'} "
                     f"({done[0]['seconds']:.3g} s vs {done[1]['seconds']:.3g} s: {speedup:.2f}×)")
    big = next((r for r in rows if r["kind"] == "memory" and r["m"] == max(result["config"]["sizes"]) and r["n"] == 50
                and r["q"] == 10 and "seconds" in r), None)
    if big is not None:
        ratio = big["seconds"] / limits["bound_seconds"]
        lines.append(f"- within 3× of the bandwidth/flop bound at m = {big['m']:,}: {'met' if ratio <= 3 else '**not met**'} "
                     f"({big['seconds']:.3g} s against {limits['bound_seconds']:.3g} s: {ratio:.1f}×; bandwidth "
                     f"{limits['bandwidth_gb_s']:.1f} GB/s, matmul {limits['matmul_gflop_s']:.1f} GFLOP/s)")
    memory = {r["m"]: r["seconds"] for r in rows if r["kind"] == "memory" and r["n"] == 50 and r["q"] == 10 and "seconds" in r}
    lines += _streamed_lines(rows, memory)
    lines += _race_lines(result.get("race", []), name)
    lines += ["", "## Prediction at 1,000 inputs", "", "| teachers n | student predict, closed form (s) | teacher ensemble (s) |",
              "|---|---|---|"]
    for p in result["predictive"]:
        lines.append(f"| {p['teachers']} | {p['student_seconds']:.4g} | {p['teacher_seconds']:.4g} |")
    lines += ["", f"![scaling]({name}.png)", ""]
    atomic_write(md_path, lambda fh: fh.write("\n".join(lines)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("memory", "o"), ("stream", "s"), ("stored", "^")):
        pts = sorted((r["m"], r["seconds"], r["peak_mib"]) for r in rows if r["kind"] == kind and r["n"] == 50 and r["q"] == 10
                     and "seconds" in r)
        if pts:
            axes[0].loglog([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind)
            axes[1].semilogx([p[0] for p in pts], [p[2] for p in pts], marker=marker, label=kind)
    axes[0].set(xlabel="design points m", ylabel="seconds per EM iteration")
    axes[1].set(xlabel="design points m", ylabel="peak memory (MiB)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    atomic_write(os.path.join(output_dir, f"{name}.png"), lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
    plt.close(fig)
    race = result.get("race", [])
    if race:
        fig, axes = plt.subplots(1, len(race), figsize=(4.2 * len(race), 3.8), squeeze=False)
        for ax, r in zip(axes[0], race):
            for method, curve in r["curves"].items():
                trained = [(t, e) for t, e in curve if t > 0]
                if trained:
                    ax.loglog([t for t, _ in trained], [e for _, e in trained], label=method)
            ax.set(title=f"m = {r['m']:,}", xlabel="training seconds", ylabel="covariance error (relative Frobenius)")
        axes[0][0].legend()
        fig.tight_layout()
        atomic_write(os.path.join(output_dir, f"{name}_race.png"), lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
        plt.close(fig)
    return json_path, md_path


def _race_lines(race: list[dict], name: str) -> list[str]:
    """The covariance race as tables: each method's error at the checkpoints, and who leads at each."""
    if not race:
        return []
    first = race[0]
    lines = ["", "## Fitting the teachers' covariance, on one clock: DLF, deep-kernel GP, SVGP, exact GP", "",
             f"Relative Frobenius error of each method's covariance at 200 held-out inputs against the truth, after the given "
             f"seconds of training (the fit it holds then; the clock pauses while it is scored); n = {first['n']} teachers, "
             f"q = {first['q']} factors (= inducing points), {first['budget_seconds']:.0f} s each; every method starts from "
             "random weights in the teachers' standardized units, Adam with step size 0.01; the exact GP only while its "
             "m × m Cholesky fits.", ""]
    cell = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"  # noqa: E731
    for r in race:
        marks = r["checkpoints"]
        lines += [f"m = {r['m']:,}:", "", "| method | " + " | ".join(f"{t:g} s" for t in marks) + " |",
                  "|---|" + "---|" * len(marks)]
        for method, errors in r["error_at"].items():
            lines.append(f"| {method} | " + " | ".join(cell(e) for e in errors) + " |")
        leaders = []
        for k, t in enumerate(marks):
            held = {method: errors[k] for method, errors in r["error_at"].items() if errors[k] is not None}
            leaders.append(f"{t:g} s: {min(held, key=held.get)}" if held else f"{t:g} s: –")
        lines += ["", "Lowest error — " + "; ".join(leaders) + f". The {r['n']} teachers' own sample covariance at the "
                  f"held-out inputs: {r['sample_covariance_error']:.3g}.", ""]
    lines.append(f"![covariance race]({name}_race.png)")
    return lines
