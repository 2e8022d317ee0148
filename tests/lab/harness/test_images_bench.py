"""Smoke test of the image benchmark (scikit-learn digits, 4 teachers), its design option and shift ladder, and the shift head."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pyro_dlf_bench.baselines.classifiers import prediction_from_probs
from pyro_dlf_bench.harness.image_shift import (NOISE_STDS, ROTATION_DEGREES, ShiftLadder, add_gaussian_noise, ladder_targets,
                                        merge_ladder, rotate_images)
from pyro_dlf_bench.harness.images import (ImagesBenchConfig, _plan, class_covariance_concentration, fit_latent_head, fit_linear_head,
                                   merge_images_results, run_images_benchmark, write_images_report)
from pyro_dlf.cli import main
from pyro_dlf.design.images import IMAGE_FAMILIES

LEVELS = [("rotation", d) for d in ROTATION_DEGREES] + [("noise", s) for s in NOISE_STDS]
ABLATION_ROWS = {"small-Ens, augmented design", "Hydra, augmented design", "BE, augmented design"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("images")
    out = tmp_path / "results"
    argv = ["bench", "images", "--dataset", "digits", "--design-size", "500", "--teachers", "4", "--teacher-epochs", "8",
            "--student-epochs", "15", "--batch-size", "32", "--dlf-iterations", "8", "--mmd-steps", "50", "--num-factors", "4",
            "--shift-sizes", "20", "200", "--shift-seeds", "2", "--output-dir", str(out), "--name", "smoke",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    return out, json.loads((out / "smoke.json").read_text())


@pytest.fixture(scope="module")
def ablation_run(smoke_run):
    """The held-out-images design with the design ablation, on small budgets; the teachers come from the smoke run's cache."""
    out = smoke_run[0]
    config = ImagesBenchConfig(dataset="digits", design_size=500, teachers=4, teacher_epochs=8, batch_size=32, student_epochs=2,
                               dlf_iterations=2, mmd_steps=10, num_factors=4, shift_sizes=(20,), shift_seeds=1, design="images",
                               ablations=("design",), shift_test_size=60, output_dir=str(out), name="ablation",
                               cache_dir=str(out.parent / "cache"), progress=False, command="pyro-dlf bench images --dataset digits")
    result = run_images_benchmark(config)
    write_images_report(result, str(out), "ablation")
    return out, result


