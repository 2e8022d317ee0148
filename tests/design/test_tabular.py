"""Tests for pyro_dlf.design.tabular (neighbour-distance jitter)."""

import pytest
import torch

from pyro_dlf_bench.datasets import Standardizer
from pyro_dlf.design import neighbour_jitter


def test_jitter_moves_each_row_by_its_nearest_neighbour_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64) + 5
    out = neighbour_jitter(x, copies=2, generator=torch.Generator().manual_seed(1), chunk_size=7)
    assert out.shape == (100, 3) and out.dtype == x.dtype
    std = Standardizer.fit(x, dim=0)
    xs = std.transform(x)
    d = torch.cdist(xs, xs) + torch.diag(torch.full((50,), float("inf"), dtype=x.dtype))
    nearest = d.min(1).values
    for c in range(2):
        moved = (std.transform(out[c * 50:(c + 1) * 50]) - xs).norm(dim=1)
        torch.testing.assert_close(moved, nearest)
    # Two copies point in different directions; the generator fixes them.
    assert not torch.allclose(out[:50], out[50:])
    torch.testing.assert_close(out, neighbour_jitter(x, copies=2, generator=torch.Generator().manual_seed(1)))


def test_jitter_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(n, D\) with n >= 2"):
        neighbour_jitter(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        neighbour_jitter(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match="copies"):
        neighbour_jitter(torch.randn(5, 2), copies=0)


def test_gaussian_perturbation_has_scotts_bandwidth():
    """Displacements in standardized coordinates are N(0, h²) with h = n^(−1/(D+4)): check mean and
    variance against their sampling errors (5 standard errors)."""
    from pyro_dlf.design import gaussian_perturbation, scott_bandwidth

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64) + 5
    out = gaussian_perturbation(x, copies=5, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2000, 3)
    std = Standardizer.fit(x, dim=0)
    moved = (std.transform(out).reshape(5, 400, 3) - std.transform(x)).reshape(-1)
    h = scott_bandwidth(400, 3)
    N = moved.numel()
    assert abs(float(moved.mean())) < 5 * h / N ** 0.5
    assert abs(float(moved.var()) - h * h) < 5 * h * h * (2 / N) ** 0.5
    with pytest.raises(ValueError, match="bandwidth"):
        gaussian_perturbation(x, bandwidth=0.0)


def test_mixup_stays_on_segments_between_rows():
    from pyro_dlf.design import mixup

    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    out = mixup(x, copies=3, alpha=0.5, generator=torch.Generator().manual_seed(2))
    assert out.shape == (90, 2)
    # Each new point is x_i + t (x_j − x_i) for a partner j and t = 1 − λ in [0, 1].
    ts = []
    for k in range(90):
        i = k % 30
        d = out[k] - x[i]
        t = ((x - x[i]) @ d) / (x - x[i]).pow(2).sum(1).clamp_min(1e-300)
        residual = ((x - x[i]) * t[:, None] - d).norm(dim=1)
        ok = (residual < 1e-9) & (t >= -1e-12) & (t <= 1 + 1e-12)
        ok[i] = False
        if float(d.norm()) < 1e-12:  # partner was the row itself
            continue
        assert bool(ok.any()), k
        ts.append(float(t[ok][0]))
    # λ ~ Beta(α, α): mean 1/2, variance 1/(4(2α + 1)) = 1/8 at α = 1/2; 5 standard errors.
    ts = torch.tensor(ts, dtype=torch.float64)
    assert abs(float(ts.mean()) - 0.5) < 5 * (0.125 / len(ts)) ** 0.5
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, alpha=0.0)


def test_outward_probes_push_each_row_away_from_the_centroid_by_up_to_reach():
    """In standardized coordinates each probe is (1 + ρu) x_i: on the ray from the centroid through x_i,
    between 1 and 1 + ρ times as far out, with u uniform (mean 1/2, variance 1/12; 5 standard errors)."""
    from pyro_dlf.design import outward_probes

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=torch.float64) - 2
    out = outward_probes(x, copies=4, reach=0.5, generator=torch.Generator().manual_seed(3))
    assert out.shape == (1200, 4)
    std = Standardizer.fit(x, dim=0)
    xs = std.transform(x).repeat(4, 1)
    factor = (std.transform(out) * xs).sum(1) / xs.pow(2).sum(1)  # projection on the ray
    residual = (std.transform(out) - factor[:, None] * xs).norm(dim=1)
    assert float(residual.max()) < 1e-9
    u = (factor - 1) / 0.5
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    N = u.numel()
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12 / N) ** 0.5
    # The probes reach beyond the data: the farthest lies beyond every training row.
    assert float(std.transform(out).norm(dim=1).max()) > float(std.transform(x).norm(dim=1).max())
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="reach must be a finite number > 0"):
            outward_probes(x, reach=bad)
    with pytest.raises(TypeError, match="reach must be a finite number > 0, got 'far'"):
        outward_probes(x, reach="far")


def test_design_helpers_name_each_bad_argument():
    """Every public design helper refuses a bad argument by name instead of failing inside torch or SciPy."""
    from pyro_dlf.design import build_design, design_points, gaussian_perturbation, mixup, outward_probes, scott_bandwidth

    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    cases = [
        (lambda: scott_bandwidth(0, 3), ValueError, "num_points must be a positive int"),
        (lambda: mixup(x, alpha="1"), TypeError, "alpha must be a finite number > 0"),
        (lambda: mixup(x, alpha=float("inf")), ValueError, "alpha must be a finite number > 0"),
        (lambda: build_design(x, "around", generator=3), TypeError, "generator must be None or a torch.Generator"),
        (lambda: mixup(x, generator="g"), TypeError, "generator must be None or a torch.Generator"),
        (lambda: gaussian_perturbation(x, bandwidth=float("inf")), ValueError, "bandwidth must be a finite number > 0"),
        (lambda: outward_probes(x, reference=torch.randn(10, 5)), ValueError, "reference has 5 columns but x has 3"),
        (lambda: build_design(torch.randn(10), "given"), ValueError, r"x must be a floating tensor of shape \(n, D\)"),
        (lambda: design_points(x, "around", None, "0"), TypeError, "seed must be a non-negative int"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    # A tiny α puts λ at 0 or 1 (each row or its partner), where the Gamma quantiles underflow: still points.
    tiny = mixup(x, alpha=1e-300, generator=torch.Generator().manual_seed(1))
    assert tiny.isfinite().all() and all(any(torch.equal(row, data) for data in x) for row in tiny)

