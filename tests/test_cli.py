"""The pyro-dlf command line (smoke run of the demo)."""

import json
import os

from pyro_dlf.cli import main


def test_demo_smoke_writes_table_png_and_json(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--no-progress", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("teacher ensemble", "one teacher", "DLF student", "RMSE", "CRPS"):
        assert name in printed
    assert os.path.getsize(out / "predictive_intervals.png") > 10_000
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    for row in rows.values():
        assert all(v == v and abs(v) != float("inf") for k, v in row.items() if k != "method")
        assert 0.0 <= row["coverage95"] <= 1.0
    # The student is smaller than the ensemble it distils.
    assert rows["DLF student"]["parameters"] < rows["teacher ensemble"]["parameters"]
