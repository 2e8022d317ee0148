"""Tests for pyro_dlf.data.design (neighbour-distance jitter)."""

import pytest
import torch

from pyro_dlf.data import Standardizer, neighbour_jitter


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
