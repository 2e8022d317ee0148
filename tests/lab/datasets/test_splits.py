"""Tests for pyro_dlf_bench.datasets.splits."""

import pytest
import torch

from pyro_dlf_bench.datasets import Standardizer, train_design_test_split, train_test_split


def _data(n=103, d=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    # y encodes the row index so coverage/disjointness can be checked exactly.
    y = torch.arange(n, dtype=torch.float64)
    return x, y


# ------------------------------------------------------------------ Standardizer


def test_standardizer_round_trip_and_moments():
    g = torch.Generator().manual_seed(1)
    t = 3.0 + 5.0 * torch.randn(200, 4, generator=g, dtype=torch.float64)
    s = Standardizer.fit(t)
    assert s.loc.shape == s.scale.shape == (1, 4)
    z = s.transform(t)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(s.inverse(z), t)
    v = torch.rand(7, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(s.inverse_variance(v), v * s.scale**2)
    # Var[mu + s z] = s^2 Var[z]: the inverse of standardised values has variance s^2 Var[z].
    torch.testing.assert_close(s.inverse_variance(z.var(0, keepdim=True)), t.var(0, keepdim=True))


def test_standardizer_1d_and_other_dim():
    y = torch.tensor([1.0, 2.0, 3.0, 6.0])
    s = Standardizer.fit(y)
    assert s.loc.shape == (1,)
    torch.testing.assert_close(s.inverse(s.transform(y)), y)
    t = torch.randn(3, 10)
    s1 = Standardizer.fit(t, dim=1)
    assert s1.loc.shape == (3, 1)
    torch.testing.assert_close(s1.transform(t).mean(1), torch.zeros(3), atol=1e-6, rtol=0)


def test_constant_column_gets_unit_scale():
    t = torch.stack([torch.full((10,), 7.0), torch.arange(10.0)], dim=1)
    s = Standardizer.fit(t)
    assert s.scale[0, 0] == 1.0
    assert torch.all(s.transform(t)[:, 0] == 0.0)


def test_standardizer_bad_inputs():
    with pytest.raises(TypeError, match="t must have a floating dtype"):
        Standardizer.fit(torch.arange(5))
    with pytest.raises(ValueError, match="dim"):
        Standardizer.fit(torch.zeros(3, 2), dim=2)
    with pytest.raises(ValueError, match="NaN"):
        Standardizer.fit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="scale"):
        Standardizer(loc=torch.zeros(2), scale=torch.tensor([1.0, 0.0]))
    s = Standardizer.fit(torch.randn(5, 3))
    with pytest.raises(ValueError, match="broadcast"):
        s.transform(torch.randn(5, 2))


# ------------------------------------------------------------------ splits


def test_train_design_test_split_partitions_rows():
    x, y = _data()
    parts = train_design_test_split(x, y, seed=3)
    assert set(parts) == {"train", "design", "test"}
    sizes = {k: v[0].shape[0] for k, v in parts.items()}
    assert sizes == {"train": 61, "design": 21, "test": 21}
    idx = torch.cat([parts[k][1] for k in ("train", "design", "test")]).long()
    # Disjoint and covering: the row ids form exactly a permutation of 0..n-1.
    assert torch.equal(idx.sort().values, torch.arange(len(y)))
    for xp, yp in parts.values():
        torch.testing.assert_close(xp, x[yp.long()])  # rows stay paired


def test_splits_deterministic_per_seed_and_differ_across_seeds():
    x, y = _data()
    a = train_design_test_split(x, y, seed=5)
    b = train_design_test_split(x, y, seed=5)
    c = train_design_test_split(x, y, seed=6)
    for k in a:
        assert torch.equal(a[k][1], b[k][1])
    assert not torch.equal(a["test"][1], c["test"][1])
    t1, t2 = train_test_split(x, y, seed=0), train_test_split(x, y, seed=1)
    assert not torch.equal(t1["test"][1].sort().values, t2["test"][1].sort().values)
    assert torch.equal(train_test_split(x, y, seed=0)["test"][1], t1["test"][1])


def test_train_test_split_sizes_and_coverage():
    x, y = _data(n=100)
    parts = train_test_split(x, y)
    assert set(parts) == {"train", "test"}
    assert parts["train"][0].shape == (90, 3) and parts["test"][0].shape == (10, 3)
    idx = torch.cat([parts["train"][1], parts["test"][1]]).long()
    assert torch.equal(idx.sort().values, torch.arange(100))


@pytest.mark.parametrize(
    "fractions, match",
    [
        ((0.5, 0.5), "three"),
        ((0.6, 0.6, -0.2), "positive"),
        ((0.6, 0.0, 0.4), "positive"),
        ((0.5, 0.2, 0.2), "sum to 1"),
        ("abc", "three"),
    ],
)
def test_bad_fractions_raise(fractions, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        train_design_test_split(x, y, fractions=fractions)


def test_split_bad_inputs():
    x, y = _data(n=10)
    with pytest.raises(ValueError, match="empty"):
        train_design_test_split(x, y, fractions=(0.9, 0.05, 0.05))
    with pytest.raises(ValueError, match="same number of rows"):
        train_test_split(x, y[:-1])
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(x, y, test_fraction=1.0)
    with pytest.raises(TypeError, match="seed"):
        train_test_split(x, y, seed=1.5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        train_test_split(x.numpy(), y)
