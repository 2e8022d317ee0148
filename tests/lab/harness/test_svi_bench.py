"""Smoke test of ``pyro-dlf bench svi`` (yacht, 5 teachers, a few iterations; scikit-learn's diabetes
set when the tests' data root lacks the UCI sets, see ``tests/shared_data.py``)."""

import json
import math

import pytest

from pyro_dlf.cli import main


@pytest.mark.data
def test_svi_bench_smoke(tmp_path, uci_set_or_diabetes):
    out = tmp_path / "results"
    argv = ["bench", "svi", "--data-path", str(uci_set_or_diabetes("yacht")), "--teachers", "5", "--num-factors", "2",
            "--svi-steps", "40", "--mmd-steps", "30", "--evaluations", "4",
            "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    result = json.loads((out / "em_vs_svi.json").read_text())
    traces = {t["method"]: t for t in result["traces"]}
    assert set(traces) == {"EM, minibatch M-steps", "EM, full-batch M-step", "SVI, exact guide", "SVI, AutoNormal"}
    start = {t["nll_per_scalar"][0] for t in traces.values()}
    assert len(start) == 1  # one initialization for all
    for trace in traces.values():
        assert all(math.isfinite(v) for v in trace["nll_per_scalar"])
        assert trace["seconds"] == sorted(trace["seconds"])
    # EM with the exact E-step improves the exact likelihood from the shared start.
    for name in ("EM, minibatch M-steps", "EM, full-batch M-step"):
        assert traces[name]["final_nll_per_scalar"] < traces[name]["nll_per_scalar"][0]
        assert traces[name]["gradient_steps"] >= traces["SVI, AutoNormal"]["gradient_steps"]
    assert "time to reach EM's best final NLL" in (out / "em_vs_svi.md").read_text()
    assert (out / "em_vs_svi.png").stat().st_size > 5_000
