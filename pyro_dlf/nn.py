"""Small neural-network building blocks shared by the student model and the baselines.

Only one architecture is needed throughout the library: a fully connected
multilayer perceptron

.. math::

    f(x) = W_L\\, \\phi\\bigl(W_{L-1} \\cdots \\phi(W_1 x + b_1) \\cdots + b_{L-1}\\bigr) + b_L,

with an elementwise activation :math:`\\phi` after every hidden layer and a
linear output layer. It serves as the body of the distilled student network and
as every teacher / baseline regressor, so all of them share initialisation and
layer conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from torch import nn

__all__ = ["MLP"]


def _positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int``, raising if it is not a positive integer."""
    # bool is an Integral subclass; ``True`` as a width is always a mistake.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"{name} must be a positive int, got {type(value).__name__} {value!r}; "
            f"pass e.g. {name}=1"
        )
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}; pass a value >= 1")
    return int(value)


class MLP(nn.Sequential):
    """Fully connected network ``Linear -> activation -> ... -> Linear``.

    Layer :math:`k` maps width :math:`h_{k-1}` to :math:`h_k` with
    :math:`h_0 =` ``in_features`` and the last layer has width ``out_features``
    and no activation, so the output is unconstrained (suitable for regression
    means or for features fed to a Gaussian-process kernel). With
    ``hidden=()`` the network is the single affine map :math:`x \\mapsto W x + b`.

    Weights use PyTorch's default :class:`torch.nn.Linear` initialisation
    (drawn from the global RNG; seed it, e.g. under
    :func:`torch.random.fork_rng`, for reproducibility).

    :param in_features: input dimension :math:`d`, a positive int.
    :param hidden: widths of the hidden layers, each a positive int; may be
        empty.
    :param out_features: output dimension, a positive int.
    :param activation: an :class:`torch.nn.Module` *class* (not instance),
        instantiated without arguments after every hidden layer.
    :raises TypeError: if an argument has the wrong type.
    :raises ValueError: if a width is not positive.
    """

    in_features: int
    out_features: int
    hidden: tuple[int, ...]

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        in_features = _positive_int(in_features, "in_features")
        out_features = _positive_int(out_features, "out_features")
        # A str is a Sequence too, but never a list of widths.
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"hidden must be a sequence of positive ints (e.g. (50, 50), or () for a "
                f"linear model), got {type(hidden).__name__} {hidden!r}"
            )
        widths = tuple(_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
        if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
            raise TypeError(
                "activation must be an nn.Module subclass such as nn.ReLU (the class, not "
                f"an instance), got {activation!r}"
            )

        layers: list[nn.Module] = []
        width_in = in_features
        for width in widths:
            layers.append(nn.Linear(width_in, width))
            layers.append(activation())
            width_in = width
        layers.append(nn.Linear(width_in, out_features))
        super().__init__(*layers)

        self.in_features = in_features
        self.out_features = out_features
        self.hidden = widths

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden={self.hidden}, "
            f"out_features={self.out_features}"
        )