def test_images_bench_smoke(smoke_run):
    out, result = smoke_run
    for suffix in ("md", "json"):
        assert (out / f"smoke.{suffix}").stat().st_size > 0
    for png in ("reliability", "auroc", "shift"):
        assert (out / f"smoke_{png}.png").stat().st_size > 0
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"teacher ensemble", "single CNN", "KD (forward KL)", "KD (reverse KL)", "KD (JS)", "KD (TV)",
                         "small-Ens", "Hydra", "BE", "Proxy-EnD²", "DLF", "DLF separable", "DLF uncentred logits",
                         "DLF full, loadings not projected", "DLF + nugget"}
    for method, row in rows.items():
        for key in ("accuracy", "nll", "ece", "brier", "auroc_entropy", "epistemic_share"):
            assert math.isfinite(row[key]), (method, key)
        assert 0 <= row["ece"] <= 1 and 0 <= row["epistemic_share"] <= 1 and 0 <= row["brier"] <= 2
        # Ordered sensibly: every method classifies far better than the uniform guess (accuracy 0.1) ...
        assert row["accuracy"] > 0.3, (method, row["accuracy"])
        # ... and, except the mode-seeking objectives (reverse KL, TV: overconfident by design), beats its NLL (log 10).
        if method not in ("KD (reverse KL)", "KD (TV)"):
            assert row["nll"] < math.log(10), (method, row["nll"])
    # Single networks carry no mutual information; the ensembles and the DLF do.
    assert rows["single CNN"]["auroc_mi"] is None and rows["single CNN"]["mi_test"] == 0
    for method in ("teacher ensemble", "small-Ens", "DLF"):
        assert rows[method]["mi_ood"] > 0 and rows[method]["auroc_mi"] is not None
    assert rows["teacher ensemble"]["accuracy"] > 0.85
    for method in ("DLF", "DLF separable", "DLF uncentred logits", "small-Ens", "Hydra", "BE"):
        assert rows[method]["logit_variance_ratio"] > 0 and math.isfinite(rows[method]["logit_variance_ratio"])
    # The default DLF is the full model with q = teachers − 1; the separable one has q = --num-factors.
    assert (rows["DLF"]["covariance"], rows["DLF"]["num_factors"]) == ("full", 3)
    assert (rows["DLF separable"]["covariance"], rows["DLF separable"]["num_factors"]) == ("separable", 4)
    for method in ("DLF", "DLF separable"):
        assert 0 < rows[method]["forward_1000_seconds"] < rows[method]["predictive_s1000_1000_seconds"]
        assert 0 < rows[method]["predictive_rule_1000_seconds"]
    # The default rule against 10⁴ draws: differences of the size of Monte Carlo error, not of the scores.
    check = rows["DLF"]["integration_check"]
    assert check["rule"] == "Gauss–Hermite 8^3" and check["reference_draws"] == 10_000
    assert abs(check["nll_difference"]) < 0.01 and abs(check["auroc_entropy_difference"]) < 0.02
    # The nugget joins the default fit's epistemic variance: a larger ratio, from the same fit.
    assert rows["DLF + nugget"]["logit_variance_ratio"] > rows["DLF"]["logit_variance_ratio"]
    assert rows["DLF + nugget"]["mi_test"] >= rows["DLF"]["mi_test"]
    # The teachers came from the cache on a second run: same teacher row.
    shift = result["shift"]
    assert {r["body"] for r in shift} == {"single CNN", "Hydra", "DLF", "DLF separable latent head"}
    assert len(shift) == 4 * 2 * 2
    by = {(r["body"], r["n"]): [] for r in shift}
    for r in shift:
        by[(r["body"], r["n"])].append(r["accuracy"])
    # More flipped examples help every body.
    for body in ("single CNN", "Hydra", "DLF"):
        assert np.mean(by[(body, 200)]) > np.mean(by[(body, 20)])
    text = (out / "smoke.md").read_text()
    assert "## Targets" in text and "MNIST-Flip" in text and "pyro-dlf bench images --dataset digits" in text


def test_shift_ladder_covers_every_method_and_level(smoke_run):
    _, result = smoke_run
    ladder = result["shift_ladder"]
    methods = [row["method"] for row in result["rows"]]
    assert result["data"]["shift_ladder_images"] == 200  # the digits default
    assert sorted((r["method"], r["family"], r["level"]) for r in ladder) == sorted((m, *lv) for m in methods for lv in LEVELS)
    for r in ladder:
        for key in ("accuracy", "nll", "ece", "auroc", "mi", "entropy"):
            assert math.isfinite(r[key]), (r["method"], r["family"], r["level"], key)
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ece"] <= 1 and 0 <= r["auroc"] <= 1 and r["nll"] > 0
    by = {(r["method"], r["family"], r["level"]): r for r in ladder}
    for method in methods:
        # Unrotated images are the unshifted ones: their scores tie, AUROC 1/2; the predictive is the clean one.
        assert by[(method, "rotation", 0.0)]["auroc"] == 0.5
    assert {by[(m, "rotation", 0.0)]["auroc_score"] for m in ("single CNN", "KD (JS)")} == {"total entropy"}
    assert {by[(m, "rotation", 0.0)]["auroc_score"] for m in ("teacher ensemble", "small-Ens", "DLF")} == {"mutual information"}
    teachers = lambda family, level: by[("teacher ensemble", family, level)]  # noqa: E731
    # The shifts are shifts: rotated digits and heavy noise defeat the teachers.
    assert teachers("rotation", 0.0)["accuracy"] > teachers("rotation", 90.0)["accuracy"] + 0.3
    assert teachers("noise", 0.8)["nll"] > teachers("noise", 0.1)["nll"]
    # The unrotated subset (200 of the 359 test images) scores like the whole test set, within sampling error (SE ≈ 0.015).
    whole = next(r for r in result["rows"] if r["method"] == "teacher ensemble")["accuracy"]
    assert teachers("rotation", 0.0)["accuracy"] == pytest.approx(whole, abs=0.1)


