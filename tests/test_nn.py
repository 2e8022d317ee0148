"""Tests for pyro_dlf.nn.MLP."""

import pytest
import torch
from torch import nn

from pyro_dlf.nn import MLP


def test_shapes_and_layer_structure():
    net = MLP(3, (7, 5), 2)
    assert (net.in_features, net.out_features, net.hidden) == (3, 2, (7, 5))
    assert net(torch.randn(11, 3)).shape == (11, 2)
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [7, 5, 2]


def test_custom_activation():
    net = MLP(2, [4], 1, activation=nn.Tanh)
    assert isinstance(net[1], nn.Tanh)


def test_empty_hidden_is_affine():
    torch.manual_seed(0)
    net = MLP(4, (), 3)
    assert len(net) == 1 and isinstance(net[0], nn.Linear)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    # Affine maps satisfy f(a) + f(b) = f(a + b) + f(0).
    torch.testing.assert_close(net(a) + net(b), net(a + b) + net(torch.zeros(1, 4)))


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(in_features=0), ValueError, "in_features"),
        (dict(in_features=2.0), TypeError, "in_features"),
        (dict(in_features=True), TypeError, "in_features"),
        (dict(out_features=-1), ValueError, "out_features"),
        (dict(hidden=(4, 0)), ValueError, r"hidden\[1\]"),
        (dict(hidden=5), TypeError, "hidden"),
        (dict(hidden="50"), TypeError, "hidden"),
        (dict(activation=nn.ReLU()), TypeError, "activation"),
        (dict(activation=torch.relu), TypeError, "activation"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(in_features=2, hidden=(3,), out_features=1) | kwargs
    with pytest.raises(exc, match=name):
        MLP(**args)
