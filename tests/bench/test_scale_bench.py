"""The scaling benchmark's pieces on tiny sizes (the full run takes hours; see benchmarks/results/scale.md)."""

from pathlib import Path

import pytest

from pyro_dlf.bench.covariance_race import covariance_race
from pyro_dlf.bench.scale import _limits, _predictive, _subprocess, measure, write_scale_report


def test_measurements_and_report(tmp_path):
    rows = [measure("memory", m, 6, 3, batch_size=64, repeats=1) for m in (128, 256)]
    rows.append(measure("stream", 256, 6, 3, batch_size=64, repeats=1))
    assert all(r["seconds"] > 0 and r["peak_mib"] > 0 for r in rows)
    # A configuration in its own process (what the benchmark does for every row), and a failure reported as a row.
    child = _subprocess(dict(kind="stream", m=128, n=4, q=2, batch_size=64, repeats=1, device="cpu"), timeout=300)
    assert child["seconds"] > 0 and child["processes"] == 1
    failed = _subprocess(dict(kind="nonsense", m=8, n=2, q=1, batch_size=4, repeats=1, device="cpu"), timeout=300)
    assert "kind must be 'memory' or 'stream'" in failed["error"]
    limits = _limits(6, 256, 3)
    assert limits["bound_seconds"] > 0 and limits["bandwidth_gb_s"] > 0
    race = covariance_race(300, n=6, q=3, budget_seconds=2.0, exact_max_points=400)
    assert set(race["curves"]) == {"DLF", "SVGP", "exact GP"} and all(race["curves"][k] for k in race["curves"])
    assert all(0 < e < 10 for e in race["best_error"].values())
    result = {"command": "test", "config": {"sizes": (128, 256)}, "rows": rows + [failed], "parallel": [child],
              "limits": limits, "predictive": [_predictive(4, 10)], "race": [race], "versions": {"torch": "x", "pyro_dlf": "y"},
              "machine": {"platform": "p", "cpus": 2, "device": "cpu"}, "wall_seconds": 1.0}
    _, md = write_scale_report(result, str(tmp_path))
    text = Path(md).read_text()
    assert "| memory | 256 | 6 | 3 |" in text and "| 300 |" in text and "within 3× of the bandwidth/flop bound" not in text  # n = 50 rows only
    assert (tmp_path / "scale.png").stat().st_size > 0
    with pytest.raises(ValueError, match="kind must be"):
        measure("nonsense", 8, 2, 1, 4, 1)