def test_design_option_sets_the_dlf_design_size(smoke_run, ablation_run):
    (_, augmented), (_, held_out) = smoke_run, ablation_run
    dlf_rows = ("DLF", "DLF separable", "DLF uncentred logits", "DLF full, loadings not projected", "DLF + nugget")
    rows = {r["method"]: r for r in augmented["rows"]}
    # Default design "augment": the 500 held-out images and one augmented copy of each, for the DLF rows only.
    for method in dlf_rows:
        assert (rows[method]["design"], rows[method]["design_points"]) == ("augment", 1000), method
    for method in ("single CNN", "KD (forward KL)", "small-Ens", "Hydra", "BE", "Proxy-EnD²"):
        assert (rows[method]["design"], rows[method]["design_points"]) == ("images", 500), method
    assert "design" not in rows["teacher ensemble"]
    design = augmented["design"]
    assert design["dlf"] == "augment" and design["families"] == list(IMAGE_FAMILIES) and design["strength"] == 1.0
    assert design["held_out_images"] == 500 and design["augmented_points"] == 1000
    assert design["excluded"] == ["rotation", "additive Gaussian noise"] and set(design["magnitudes"]) == set(IMAGE_FAMILIES)
    # Design "images": the DLF rows see the held-out images only.
    rows = {r["method"]: r for r in held_out["rows"]}
    for method in dlf_rows:
        assert (rows[method]["design"], rows[method]["design_points"]) == ("images", 500), method
    assert held_out["design"]["dlf"] == "images"


def test_design_ablation_rows(ablation_run):
    out, result = ablation_run
    rows = {r["method"]: r for r in result["rows"]}
    # design="images", so the DLF ablation row is the DLF on the augmented design.
    assert ABLATION_ROWS | {"DLF, augmented design"} <= set(rows)
    for method in ABLATION_ROWS | {"DLF, augmented design"}:
        assert (rows[method]["design"], rows[method]["design_points"]) == ("augment", 1000), method
        assert math.isfinite(rows[method]["nll"])
    assert rows["DLF, augmented design"]["covariance"] == rows["DLF"]["covariance"]
    assert rows["teacher ensemble"]["fit_seconds"] == 0.0  # the smoke run's teachers, from the cache
    methods = {r["method"] for r in result["rows"]}
    assert {r["method"] for r in result["shift_ladder"]} == methods and len(result["shift_ladder"]) == len(methods) * len(LEVELS)
    assert result["data"]["shift_ladder_images"] == 60
    text = (out / "ablation.md").read_text()
    assert "Ablation rows" in text and "'DLF, augmented design'" in text and "DLF rows: the 500 held-out images only" in text


def test_plan_of_the_design_ablation():
    plan, settings = _plan(ImagesBenchConfig(dataset="digits", ablations=("design",)))
    designs = {method: design for method, _, design in plan}
    assert designs["DLF"] == "augment" and designs["DLF, held-out images only"] == "images"
    assert all(designs[m] == "augment" for m in ABLATION_ROWS) and designs["small-Ens"] == "images"
    assert settings["DLF, held-out images only"] == settings["DLF"]
    plain = [method for method, _, _ in _plan(ImagesBenchConfig(dataset="digits"))[0]]
    assert not any("held-out" in m or "augmented design" in m for m in plain)


def test_ladder_report_and_pngs(smoke_run):
    out, _ = smoke_run
    for family in ("rotation", "noise"):
        assert (out / f"smoke_ladder_{family}.png").stat().st_size > 0
    text = (out / "smoke.md").read_text()
    ladder = text.split("## Distribution shift ladder: rotation and Gaussian noise")[1]
    for target in ("DLF NLL within 5 % of the teachers' at every level", "DLF NLL ≤ every other student's at ≥ 75 % of levels"):
        line = next(line for line in ladder.splitlines() if line.startswith(f"- {target}"))
        assert ("met (" in line) != ("**missed**" in line) and "of 18 levels" in line and "rotation" in line and "noise" in line
    assert "| method | 0° | 15° |" in ladder and "| 180° |" in ladder and "σ = 0.8 |" in ladder
    assert "by total entropy for the methods without members (single CNN" in ladder
    assert "![rotation](smoke_ladder_rotation.png)" in ladder and "![noise](smoke_ladder_noise.png)" in ladder
    design = text.split("## Design points")[1].split("## Results")[0]
    assert "1000 points" in design and "Rotation and additive Gaussian noise are not among the families" in design


