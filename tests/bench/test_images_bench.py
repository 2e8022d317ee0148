"""Smoke test of the image benchmark (scikit-learn digits, 4 teachers) and the shift head."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pyro_dlf.bench.images import class_covariance_concentration, fit_latent_head, fit_linear_head, merge_images_results
from pyro_dlf.cli import main


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


def test_merging_data_seeds(smoke_run, tmp_path):
    """Two runs of different seeds: rows are means with standard errors, every run kept, the CLI merges them."""
    import copy

    out, first = smoke_run
    second = copy.deepcopy(first)
    second["config"]["seed"] = second["seeds"][0] = 1
    for row in second["rows"]:
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
    assert main(["bench", "report", *map(str, paths), "--output-dir", str(tmp_path / "merged")]) == 0
    text = (tmp_path / "merged" / "images.md").read_text()
    assert "Mean ± standard error over 2 data seeds" in text and " ± " in text.split("## Results")[1]


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
