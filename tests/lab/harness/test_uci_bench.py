"""Smoke test of the UCI benchmark pipeline (yacht, 2 splits, 5 teachers): runs end to end, sane metrics.

The pipeline tests run on the shared UCI sets when the tests' data root has them (see
``tests/shared_data.py``) and on scikit-learn's diabetes set otherwise; they read the set's name
and input count from the data they get.
"""

import json
import math

import pytest
import torch

from pyro_dlf.cli import main
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf_bench.metrics import gaussian_crps, gaussian_nll, rmse


@pytest.mark.data
def test_uci_bench_smoke(tmp_path, capsys, uci_set_or_diabetes):
    folder = uci_set_or_diabetes("yacht")
    data = load_uci(folder)
    name, num_inputs = data.name, data.x.shape[1]
    out = tmp_path / "results"
    argv = ["bench", "uci", "--data-path", str(folder), "--splits", "2", "--teachers", "5",
            "--teacher-epochs", "150", "--student-epochs", "150", "--student-hidden", "48", "--dlf-iterations", "20", "--mmd-steps", "50",
            "--num-factors", "3", "--ablations", "estep", "design", "nugget", "length", "loadings", "--output-dir", str(out), "--name", "smoke",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    result = json.loads((out / "smoke.json").read_text())
    assert result["config"]["student_hidden"] == [48]
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"teacher ensemble", "small-Ens", "Hydra", "BE", "DLF", "DLF 1×48", "DLF + nugget", "DLF minibatch E-step",
                       "DLF held-out design", "DLF jittered design", "DLF, out-of-sample spread", "DLF, noise given factors",
                       "DLF, noise law by held-out check", "DLF, training length chosen", "DLF, shared body"}
    # The default DLF's body is chosen per split from the family by held-out likelihood; DLF 1×48 keeps the students' width.
    from pyro_dlf.selection import BODY_FAMILY

    from pyro_dlf.models import DeepLatentFactor

    for row in result["rows"]:
        if row["method"] == "DLF":
            # The body for the mean chosen by the rule; the loadings from their own body of the students' widths.
            assert tuple(row["hidden"]) in BODY_FAMILY and row["body_selection"]["chosen"] == row["hidden"]
            assert row["loading_hidden"] == [48]
            # The design is chosen per split (distill(design="auto")); a design off the rows brings the distance feature.
            anchors = 256 if row["design_choice"]["distance_feature"] else None
            network = DeepLatentFactor(num_inputs, 3, tuple(row["hidden"]), loading_hidden=(48,), distance_anchors=anchors)  # q = 3
            assert row["parameters"] == sum(p.numel() for p in network.parameters())
        elif row["method"] == "DLF 1×48":
            assert row["hidden"] == [48] and "body_selection" not in row and "loading_hidden" not in row
        elif row["method"] == "DLF, shared body":
            # The loadings ablation beside a loading-body DLF: the same body rule, one body for both heads.
            assert tuple(row["hidden"]) in BODY_FAMILY and "loading_hidden" not in row
            anchors = 256 if row["design_choice"]["distance_feature"] else None  # its own design choice
            network = DeepLatentFactor(num_inputs, 3, tuple(row["hidden"]), distance_anchors=anchors)
            assert row["body_selection"]["chosen"] == row["hidden"] and row["parameters"] == sum(p.numel() for p in network.parameters())
    # Body and training length chosen together on the same held-out design points; with the full
    # schedule and the DLF row's body it is the DLF row's own fit.
    from pyro_dlf.selection import TRAINING_FAMILY

    for seed in range(2):
        plain = next(r for r in result["rows"] if r["method"] == "DLF" and r["split"] == seed)
        chosen = next(r for r in result["rows"] if r["method"] == "DLF, training length chosen" and r["split"] == seed)
        record = chosen["body_selection"]
        assert record["lengths"] == [ell for _ in BODY_FAMILY for ell in TRAINING_FAMILY] and record["chosen_length"] in TRAINING_FAMILY
        assert record["chosen"] == chosen["hidden"] and plain["body_selection"]["lengths"] == [1.0] * len(BODY_FAMILY)
        if record["chosen_length"] == 1.0 and chosen["hidden"] == plain["hidden"]:
            assert chosen["nll"] == pytest.approx(plain["nll"], rel=1e-6)
    # The calibrated row is the DLF's own fit, rescaled: same mean, same body, the scale recorded.
    by_key = {(r["method"], r["split"]): r for r in result["rows"]}
    for seed in range(2):
        plain, calibrated = by_key[("DLF", seed)], by_key[("DLF, out-of-sample spread", seed)]
        assert calibrated["rmse"] == pytest.approx(plain["rmse"], rel=1e-6) and calibrated["hidden"] == plain["hidden"]
        record = calibrated["spread_calibration"]
        assert record["scale"] > 0 and record["points"] > 0
        if not plain["design_choice"]["distance_feature"]:
            assert calibrated["variance_ratio"] == pytest.approx(plain["variance_ratio"] * record["scale"], rel=1e-4)
        else:
            # ‖Φ‖² is scaled, the nugget's kept growth G ≥ 0 is not (mathematics §9.4): (sP + G)/T lies between
            # (P + G)/T and s (P + G)/T.
            low, high = sorted([plain["variance_ratio"], plain["variance_ratio"] * record["scale"]])
            assert low * (1 - 1e-4) <= calibrated["variance_ratio"] <= high * (1 + 1e-4)
        # The factor-noise row is the same fit with the law that follows the factors: the same mean;
        # the same predictive when the teachers gave no evidence against the i.i.d. law (the test is recorded).
        factor = by_key[("DLF, noise given factors", seed)]
        assert factor["rmse"] == pytest.approx(plain["rmse"], rel=1e-6) and factor["hidden"] == plain["hidden"]
        law = factor["noise_fit"]
        assert law["statistic"] >= 0 and 0 <= law["p_value"] <= 1 and law["adopted"] == (law["p_value"] < 0.01)
        if not law["adopted"]:
            assert factor["nll"] == pytest.approx(plain["nll"], rel=1e-6)
        # The held-out check scores both laws on the teachers' held-out rows; its row takes the law it prefers.
        checked = by_key[("DLF, noise law by held-out check", seed)]
        assert checked["noise_fit"] is not None and math.isfinite(law["heldout_score_iid"]) and math.isfinite(law["heldout_score_law"])
        gain = law["heldout_score_law"] - law["heldout_score_iid"]
        assert law["heldout_adopted"] == (gain > law["heldout_gain_se"])
        if not law["heldout_adopted"]:
            assert checked["nll"] == pytest.approx(plain["nll"], rel=1e-6)
        elif law["adopted"]:
            assert checked["nll"] == pytest.approx(factor["nll"], rel=1e-6)
    assert "## The noise law" in (out / "smoke.md").read_text()
    assert len(result["rows"]) == 2 * len(methods)
    for row in result["rows"]:
        for key in ("rmse", "nll", "crps", "coverage95", "variance_ratio", "predict_1000_seconds"):
            assert math.isfinite(row[key]), (row["method"], key)
        assert 0 <= row["coverage95"] <= 1
        assert row["variance_ratio"] >= 0
    # Ordered sensibly: every method beats climatology -- the predictive N(training mean,
    # training variance) -- on both proper scores, and in RMSE.
    for seed in range(2):
        split = data.split(seed)
        y_train = split.y_standardizer.inverse(split.y_train)
        y = split.y_test_original
        mean, var = torch.full_like(y, float(y_train.mean())), torch.full_like(y, float(y_train.var()))
        climate = {"crps": float(gaussian_crps(mean, var, y)), "nll": float(gaussian_nll(mean, var, y)),
                   "rmse": float(rmse(mean, y))}
        for row in (r for r in result["rows"] if r["split"] == seed):
            for key, value in climate.items():
                assert row[key] < value, (row["method"], key, row[key], value)
    md = (out / "smoke.md").read_text()
    assert "teacher ensemble" in md and "± " in md and "not quoted" in md
    assert (out / f"smoke_{name}.png").stat().st_size > 5_000
    # Teachers were cached and a rerun reuses them.
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4

    # Merging: a result merged with itself keeps every row once, and the repeated
    # rows agree exactly (the report is a deterministic function of the files).
    assert main(["bench", "report", str(out / "smoke.json"), str(out / "smoke.json"),
                 "--output-dir", str(out), "--name", "merged"]) == 0
    merged = json.loads((out / "merged.json").read_text())
    assert len(merged["rows"]) == len(result["rows"]) and len(merged["runs"]) == 2
    assert merged["repeat_max_nll_difference"] == 0.0
    merged_md = (out / "merged.md").read_text()
    assert "## Targets" in merged_md and "(set, metric, rival) cells" in merged_md
    assert "## Where the variance goes" in merged_md
    # A merged file merges again: its source runs say which design the DLF rows followed.
    assert main(["bench", "report", str(out / "merged.json"), str(out / "smoke.json"), "--output-dir", str(out), "--name", "again"]) == 0
    for design, code in ((result["config"]["dlf_design"], 0), ("beyond", 2), ("given", 2)):
        if design == result["config"]["dlf_design"] and code == 2:
            continue
        other = dict(result, config=dict(result["config"], dlf_design=design))
        (out / "other.json").write_text(json.dumps(other))
        assert main(["bench", "report", str(out / "merged.json"), str(out / "other.json"), "--output-dir", str(out),
                     "--name", "other"]) == code
    # The calibrated fit's line carries the teachers' held-out spread against their test spread.
    line = next(l for l in merged_md.splitlines() if l.startswith(f"| {name} | DLF, out-of-sample spread |"))
    expected = sum(r["spread_calibration"]["teacher_spread"] / r["teacher_spread_test"] for r in result["rows"]
                   if r["method"] == "DLF, out-of-sample spread") / 2
    assert line.rstrip(" |").endswith(f"{expected:.2f}")
    # Keeping some methods only (e.g. variants whose protocol changed between runs are left out).
    assert main(["bench", "report", str(out / "smoke.json"), "--output-dir", str(out), "--name", "kept",
                 "--methods", "teacher ensemble", "DLF"]) == 0
    kept = json.loads((out / "kept.json").read_text())
    assert {r["method"] for r in kept["rows"]} == {"teacher ensemble", "DLF"} and kept["methods"] == ["teacher ensemble", "DLF"]
    assert "Methods kept from these runs: `teacher ensemble`, `DLF`." in (out / "kept.md").read_text()
    assert main(["bench", "report", str(out / "smoke.json"), "--output-dir", str(out), "--methods", "DLF 9×9"]) == 2
    # A method recomputed with changed code: the first file's rows win and their differences from an older
    # run are not counted as irreproducibility (here an older run whose DLF rows differ).
    older = json.loads((out / "smoke.json").read_text())
    for row in older["rows"]:
        if row["method"] == "DLF":
            row["nll"] += 1.0
    (out / "older.json").write_text(json.dumps(older))
    assert main(["bench", "report", str(out / "smoke.json"), str(out / "older.json"), "--output-dir", str(out),
                 "--name", "recomputed", "--recomputed", "DLF"]) == 0
    recomputed = json.loads((out / "recomputed.json").read_text())
    assert recomputed["repeat_max_nll_difference"] == 0.0 and recomputed["recomputed"] == ["DLF"]
    assert {r["nll"] for r in recomputed["rows"] if r["method"] == "DLF"} == {r["nll"] for r in result["rows"] if r["method"] == "DLF"}
    assert "leaving out the recomputed methods: `DLF`" in (out / "recomputed.md").read_text()
    # An older run with more splits: its extra rows of the recomputed method follow the old
    # definition and are left out too (no set mixes the two); the other methods keep every split.
    for row in [r for r in older["rows"] if r["split"] == 1]:
        older["rows"].append(dict(row, split=7))
    (out / "older.json").write_text(json.dumps(older))
    assert main(["bench", "report", str(out / "smoke.json"), str(out / "older.json"), "--output-dir", str(out),
                 "--name", "recomputed", "--recomputed", "DLF"]) == 0
    recomputed = json.loads((out / "recomputed.json").read_text())
    assert {r["split"] for r in recomputed["rows"] if r["method"] == "DLF"} == {0, 1}
    assert {r["split"] for r in recomputed["rows"] if r["method"] == "BE"} == {0, 1, 7}
    # The targets compare DLF with the others on the splits DLF has.
    assert f"Compared on the splits `DLF` has: {name} 2." in (out / "recomputed.md").read_text()
    assert main(["bench", "report", str(out / "smoke.json"), str(out / "older.json"), "--output-dir", str(out),
                 "--name", "counted"]) == 0
    assert json.loads((out / "counted.json").read_text())["repeat_max_nll_difference"] == pytest.approx(1.0)
    assert main(["bench", "report", str(out / "smoke.json"), "--output-dir", str(out), "--recomputed", "DLF 9×9"]) == 2
    dlf_rows = [r for r in result["rows"] if r["method"].startswith("DLF") and r["method"] not in ("DLF + nugget", "DLF, noise given factors",
                                                                                             "DLF, noise law by held-out check")]
    for row in dlf_rows:
        assert row["teacher_spread_design"] > 0 and row["student_variance_design"] >= 0 and row["nugget_variance"] > 0