def test_rotate_images():
    x = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rotate_images(x, 0), x)
    for k in (1, 2, 3):
        # Pixel centres land on pixel centres: exact, and counter-clockwise as torch.rot90 on (H, W).
        torch.testing.assert_close(rotate_images(x, 90 * k), torch.rot90(x, k, dims=(2, 3)), atol=1e-6, rtol=0)
    wide = torch.rand(2, 1, 4, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rotate_images(wide, 180), torch.flip(wide, (2, 3)), atol=1e-6, rtol=0)  # no shear
    # Zero fill: the corners of a rotated all-ones image are empty, its centre stays.
    ones = rotate_images(torch.ones(1, 1, 28, 28), 45)
    assert float(ones[0, 0, 0, 0]) == 0 and float(ones[0, 0, 14, 14]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="degrees must be a finite number"):
        rotate_images(x, float("nan"))


def test_shift_ladder_sets_share_one_noise_draw():
    x = 0.2 + 0.6 * torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(30) % 10
    ladder = ShiftLadder.build(x, y, 20, seed=3)
    assert ladder.x.shape == (20, 1, 8, 8) and [(f, lv) for f, lv, _ in ladder.sets] == LEVELS
    again = ShiftLadder.build(x, y, 20, seed=3)
    assert torch.equal(again.x, ladder.x) and all(torch.equal(a[2], b[2]) for a, b in zip(ladder.sets, again.sets))
    noisy = {lv: images for f, lv, images in ladder.sets if f == "noise"}
    assert float(min(v.min() for v in noisy.values())) >= 0 and float(max(v.max() for v in noisy.values())) <= 1
    # One draw ε for every level: where nothing is clipped, the σ = 0.2 change is twice the σ = 0.1 change.
    unclipped = (noisy[0.2] > 0) & (noisy[0.2] < 1)
    torch.testing.assert_close((noisy[0.2] - ladder.x)[unclipped], 2 * (noisy[0.1] - ladder.x)[unclipped], atol=1e-5, rtol=0)
    torch.testing.assert_close(add_gaussian_noise(x, 0.0, torch.randn(x.shape)), x)


def test_ladder_scores_mutual_information_where_there_is_one():
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.arange(40) % 10
    ladder = ShiftLadder.build(x, y, 40, rotation_degrees=(0, 90), noise_stds=(0.5,))

    def members(images):
        # Two members that agree on the unshifted images and disagree more the more an image differs from them.
        gap = (images - ladder.x).abs().flatten(1).mean(1, keepdim=True) if images.shape == ladder.x.shape else 0
        base = torch.nn.functional.one_hot(ladder.y, 10).double() * 3
        return torch.stack([(base + 5 * gap * torch.eye(10)[0]).softmax(-1), (base + 5 * gap * torch.eye(10)[1]).softmax(-1)])

    rows = ladder.evaluate("pair", lambda images: prediction_from_probs(members(images)))
    single = ladder.evaluate("one", lambda images: prediction_from_probs(members(images)[:1]))
    assert [r["auroc_score"] for r in rows] == ["mutual information"] * 3
    assert [r["auroc_score"] for r in single] == ["total entropy"] * 3
    assert rows[0]["auroc"] == 0.5 and rows[1]["auroc"] == 1.0 and rows[2]["auroc"] == 1.0
    assert rows[0]["accuracy"] == 1.0 and rows[0]["nll"] == pytest.approx(float(-torch.log_softmax(torch.tensor([3.0] + [0.0] * 9), 0)[0]))


def _ladder_rows(nll: dict) -> list[dict]:
    return [{"method": m, "family": f, "level": lv, "nll": v, "accuracy": 0.5, "ece": 0.1, "auroc": 0.6, "mi": 0.1, "entropy": 1.0,
             "auroc_score": "mutual information"} for m, values in nll.items() for (f, lv), v in zip(LEVELS[:4], values)]


def test_ladder_targets_count_levels():
    rows = _ladder_rows({"teacher ensemble": [1.0, 1.0, 1.0, 1.0], "DLF": [1.04, 0.96, 1.06, 1.0],
                         "Hydra": [1.1, 0.9, 1.2, 1.2], "DLF separable": [0.5, 0.5, 0.5, 0.5],
                         "Hydra, augmented design": [0.5, 0.5, 0.5, 0.5]})
    close, best = ladder_targets(rows)
    # One-sided: 0.96 (below the teachers) meets it, 1.06 does not.
    assert close.endswith("**missed** (3 of 4 levels; rotation 3/4)")
    # DLF ≤ Hydra at 3 of 4 levels (75 %); the DLF variants and the design ablation's rivals are not rivals.
    assert "(1 students not named DLF): met (3 of 4 levels = 75 %" in best
    rows = _ladder_rows({"teacher ensemble": [1.0] * 4, "DLF": [1.0] * 4, "Hydra": [0.9, 0.9, 1.1, 1.1]})
    assert ladder_targets(rows)[0].split(": ")[1].startswith("met") and "**missed** (2 of 4" in ladder_targets(rows)[1]
    assert ladder_targets(_ladder_rows({"Hydra": [1.0] * 4}))[0].startswith("- (the shift ladder has no DLF")


