"""The scaling benchmark's pieces on tiny sizes (the full run takes hours; see benchmarks/results/scale.md)."""

from pathlib import Path

import pytest

from pyro_dlf_bench.harness.covariance_race import covariance_race, error_at
from pyro_dlf_bench.harness.scale import _limits, _predictive, _streamed_lines, _subprocess, measure, write_scale_report


def test_measurements_and_report(tmp_path):
    rows = [measure("memory", m, 6, 3, batch_size=64, repeats=1) for m in (128, 256)]
    rows.append(measure("stream", 256, 6, 3, batch_size=64, repeats=1))
    assert all(r["seconds"] > 0 and r["peak_mib"] > 0 for r in rows)
    # A configuration in its own process (what the benchmark does for every row), and a failure reported as a row.
    child = _subprocess(dict(kind="stream", m=128, n=4, q=2, batch_size=64, repeats=1, device="cpu"), timeout=300)
    assert child["seconds"] > 0 and child["processes"] == 1
    failed = _subprocess(dict(kind="nonsense", m=8, n=2, q=1, batch_size=4, repeats=1, device="cpu"), timeout=300)
    assert "kind must be 'memory', 'stream' or 'stored'" in failed["error"]
    limits = _limits(6, 256, 3)
    assert limits["bound_seconds"] > 0 and limits["bandwidth_gb_s"] > 0
    race = covariance_race(300, n=6, q=3, budget_seconds=1.0, exact_max_points=400)
    assert set(race["curves"]) == {"DLF", "deep-kernel GP", "SVGP", "exact GP"}
    for curve in race["curves"].values():
        # Scored before training and then at least once; training seconds increase up to the budget.
        assert curve[0][0] == 0 and len(curve) >= 2 and all(a[0] < b[0] for a, b in zip(curve, curve[1:]))
        assert curve[-1][0] >= 1.0 and all(0 < e < 10 for _, e in curve)
    assert race["checkpoints"] == [0.5] and all(len(v) == 1 for v in race["error_at"].values())
    assert 0 < race["sample_covariance_error"] < 10
    result = {"command": "test", "config": {"sizes": (128, 256)}, "rows": rows + [failed], "parallel": [child],
              "limits": limits, "predictive": [_predictive(4)], "race": [race], "versions": {"torch": "x", "pyro_dlf": "y"},
              "machine": {"platform": "p", "cpus": 2, "device": "cpu"}, "wall_seconds": 1.0}
    _, md = write_scale_report(result, str(tmp_path))
    text = Path(md).read_text()
    assert "| memory | 256 | 6 | 3 |" in text and "m = 300:" in text and "| deep-kernel GP |" in text
    assert "within 3× of the bandwidth/flop bound" not in text  # n = 50 rows only
    assert (tmp_path / "scale.png").stat().st_size > 0 and (tmp_path / "scale_race.png").stat().st_size > 0


def test_a_stream_of_the_stored_values_fits_as_in_memory_em_does():
    """The same mathematics on the same data: the iterations' losses agree to float32 rounding of the
    M-step's sums (taken in batches of 64 points against chunks of all of them)."""
    memory = measure("memory", 256, 6, 3, batch_size=64, repeats=2)
    stored = measure("stored", 256, 6, 3, batch_size=64, repeats=2)
    assert len(stored["losses"]) == len(memory["losses"]) == 3
    for a, b in zip(stored["losses"], memory["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b)


def test_the_streamed_rows_are_reported_against_the_in_memory_ones():
    rows = [dict(kind=kind, m=1000, n=50, q=10, seconds=seconds, losses=[-100.0, -110.0 * scale])
            for kind, seconds, scale in (("memory", 2.0, 1.0), ("stream", 5.0, 1.0), ("stored", 3.0, 1 + 1e-6))]
    text = "\n".join(_streamed_lines(rows, {1000: 2.0}))
    assert "streamed (the teachers evaluated per batch, on both passes) against the in-memory iteration" in text
    assert "2.50× at m = 1,000" in text and "1.50× at m = 1,000" in text
    assert "streamed from stored values (the streaming algorithm alone) and in-memory fits" in text and "1.0e-06 at m = 1,000" in text


def test_error_at_a_checkpoint_is_the_fit_held_then():
    curve = [(0.0, 1.0), (0.4, 0.5), (1.1, 0.7), (2.5, 0.3)]
    assert error_at(curve, 0.3) is None  # not yet scored after a step
    assert error_at(curve, 1.0) == 0.5 and error_at(curve, 2.0) == 0.7 and error_at(curve, 9.0) == 0.3


def test_the_teacher_stream_gives_a_batch_the_same_values_on_every_pass():
    import torch

    from pyro_dlf_bench.harness.known_teachers import DesignBatches, TeacherBatches, teacher_functions

    stream = TeacherBatches(DesignBatches(range(0, 100, 40), 40, 100, torch.device("cpu")), teacher_functions(3))
    first, second = list(stream), list(stream)
    assert [xb.shape[0] for xb, _ in first] == [40, 40, 20]
    for (xa, fa), (xb, fb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(fa, fb)
    assert not torch.equal(first[0][1][:, :20], first[2][1])  # batches draw their own noise
    with pytest.raises(ValueError, match="kind must be"):
        measure("nonsense", 8, 2, 1, 4, 1)