@pytest.mark.data
def test_first_split_runs_the_seeds_that_follow_it(monkeypatch, uci_set_or_diabetes):
    import pyro_dlf_bench.harness.uci as uci

    folder = str(uci_set_or_diabetes("yacht"))
    seen = []
    monkeypatch.setattr(uci, "_run_split", lambda config, data, seed: seen.append(seed) or [])
    config = uci.UCIBenchConfig(data_path=folder, splits=3, first_split=4, progress=False)
    assert uci.run_uci_benchmark(config)["rows"] == []
    assert seen == [4, 5, 6]
    with pytest.raises(ValueError, match="first_split"):
        uci.run_uci_benchmark(uci.UCIBenchConfig(data_path=folder, first_split=-1, progress=False))


@pytest.mark.data
def test_extrapolation_bench_smoke(tmp_path, capsys, uci_set_or_diabetes):
    """Extrapolation split, Gaussian-augmented design for every student, the augment ablation: per-part
    metrics and the AUROC of the epistemic variance for every method; the report's extrapolation section."""
    folder = uci_set_or_diabetes("yacht")
    name = load_uci(folder).name
    out = tmp_path / "results"
    argv = ["bench", "uci", "--data-path", str(folder), "--splits", "1", "--teachers", "4", "--teacher-epochs", "100",
            "--student-epochs", "100", "--student-hidden", "32", "--dlf-hidden", "24", "--dlf-iterations", "10", "--mmd-steps", "30",
            "--num-factors", "2", "--design", "gaussian", "--ablations", "augment", "oof", "same-design", "--extrapolation",
            "--dlf-design", "around", "--output-dir", str(out),
            "--cache-dir", "", "--no-progress"]
    assert main(argv) == 0
    result = json.loads((out / "uci_extrapolation.json").read_text())
    assert result["config"]["extrapolation"] and result["config"]["design"] == "gaussian"
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"teacher ensemble", "small-Ens", "Hydra", "BE", "DLF", "DLF 1×32", "DLF Gaussian design", "DLF mixup design",
                       "DLF outward design", "DLF out-of-fold values", "DLF, out-of-sample spread", "DLF, noise given factors",
                       "DLF, noise law by held-out check", "small-Ens, DLF's design", "Hydra, DLF's design", "BE, DLF's design",
                       "DLF, data rows only", "DLF, no distance feature"}
    # The row DLF asked for the "around" design: the rows and one perturbation of each, the distance feature on;
    # the same-design rows keep its body and change only the design or the feature.
    dlf = next(r for r in result["rows"] if r["method"] == "DLF")
    assert dlf["design_choice"]["design"] == "around" and dlf["design_choice"]["distance_feature"]
    assert dlf["design_choice"]["num_design_points"] == 2 * dlf["design_choice"]["num_data_points"]
    assert {tuple(r["hidden"]) for r in result["rows"] if r["method"] in ("DLF, data rows only", "DLF, no distance feature")} == {
        tuple(dlf["hidden"])}
    # The design variants take the DLF row's network (here a fixed 1 × 24 body for the mean and the
    # default loading body of the students' widths, 1 × 32), not the paper-protocol network.
    assert {tuple(r["hidden"]) for r in result["rows"] if r["method"].startswith("DLF") and r["method"].endswith("design")} == {(24,)}
    assert {tuple(r["loading_hidden"]) for r in result["rows"]
            if r["method"].startswith("DLF") and r["method"].endswith("design") or r["method"] == "DLF"} == {(32,)}
    for row in result["rows"]:
        for key in ("nll_in", "nll_out", "crps_in", "crps_out", "rmse_out"):
            assert math.isfinite(row[key]), (row["method"], key)
        assert 0 <= row["auroc_epistemic"] <= 1
        if row["method"].startswith("DLF"):  # both label-free checks, in range and beyond the data
            assert math.isfinite(row["teacher_oof_nll"]) and math.isfinite(row["teacher_probe_nll"])
    md = (out / "uci_extrapolation.md").read_text()
    assert "## Extrapolation" in md and "AUROC epistemic" in md and "extrapolation splits" in md
    assert f"Designs chosen by `DLF, design chosen in and beyond the data`: {name}:" in md
    assert "| DLF, design chosen in and beyond the data | 1 |" in md
    # The extrapolation target is checked for the DLF and for both design-chosen rows.
    for method in ("DLF", "DLF, out-of-sample spread", "DLF, design chosen by out-of-sample teacher values",
                   "DLF, design chosen in and beyond the data"):
        assert f"Targets for `{method}` over 1 sets: out-of-range NLL ≤ the teachers' + 0.10 nats on" in md
    assert "The same for `DLF, design chosen in and beyond the data`:" in md
    assert main(["bench", "uci", "--data-path", str(folder), "--dlf-hidden", "0", "--output-dir", str(out),
                 "--no-progress"]) == 2
    assert "--dlf-hidden: widths must be positive" in capsys.readouterr().err
    for bad, message in ((["auto"], "--dlf-loading-hidden: give none or positive widths such as 50, got auto"),
                         (["0"], "--dlf-loading-hidden: widths must be positive, got 0")):
        assert main(["bench", "uci", "--data-path", str(folder), "--dlf-loading-hidden", *bad, "--output-dir", str(out),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.data
def test_extrapolation_split_holds_out_the_far_end_of_the_first_principal_component(uci_set_or_diabetes):
    data = load_uci(uci_set_or_diabetes("concrete"))
    split = data.extrapolation_split(3)
    n = len(data)
    out = split.test_out_of_range
    assert int(out.sum()) == round(0.1 * n) and int((~out).sum()) == round(0.1 * n)
    assert split.x_train.shape[0] == n - int(out.numel())
    # Back in original units, every out-of-range row projects beyond every other row.
    projection = data.first_principal_projection()
    x_test = split.x_standardizer.inverse(split.x_test).double()
    rows = torch.cdist(x_test, data.x.double()).argmin(1)
    assert float(projection[rows[out]].min()) >= float(projection[rows[~out]].max())
    # The training statistics standardize: the training inputs have mean 0 (no test information).
    torch.testing.assert_close(split.x_train.mean(0), torch.zeros(data.x.shape[1]), atol=1e-5, rtol=0)
    # The same out-of-range rows for every seed; the in-range rows change.
    other = data.extrapolation_split(4)
    torch.testing.assert_close(other.x_standardizer.inverse(other.x_test[other.test_out_of_range]).sort(0).values,
                               split.x_standardizer.inverse(split.x_test[out]).sort(0).values, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="out_fraction"):
        data.extrapolation_split(0, out_fraction=1.2)


def test_design_selection_takes_the_fit_that_best_explains_the_teachers_out_of_sample_values():
    from pyro_dlf_bench.harness.uci import (DESIGN_CANDIDATES, DESIGN_SELECTED, DESIGN_SELECTED_BEYOND, design_check,
                                    design_selection)

    def row(split, method, oof, nll, probe=None):
        out = {"dataset": "toy", "split": split, "method": method, "teacher_oof_nll": oof, "nll": nll}
        return out if probe is None else dict(out, teacher_probe_nll=probe)

    rows = [row(0, "DLF", 1.0, 0.5, 3.0), row(0, "DLF Gaussian design", 0.7, 0.9, 2.0), row(0, "DLF mixup design", 0.8, 0.1, 4.0),
            row(0, "DLF outward design", 0.9, 0.2, 2.5),
            row(1, "DLF", 0.2, 0.5, 3.0), row(1, "DLF Gaussian design", 0.7, 0.4, 2.0), row(1, "DLF mixup design", 0.8, 0.3, 4.0),
            row(1, "DLF outward design", 0.9, 0.3, 2.1),
            row(2, "DLF", 0.1, 0.5)]  # split 2 lacks candidates: no selection there
    chosen = design_selection(rows)
    in_range = [(r["split"], r["chosen_design"], r["nll"]) for r in chosen if r["method"] == DESIGN_SELECTED]
    beyond = [(r["split"], r["chosen_design"]) for r in chosen if r["method"] == DESIGN_SELECTED_BEYOND]
    assert in_range == [(0, "DLF Gaussian design", 0.9), (1, "DLF", 0.5)]
    # Split 1: the training-input fit wins in range (0.2) but the Gaussian design's mean score is lower (1.35 < 1.6).
    assert beyond == [(0, "DLF Gaussian design"), (1, "DLF Gaussian design")] and len(DESIGN_CANDIDATES) == 4
    # Rows without the probe score (older runs) get the in-range selection only.
    old = [{k: v for k, v in r.items() if k != "teacher_probe_nll"} for r in rows]
    assert {r["method"] for r in design_selection(old)} == {DESIGN_SELECTED}
    text = "\n".join(design_check(rows))
    assert "DLF Gaussian design ×1" in text and "| toy | DLF | 3 | 0.433 | 3.000 |" in text
    assert f"Designs chosen by `{DESIGN_SELECTED_BEYOND}`: toy: DLF Gaussian design ×2." in text


def test_baseline_students_take_minibatches_only_on_large_design_sets():
    from pyro_dlf_bench.harness.uci import _student_schedule

    assert _student_schedule(2000, 1000) == (1000, None)  # full batch: 1,000 steps
    epochs, batch = _student_schedule(10_000, 1000)  # 40 batches per epoch: 100 epochs = 4,000 steps
    assert batch == 256 and epochs * math.ceil(10_000 / 256) == 4000
    assert _student_schedule(10**6, 1000) == (20, 256)  # at least 20 passes


def test_extrapolation_target_is_not_decided_without_other_students():
    from pyro_dlf_bench.harness.uci import extrapolation_summary

    def row(method, split, auroc):
        return {"dataset": "toy", "split": split, "method": method, "auroc_epistemic": auroc,
                **{key: 0.0 for key in ("nll_in", "nll_out", "crps_in", "crps_out")}}

    alone = [row("teacher ensemble", s, 0.9) for s in range(2)] + [row("DLF", s, 0.95) for s in range(2)]
    text = "\n".join(extrapolation_summary(alone))
    assert "not decided (no other student in these rows)" in text and "met on" not in text
    rivals = alone + [row("small-Ens", s, 0.97) for s in range(2)]
    text = "\n".join(extrapolation_summary(rivals))
    assert "AUROC ≥ every other student's (small-Ens, Hydra, BE) on 0 of 1" in text and "small-Ens 0.970 (**not met**)" in text


def test_a_variant_on_fewer_splits_is_compared_on_its_own_splits():
    from pyro_dlf_bench.harness.uci import targets_on_own_splits

    def row(method, split, nll):
        return {"dataset": "toy", "split": split, "method": method, "nll": nll, "rmse": 1.0, "crps": 1.0, "coverage95": 0.95,
                "variance_ratio": 1.0, "parameters": 1, "predict_1000_seconds": 0.0, "fit_seconds": 0.0}

    # The ensemble's NLL is 1.0 on split 0 and 3.0 on splits 1 and 2; the variant ran on split 0 only.
    rows = [row("teacher ensemble", s, nll) for s, nll in enumerate((1.0, 3.0, 3.0))] + [row("variant", 0, 1.1)]
    text = "\n".join(targets_on_own_splits(rows, "variant"))
    assert "The same for `variant` (compared on the splits it has: toy 1):" in text
    assert "| toy | +0.1 | +10.0 % |" in text  # 1.1 against 1.0 on split 0, not against the mean 2.33 over three
    assert targets_on_own_splits(rows, "absent") == []


def test_extrapolation_targets_of_a_row_on_fewer_splits_use_its_own_splits():
    """The teachers' out-of-range NLL is 1.0 on split 0 and 9.0 on split 1; a row on split 0 alone is held to 1.0."""
    from pyro_dlf_bench.harness.uci import extrapolation_summary

    def row(method, split, nll_out):
        return {"dataset": "toy", "split": split, "method": method, "auroc_epistemic": 0.9, "nll_out": nll_out,
                **{key: 0.0 for key in ("nll_in", "crps_in", "crps_out")}}

    rows = [row("teacher ensemble", 0, 1.0), row("teacher ensemble", 1, 9.0), row("DLF", 0, 1.5), row("DLF", 1, 9.0)]
    rows.append(row("calibrated", 0, 1.5))
    text = "\n".join(extrapolation_summary(rows, ("DLF", "calibrated")))
    assert "- toy: NLL out 1.500 vs teachers 1.000 (**not met**)" in text and "(on its 1 split)" in text
    assert "- toy: NLL out 5.250 vs teachers 5.000 (**not met**)" in text  # the DLF on both splits


def test_infeasible_calibrations_name_only_splits_without_the_row():
    from pyro_dlf_bench.harness.uci import CALIBRATED, infeasible_calibrations

    flagged = [{"dataset": "toy", "split": s, "method": "DLF", "calibration_infeasible": "held_out: ..."} for s in (0, 1, 2)]
    kept = [{"dataset": "toy", "split": 1, "method": CALIBRATED}]  # e.g. from another run of a merge
    text = "\n".join(infeasible_calibrations(flagged + kept))
    assert f"`{CALIBRATED}` is undefined on toy splits 0, 2 (its rows average the other splits)" in text
    assert text.count("held_out: ...") == 1  # one reason, given once
    assert infeasible_calibrations(kept) == []


@pytest.mark.data
def test_an_infeasible_spread_calibration_leaves_its_row_out_and_says_so(tmp_path, monkeypatch, uci_set_or_diabetes):
    """When the nugget the predictive keeps alone exceeds the teachers' out-of-sample spread, the calibrated row is
    undefined: the split keeps every other row, the DLF row records why, and the report names the split."""
    import pyro_dlf_bench.harness.uci as uci
    from pyro_dlf.calibration import InfeasibleCalibration

    def infeasible(*args, **kwargs):
        raise InfeasibleCalibration("held_out: the nugget's growth beyond the data, which the predictive keeps, alone exceeds it")

    monkeypatch.setattr(uci, "calibrate_spread", infeasible)
    folder = uci_set_or_diabetes("yacht")
    out = tmp_path / "results"
    argv = ["bench", "uci", "--data-path", str(folder), "--splits", "1", "--teachers", "3", "--teacher-epochs", "30",
            "--dlf-hidden", "8", "--dlf-iterations", "3", "--mmd-steps", "5", "--num-factors", "2", "--dlf-design", "given",
            "--no-baselines", "--output-dir", str(out), "--name", "infeasible", "--cache-dir", "", "--no-progress"]
    assert main(argv) == 0
    result = json.loads((out / "infeasible.json").read_text())
    assert uci.CALIBRATED not in {r["method"] for r in result["rows"]}
    dlf = next(r for r in result["rows"] if r["method"] == "DLF")
    assert dlf["calibration_infeasible"].startswith("held_out: the nugget's growth")
    report = (out / "infeasible.md").read_text()
    assert (f"`{uci.CALIBRATED}` is undefined on {dlf['dataset']} split 0 (its rows average the other splits); the reason "
            "the `DLF` rows there record: \"held_out: the nugget's growth") in report
