"""Tests for pyro_dlf.training.fit_networks (the one training loop)."""

import copy

import pytest
import torch
from torch import nn

from pyro_dlf.training import fit_networks, label_cross_entropy, squared_error


def _nets(k, seed=0, d=4, c=3):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c)) for _ in range(k)]


def _data(n=60, d=4, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, c, generator=g)).argmax(-1)
    return x, y


def test_joint_training_matches_training_alone_with_cross_entropy():
    x, y = _data()
    nets = _nets(3)
    alone = [copy.deepcopy(n) for n in nets]
    labels = torch.stack([y, y.roll(1), y.flip(0)])  # each net its own targets
    kw = dict(loss="cross_entropy", epochs=15, batch_size=16, lr=0.02)
    fit_networks(nets, x, labels, generators=[torch.Generator().manual_seed(k) for k in range(3)], **kw)
    for k, net in enumerate(alone):
        fit_networks([net], x, labels[k:k + 1], generators=[torch.Generator().manual_seed(k)], **kw)
        for a, b in zip(net.parameters(), nets[k].parameters()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_one_by_one_training_takes_the_same_steps_as_the_vectorized_loop():
    """vectorize=False (large modules, token ids) visits the same minibatches and takes the same
    Adam steps; the results differ by float32 summation order only."""
    x, y = _data()
    nets = _nets(3)
    plain = [copy.deepcopy(n) for n in nets]
    labels = torch.stack([y, y.roll(1), y.flip(0)])
    rows = torch.stack([torch.randperm(60, generator=torch.Generator().manual_seed(k))[:40] for k in range(3)])
    kw = dict(loss="cross_entropy", epochs=12, batch_size=16, lr=0.02, rows=rows)
    stacked = fit_networks(nets, x, labels, generators=[torch.Generator().manual_seed(k) for k in range(3)], **kw)
    looped = fit_networks(plain, x, labels, generators=[torch.Generator().manual_seed(k) for k in range(3)],
                          vectorize=False, **kw)
    assert looped == pytest.approx(stacked, rel=1e-4)
    for a, b in zip(nets, plain):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_one_by_one_training_takes_token_ids():
    torch.manual_seed(0)
    ids = torch.randint(1, 20, (40, 5))
    labels = (ids.float().mean(1) > 10).long()  # linear in the bag of words
    net = nn.Sequential(nn.EmbeddingBag(20, 8, mode="mean"), nn.Linear(8, 2))
    final = fit_networks([net], ids, labels.unsqueeze(0), loss="cross_entropy", epochs=100, lr=0.05, vectorize=False)[0]
    assert final < 0.3  # log 2 = 0.69 at the start
    with pytest.raises(TypeError, match=r"x must have a floating dtype \(or int64 token ids with vectorize=False\)"):
        fit_networks([net], ids.int(), labels.unsqueeze(0), loss="cross_entropy", epochs=1, vectorize=False)
    with pytest.raises(TypeError, match="x must have a floating dtype, got torch.int64"):
        fit_networks([net], ids, labels.unsqueeze(0), loss="cross_entropy", epochs=1)


def test_cross_entropy_training_fits_the_labels():
    x, y = _data()
    net = _nets(1)[0]
    with torch.no_grad():
        before = float(label_cross_entropy(net(x).unsqueeze(0), y.unsqueeze(0)))
    final = fit_networks([net], x, y.unsqueeze(0), loss="cross_entropy", epochs=200, lr=0.05)[0]
    assert final < 0.25 * before
    with torch.no_grad():
        assert float((net(x).argmax(-1) == y).float().mean()) > 0.9


def test_chunked_final_loss_equals_the_full_batch_loss():
    x, y = _data(n=50)
    nets = _nets(2)
    target = torch.randn(2, 50, 3)
    chunked = fit_networks(nets, x, target, loss=squared_error, epochs=1, lr=1e-3, eval_batch_size=7)
    with torch.no_grad():
        full = [float(squared_error(n(x).unsqueeze(0), target[k:k + 1])) for k, n in enumerate(nets)]
    assert chunked == pytest.approx(full, rel=1e-5)


def test_custom_loss_callable_is_used():
    x, _ = _data()
    net = _nets(1, c=1)[0]
    calls = []

    def loss(pred, target):
        calls.append(pred.shape)
        return (pred.squeeze(-1) - target).abs().mean(1)

    fit_networks([net], x, torch.zeros(1, x.shape[0]), loss=loss, epochs=2, batch_size=30)
    assert calls[0] == (1, 30, 1)


def test_bad_arguments():
    x, y = _data()
    net = _nets(1)
    with pytest.raises(ValueError, match="loss must be one of"):
        fit_networks(net, x, y.unsqueeze(0), loss="hinge")
    with pytest.raises(TypeError, match="loss must be"):
        fit_networks(net, x, y.unsqueeze(0), loss=3)
    with pytest.raises(TypeError, match="y must have a floating dtype"):
        fit_networks(net, x, y.unsqueeze(0), loss="mse")
    with pytest.raises(ValueError, match="cross_entropy needs"):
        fit_networks(net, x, torch.zeros(1, 60, 2, dtype=torch.long), loss="cross_entropy", epochs=1)
    with pytest.raises(ValueError, match="eval_batch_size"):
        fit_networks(net, x, y.unsqueeze(0), loss="cross_entropy", eval_batch_size=0)
