"""StreamingEM: the exact EM on a stream of batches, in one process and data-parallel over two (gloo)."""

import numpy as np
import pyro.optim
import pytest
import torch
import torch.multiprocessing as mp

from pyro_dlf.data import NpyStream, TeacherStream, TensorStream
from pyro_dlf.guides import ExactFactorPosterior
from pyro_dlf.infer import EM, StreamingEM

from distributed_workers import fit as _fit
from distributed_workers import SCHEDULES, free_port, small_model, streaming_worker
from synthetic import synthetic_teachers


def test_streaming_em_is_the_in_memory_em_on_the_whole_stream():
    """The default M-step: each step on the gradient of the whole stream (accumulated over its batches),
    which is ``EM(batch_size=None)``'s step; the two differ only in the order of float64 sums."""
    _, x, f = synthetic_teachers(12, 96, seed=3)
    x, f = x.double(), f.double()
    streamed, losses = _fit(StreamingEM, TensorStream(x, f, batch_size=32), 5, num_m_steps=3)
    in_memory, reference = _fit(EM, (x, f), 5, num_m_steps=3, batch_size=None)
    assert losses == pytest.approx(reference, rel=1e-10)
    for a, b in zip(streamed.parameters(), in_memory.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # Batch sizes that do not divide the points: the batches weigh by their share of the values.
    uneven, _ = _fit(StreamingEM, TensorStream(x, f, batch_size=40), 5, num_m_steps=3)
    for a, b in zip(uneven.parameters(), in_memory.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_per_batch_steps_are_the_in_memory_em_with_one_gradient_step_per_batch():
    _, x, f = synthetic_teachers(12, 96, seed=3)
    x, f = x.double(), f.double()
    stream = TensorStream(x, f, batch_size=32)
    streamed, losses = _fit(StreamingEM, stream, 5, per_batch_steps=True)
    pyro.clear_param_store()
    model = small_model(0)
    em = EM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), num_m_steps=3, batch_size=32)
    em._batches = lambda m, count: iter(torch.arange(m).split(32))  # the stream's order: batches in sequence
    reference = [em.step(x, f) for _ in range(5)]
    assert losses == pytest.approx(reference, rel=1e-10)
    for a, b in zip(streamed.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="per_batch_steps must be True or False"):
        StreamingEM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), per_batch_steps="yes")


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


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_a_non_finite_batch_is_named_though_batches_are_not_scanned_every_pass(schedule):
    """The passes check their sums and each step its gradient instead of scanning every batch; when one is
    not finite the stream is searched, and the batch at fault is named with the same message as a scan's."""
    _, x, f = synthetic_teachers(6, 40, seed=2)
    x, f = x.double(), f.double()
    bad_f = f.clone()
    bad_f[3, 25] = float("nan")  # batch 2 of 10 points, its column 5
    with pytest.raises(ValueError, match=r"stream batch 2: f_batch contains 1 non-finite value\(s\) \(NaN or Inf\), the first at index \(3, 5\)"):
        _fit(StreamingEM, TensorStream(x, bad_f, 10), 1, **SCHEDULES[schedule])
    bad_x = x.clone()
    bad_x[12, 0] = float("inf")
    with pytest.raises(ValueError, match=r"stream batch 1: x_batch contains 1 non-finite value"):
        _fit(StreamingEM, TensorStream(bad_x, f, 10), 1, **SCHEDULES[schedule])

    class Changing:
        """A broken stream: the values of ``bad_f`` on the passes in ``bad``, finite on the others."""

        def __init__(self, bad):
            self.bad, self.passes = bad, 0

        def __iter__(self):
            self.passes += 1
            yield from TensorStream(x, bad_f if self.passes in self.bad else f, 10)

    def fresh():
        pyro.clear_param_store()
        model = small_model(0)
        return model, StreamingEM(model, ExactFactorPosterior(model), pyro.optim.Adam({"lr": 1e-2}), **SCHEDULES[schedule])

    # Finite on the first pass (the statistics), NaN from the next (the gradient) on: the search names the batch.
    model, em = fresh()
    with pytest.raises(ValueError, match=r"stream batch 2: f_batch contains 1 non-finite value"):
        em.step(Changing(bad=range(2, 10)))
    assert all(bool(torch.isfinite(p).all()) and p.grad is None for p in model.parameters())  # no NaN step was taken
    # NaN on the gradient pass only: the search finds every batch finite and says what is left.
    _, em = fresh()
    with pytest.raises(ValueError, match=r"stream: the sums over its batches are not finite, yet every batch this process "
                                         r"streams is finite .* yields different values on different passes"):
        em.step(Changing(bad={2}))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_two_gloo_processes_fit_what_one_process_fits_on_the_union_of_their_batches(tmp_path, schedule):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(streaming_worker, args=(2, free_port(), out, False, schedule), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    _, x, f = synthetic_teachers(12, 96, seed=3)
    # One process, global batch k = the union of both shards' batch k = rows [32k, 32k + 32).
    single, losses = _fit(StreamingEM, TensorStream(x.double(), f.double(), 32), 4, seed=0, **SCHEDULES[schedule])
    assert result["losses"] == pytest.approx(losses, rel=1e-9)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(result["state"][name], value, rtol=1e-6, atol=1e-8)
    # Collectives per iteration: the statistics pass's four (three sums of statistics and the counts),
    # then one per M-step -- two accumulated steps, or one per batch.
    steps = SCHEDULES[schedule].get("num_m_steps") or result["batches"]
    assert result["batches"] == 3 and result["all_reduces"] == 4 + steps


def test_a_crashed_process_ends_the_job_with_its_error_instead_of_a_hang(tmp_path):
    """Rank 1 raises; the job ends within the collective timeout (20 s) with an error naming the failure --
    rank 1's own, or rank 0's report that its peer crashed, whichever the launcher sees first."""
    import time

    start = time.perf_counter()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails on purpose|remote worker|Connection (closed|reset) by peer"):
        mp.spawn(streaming_worker, args=(2, free_port(), str(tmp_path / "x.pt"), True), nprocs=2, join=True)
    assert time.perf_counter() - start < 60