def test_merge_ladder_means_and_standard_errors():
    a = _ladder_rows({"teacher ensemble": [1.0, 2.0, 3.0, 4.0], "DLF": [1.0, 1.0, 1.0, 1.0]})
    b = _ladder_rows({"teacher ensemble": [3.0, 2.0, 3.0, 4.0], "DLF": [1.0, 1.0, 1.0, 1.0]})
    merged = merge_ladder([a, b])
    assert merged[0]["nll"] == 2.0 and merged[0]["se"]["nll"] == pytest.approx(1.0) and merged[1]["se"]["nll"] == 0.0
    with pytest.raises(ValueError, match="shift ladders differ"):
        merge_ladder([a, b[:-1]])


@pytest.mark.parametrize("change, match", [
    (dict(design="jitter"), r"design must be one of \('images', 'augment'\)"),
    (dict(ablations=("nugget",)), "ablations must be a list of names from"),
    (dict(ablations="design"), "ablations must be a list of names from"),
    (dict(augment_families=("rotate",)), "^augment_families: 'rotate' is not an augmentation family"),
    (dict(augment_families=("translate", "blur")), "^augment_families: unknown family 'blur'"),
    (dict(augment_strength=0.0), r"^augment_strength must be a number in \(0, 1\]"),
    (dict(noise_stds=()), "noise_stds must be a non-empty list"),
    (dict(noise_stds=(0.1, -0.2)), "noise_stds must be a non-empty list"),
    (dict(rotation_degrees=(0, 400)), r"rotation_degrees must be a non-empty list of angles in \[0, 360\]"),
    (dict(shift_test_size=1), "shift_test_size must be an int >= 2"),
])
def test_bad_settings_fail_before_any_fit(change, match):
    with pytest.raises(ValueError, match=match) as info:
        run_images_benchmark(ImagesBenchConfig(dataset="digits", cache_dir=None, progress=False, **change))
    assert "\n" not in str(info.value)


def test_merging_data_seeds(smoke_run, tmp_path):
    """Two runs of different seeds: rows are means with standard errors, every run kept, the CLI merges them."""
    import copy

    out, first = smoke_run
    second = copy.deepcopy(first)
    second["config"]["seed"] = second["seeds"][0] = 1
    for row in second["rows"] + second["shift_ladder"]:
        row["nll"] += 0.2
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, result in zip(paths, (first, second)):
        path.write_text(json.dumps(result))
    merged = merge_images_results([first, second])
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2
    for a, m in zip(first["rows"], merged["rows"]):
        assert m["method"] == a["method"]
        assert m["nll"] == pytest.approx(a["nll"] + 0.1)
        assert m["se"]["nll"] == pytest.approx(0.1)  # sd 0.2/√2 of two values 0.2 apart, over √2
        assert m["accuracy"] == pytest.approx(a["accuracy"]) and m["se"]["accuracy"] == pytest.approx(0.0, abs=1e-12)
    assert len(merged["shift"]) == 2 * len(first["shift"]) and {r["data_seed"] for r in merged["shift"]} == {0, 1}
    counts = merged["reliability"]["DLF"]["count"]
    assert sum(counts) == 2 * sum(first["reliability"]["DLF"]["count"])
    with pytest.raises(ValueError, match="seeds repeat"):
        merge_images_results([first, first])
    changed = copy.deepcopy(second)
    changed["config"]["num_factors"] = 7
    with pytest.raises(ValueError, match="num_factors"):
        merge_images_results([first, changed])
    # The ladder rows: means over the seeds with standard errors; each run keeps its own.
    assert len(merged["shift_ladder"]) == len(first["shift_ladder"])
    for a, m in zip(first["shift_ladder"], merged["shift_ladder"]):
        assert (m["method"], m["family"], m["level"]) == (a["method"], a["family"], a["level"])
        assert m["nll"] == pytest.approx(a["nll"] + 0.1) and m["se"]["nll"] == pytest.approx(0.1)
        assert m["auroc"] == pytest.approx(a["auroc"]) and m["se"]["auroc"] == pytest.approx(0.0, abs=1e-12)
    assert [run["shift_ladder"] for run in merged["runs"]] == [first["shift_ladder"], second["shift_ladder"]]
    assert merged["design"] == first["design"]
    assert main(["bench", "report", *map(str, paths), "--output-dir", str(tmp_path / "merged")]) == 0
    text = (tmp_path / "merged" / "images.md").read_text()
    assert "Mean ± standard error over 2 data seeds" in text and " ± " in text.split("## Results")[1]
    ladder = text.split("## Distribution shift ladder")[1]
    assert "Mean ± standard error over 2 data seeds." in ladder and " ± 0.100 |" in ladder
    assert (tmp_path / "merged" / "images_ladder_noise.png").stat().st_size > 0


