"""distill_stream and `pyro-dlf distill --stream`, on one process and under torchrun (two gloo processes)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_dlf import Student
from pyro_dlf.data import TensorStream
from pyro_dlf.distributed import distill_stream


def _teachers(n=20, m=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-2, 2, m).unsqueeze(-1)
    f = torch.sin(2 * x.T) + torch.randn(n, 1, generator=g) * 0.3 * torch.cos(x.T) + 0.05 * torch.randn(n, m, generator=g)
    return x, f, torch.linspace(0.008, 0.012, n)


def test_a_streamed_fit_follows_the_teachers():
    x, f, v = _teachers()
    student = distill_stream(TensorStream(x, f, 50), num_factors=3, teacher_noise_variances=v, num_iterations=60, progress=False)
    assert student.history[-1] < student.history[0] - 3  # nats per value
    spread = float(f.std(0).mean())
    assert float((student.dlf.mean(x) - f.mean(0)).pow(2).mean().sqrt()) < 0.5 * spread
    # The factors carry the teachers' spread: epistemic sd within a factor 2 of it.
    sd = float(student.dlf.loading(x).pow(2).sum(-1).sqrt().mean())
    assert 0.5 * spread < sd < 2 * spread
    logits = torch.randn(5, 400, 3) * 0.2 + torch.stack([torch.sin(x.T), torch.cos(x.T), x.T], -1)
    classifier = distill_stream(TensorStream(x, logits, 50), num_factors=3, task="classification", num_iterations=10, progress=False)
    assert classifier.predict(x[:4]).probs.shape == (4, 3)
    with pytest.raises(ValueError, match="teacher_noise_variances: regression needs"):
        distill_stream(TensorStream(x, f, 50), num_factors=3, num_iterations=1)
    # A separate loading body streams too.
    two = distill_stream(TensorStream(x, f, 50), num_factors=3, teacher_noise_variances=v, loading_hidden=(8,), num_iterations=20,
                         progress=False)
    assert two.dlf.loading_hidden == (8,) and two.history[-1] < two.history[0] - 1
    # Whole-stream M-steps (num_m_steps per iteration, one pass each) fit too, in fewer, larger steps.
    whole = distill_stream(TensorStream(x, f, 50), num_factors=3, teacher_noise_variances=v, num_m_steps=8, num_iterations=30,
                           progress=False)
    assert whole.history[-1] < whole.history[0] - 1


def _write(tmp_path):
    x, f, v = _teachers(n=10, m=320, seed=1)
    paths = {name: str(tmp_path / f"{name}.npy") for name in ("x", "f", "v")}
    for name, value in (("x", x), ("f", f), ("v", v)):
        np.save(paths[name], value.numpy())
    return paths


def _command(paths, out, *launcher):
    return [*launcher, "-m", "pyro_dlf.cli", "distill", "--stream", "--x", paths["x"], "--teachers", paths["f"],
            "--noise-variances", paths["v"], "--num-factors", "3", "--hidden", "16", "--iterations", "8",
            "--batch-size", "40", "--out", out, "--no-progress"]


@pytest.mark.slow
def test_torchrun_with_two_processes_writes_the_student_one_process_fits(tmp_path):
    paths = _write(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Two processes: global batch k is the union of both shards' batch k, so the single-process
    # run with batches twice as large is the same iteration.
    single = _command(paths, str(tmp_path / "single80.pt"), sys.executable)
    single[single.index("--batch-size") + 1] = "80"
    one = subprocess.run(single, capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(_command(paths, str(tmp_path / "two.pt"), sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node", "2"), capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("Distilled") == 1 and "over 2 process(es)" in two.stdout  # rank 0 alone reports
    a, b = Student.load(str(tmp_path / "two.pt")), Student.load(str(tmp_path / "single80.pt"))
    for (name, p), q in zip(a.dlf.state_dict().items(), b.dlf.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_stream_mistakes_end_in_one_line(tmp_path):
    paths = _write(tmp_path)
    env = {**os.environ, "PYRO_DLF_DEBUG": ""}
    auto = _command(paths, str(tmp_path / "s.pt"), sys.executable)
    auto[auto.index("--hidden") + 1] = "auto"
    short = _command(paths, str(tmp_path / "s.pt"), sys.executable) + ["--training-length", "auto"]
    for command, message in ((auto, "--hidden: --stream fits one body"),
                             ([c if c != paths["x"] else paths["x"].replace(".npy", ".csv") for c in auto], "--x: --stream reads .npy files"),
                             (short, "--training-length: a streamed fit runs the whole schedule")):
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr


# The GPU path runs only where a GPU exists (the CPU path is tested above); no GPU is lent to CI.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_the_streamed_fit_runs_on_the_gpu_and_matches_the_cpu():
    x, f, v = _teachers()
    options = dict(num_factors=3, teacher_noise_variances=v, num_iterations=5, progress=False, dtype=torch.float64)
    cpu = distill_stream(TensorStream(x, f, 50), **options)
    gpu = distill_stream(TensorStream(x, f, 50), device="cuda", **options)
    assert next(gpu.dlf.parameters()).device.type == "cuda"
    assert gpu.history == pytest.approx(cpu.history, rel=1e-6)


def test_close_distributed_outside_a_process_group_does_nothing():
    from pyro_dlf.distributed import close_distributed

    assert not torch.distributed.is_initialized()
    close_distributed()
    close_distributed(completed=False)
    assert not torch.distributed.is_initialized()


def test_stream_inputs_are_checked_before_the_fit():
    x, f, v = _teachers(n=8, m=40)
    options = dict(num_factors=2, num_iterations=1, progress=False)
    with pytest.raises(ValueError, match=r"teacher_noise_variances has 5 values for 8 teachers: give one variance per teacher, shape \(8,\)"):
        distill_stream(TensorStream(x, f, 10), teacher_noise_variances=v[:5], **options)
    with pytest.raises(ValueError, match=r"teacher_noise_variances must be positive and finite.*index 3, is inf"):
        distill_stream(TensorStream(x, f, 10), teacher_noise_variances=v.clone().index_fill_(0, torch.tensor([3]), float("inf")), **options)
    with pytest.raises(ValueError, match=r"stream: yielded no batch"):
        distill_stream([], teacher_noise_variances=v, **options)
    with pytest.raises(TypeError, match=r"stream is a one-shot iterator"):
        distill_stream(iter(TensorStream(x, f, 10)), teacher_noise_variances=v, **options)
    with pytest.raises(TypeError, match=r"stream must be a re-iterable design stream .* use TensorStream\(x, f, batch_size\)"):
        distill_stream(f, teacher_noise_variances=v, **options)
    with pytest.raises(ValueError, match=r"stream batch 1 holds 6 teachers' values on 1 input feature\(s\) but batch 0 holds 8 teachers'"):
        distill_stream([(x[:20], f[:, :20]), (x[20:], f[:6, 20:])], teacher_noise_variances=v, **options)
    with pytest.raises(TypeError, match=r"stream batch 0: f_batch holds complex values"):
        distill_stream([(x[:20], f[:, :20].to(torch.complex64))], teacher_noise_variances=v, **options)
    with pytest.raises(ValueError, match=r"stream x_batch \(the design points\) has values up to 2e\+30: .* dtype=torch.float64"):
        distill_stream(TensorStream(x * 1e30, f, 10), teacher_noise_variances=v, **options)
    with pytest.raises(ValueError, match=r"stream \(its design points\) has 1 design point"):
        distill_stream([(x[:1], f[:, :1])], teacher_noise_variances=v, **options)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got nan"):
        distill_stream(TensorStream(x, f, 10), teacher_noise_variances=v, **{**options, "lr": float("nan")})
    with pytest.raises(ValueError, match=r"num_m_steps must be None or a positive int, got 0; None takes one step per batch"):
        distill_stream(TensorStream(x, f, 10), teacher_noise_variances=v, num_m_steps=0, **options)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' but torch.cuda.is_available\(\) is False; pass device='cpu'"):
            distill_stream(TensorStream(x, f, 10), teacher_noise_variances=v, device="cuda", **options)


def test_the_streamed_auto_number_of_factors_is_the_in_memory_rule():
    """The Gram matrix of the teachers' deviations is a sum over design points: streamed in batches it is the
    in-memory one (up to float64 rounding), and so is the choice."""
    from pyro_dlf.selection import choose_num_factors, deviation_gram, factor_limit

    x, f, v = _teachers(n=8, m=40)
    student = distill_stream(TensorStream(x, f, 7), teacher_noise_variances=v, num_iterations=1, progress=False)
    expected = choose_num_factors(deviation_gram(f), factor_limit(8))
    assert student.num_factors_choice.num_factors == expected.num_factors == student.dlf.num_factors
    assert student.num_factors_choice.explained == pytest.approx(expected.explained, rel=1e-10)
