"""Small neural-network building blocks shared by the student model and the baselines.

Two architectures serve the whole library. For vector inputs, a fully
connected multilayer perceptron

.. math::

    f(x) = W_L\\, \\phi\\bigl(W_{L-1} \\cdots \\phi(W_1 x + b_1) \\cdots + b_{L-1}\\bigr) + b_L,

with an elementwise activation :math:`\\phi` after every hidden layer and a
linear output layer. It serves as the body of the distilled student network and
as every teacher / baseline regressor, so all of them share initialisation and
layer conventions. For images, :class:`ConvBody`: blocks of 3×3 convolution,
activation and 2×2 max-pooling, then one fully connected layer to a feature
vector (followed by the activation), the body of every CNN teacher and student.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from torch import nn

from pyro_dlf._validation import check_int

__all__ = ["MLP", "ConvBody"]


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
        in_features = check_int(in_features, "in_features")
        out_features = check_int(out_features, "out_features")
        # A str is a Sequence too, but never a list of widths.
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"hidden must be a sequence of positive ints (e.g. (50, 50), or () for a "
                f"linear model), got {type(hidden).__name__} {hidden!r}"
            )
        widths = tuple(check_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
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


class ConvBody(nn.Sequential):
    """Convolutional feature extractor ``(N, C, H, W) → (N, width)``.

    ``len(channels)`` blocks ``Conv2d(3×3, padding 1) → activation →
    MaxPool2d(2)``, then ``Flatten → Linear → activation``. No batch
    normalization: the networks are trained in parallel with
    :func:`torch.func.vmap`, where per-batch statistics would couple the
    members, and every network (teacher or student) stays a deterministic
    function of its input.

    :param in_channels: image channels ``C``.
    :param image_size: ``(H, W)`` or one int for square images; each block
        halves it (floor), so it must stay ≥ 1.
    :param channels: output channels of the convolution blocks.
    :param width: size of the feature vector.
    :param activation: an :class:`torch.nn.Module` class.
    """

    def __init__(self, in_channels: int, image_size, channels: Sequence[int] = (16, 32), width: int = 64,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        in_channels = check_int(in_channels, "in_channels")
        width = check_int(width, "width")
        if isinstance(image_size, Integral) and not isinstance(image_size, bool):
            image_size = (int(image_size), int(image_size))
        if not (isinstance(image_size, Sequence) and len(image_size) == 2):
            raise TypeError(f"image_size must be an int or (height, width), got {image_size!r}")
        height, wide = (check_int(v, "image_size") for v in image_size)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise TypeError(f"channels must be a non-empty sequence of positive ints such as (16, 32), got {channels!r}")
        channels = tuple(check_int(c, f"channels[{i}]") for i, c in enumerate(channels))
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), activation(), nn.MaxPool2d(2)]
            c_in = c
            height, wide = height // 2, wide // 2
            if height < 1 or wide < 1:
                raise ValueError(f"image_size={tuple(image_size)} is too small for {len(channels)} pooling blocks; use fewer channels entries")
        layers += [nn.Flatten(), nn.Linear(c_in * height * wide, width), activation()]
        super().__init__(*layers)
        self.in_channels = in_channels
        self.channels = channels
        self.out_features = width
        self.image_size = tuple(int(v) for v in image_size)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, image_size={self.image_size}, channels={self.channels}, width={self.out_features}"