def test_fit_linear_head_is_sklearns_map_logistic_regression():
    g = torch.Generator().manual_seed(0)
    n, d = 80, 5
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)).argmax(-1)
    head = fit_linear_head(x, y, 3, prior_variance=0.5)
    # Ours: Σ CE + (d‖W‖² + ‖b‖²) / (2 s²). With W' = √d W on features h/√d and the bias as the
    # weight of a constant feature, that is sklearn's ‖W'‖²/2 + C Σ CE with C = s², no intercept.
    design = np.hstack([x.numpy() / np.sqrt(d), np.ones((n, 1))])
    reference = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-10, max_iter=10000).fit(design, y.numpy())
    np.testing.assert_allclose(head.weight.detach().numpy(), reference.coef_[:, :d] / np.sqrt(d), atol=1e-4)
    np.testing.assert_allclose(head.bias.detach().numpy(), reference.coef_[:, d], atol=1e-4)
    with pytest.raises(ValueError, match="prior_variance"):
        fit_linear_head(x, y, 3, prior_variance=0)
    with pytest.raises(TypeError, match="labels must be an int64"):
        fit_linear_head(x, y.float(), 3)


def test_a_missing_class_keeps_a_finite_bias():
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(12) % 3  # classes 3 and 4 never appear
    head = fit_linear_head(x, y, 5)
    assert bool(torch.isfinite(head.bias).all()) and float(head.bias.detach().min()) > -5


def test_fit_latent_head_recovers_the_latent_weights():
    g = torch.Generator().manual_seed(2)
    n, c, q = 4000, 3, 2
    mean = torch.randn(n, c, generator=g, dtype=torch.float64)
    loading = 2 * torch.randn(n, q, generator=g, dtype=torch.float64)
    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, -0.3, 0.8]], dtype=torch.float64)
    z_true = torch.randn(c, q, generator=g, dtype=torch.float64)
    logits = mean + loading @ (L @ z_true).T
    y = torch.distributions.Categorical(logits=logits).sample()
    z = fit_latent_head(mean, loading, L, y)
    # Softmax ignores a shift common to all classes: compare the class contrasts L Z, centred over classes.
    contrast = lambda z: (L @ z) - (L @ z).mean(0)  # noqa: E731
    assert float((contrast(z) - contrast(z_true)).abs().max()) < 0.15


def test_class_covariance_concentration():
    g = torch.Generator().manual_seed(3)
    # Many teachers, isotropic disagreement: one shared shape fits every input (cover ratio ≈ 1).
    iso = class_covariance_concentration(torch.randn(4000, 30, 3, generator=g, dtype=torch.float64))
    assert 1.0 <= iso["cover_ratio"] < 1.15
    # Each input's teachers disagree only between its own pair of classes: a shared shape must inflate.
    n, c = 200, 6
    logits = torch.zeros(n, c, c, dtype=torch.float64)
    noise = torch.randn(n, c, generator=g, dtype=torch.float64)
    for x in range(c):
        a, b = x, (x + 1) % c
        logits[:, x, a], logits[:, x, b] = noise[:, x], -noise[:, x]
    pair = class_covariance_concentration(logits)
    assert pair["per_input_top1_share"] > 0.99 and pair["pooled_top1_share"] < 0.5
    assert pair["cover_ratio"] > 2
