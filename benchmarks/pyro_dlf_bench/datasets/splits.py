"""Standardisation and random data splits.

Two split protocols are provided:

* :func:`train_design_test_split` -- the distillation protocol. The teachers are
  trained on ``"train"``; the ``"design"`` part is the held-out *transfer set*
  at which the teachers are evaluated to distil them into the student; ``"test"``
  is used only for evaluation.
* :func:`train_test_split` -- the usual UCI regression protocol: an independent
  random 90/10 train/test split per seed.

Both split by a uniformly random permutation drawn from a
:class:`torch.Generator` seeded with ``seed``, so a split is a deterministic
function of ``(n, fractions, seed)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

__all__ = ["Standardizer", "train_design_test_split", "train_test_split"]


def _check_float_tensor(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}; convert it with {name}.float()")
    return t


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Affine standardisation :math:`z = (t - \\mu) / s` and its inverse.

    ``loc`` (:math:`\\mu`) and ``scale`` (:math:`s`) keep the reduced dimension
    with size 1 (``keepdim=True``), so they broadcast against tensors laid out
    like the one they were fitted on: fitted on ``x`` of shape ``(n, d)`` along
    ``dim=0`` they have shape ``(1, d)``; fitted on ``y`` of shape ``(n,)`` they
    have shape ``(1,)``.

    Because :math:`t = \\mu + s z`, a variance in standardised units maps back
    as :math:`\\operatorname{Var}[t] = s^2 \\operatorname{Var}[z]`
    (:meth:`inverse_variance`).

    :param loc: location :math:`\\mu`, a floating tensor.
    :param scale: scale :math:`s`, a floating tensor of the same shape, all
        entries strictly positive and finite.
    """

    loc: Tensor
    scale: Tensor

    def __post_init__(self) -> None:
        _check_float_tensor(self.loc, "loc")
        _check_float_tensor(self.scale, "scale")
        if self.loc.shape != self.scale.shape:
            raise ValueError(
                f"loc and scale must have the same shape, got {tuple(self.loc.shape)} and "
                f"{tuple(self.scale.shape)}"
            )
        if not bool(torch.isfinite(self.loc).all()):
            raise ValueError("loc must be finite")
        if not bool((torch.isfinite(self.scale) & (self.scale > 0)).all()):
            raise ValueError("scale must be finite and strictly positive; use 1 for constant columns")

    @classmethod
    def fit(cls, t: Tensor, dim: int = 0) -> Standardizer:
        """Fit mean and standard deviation of ``t`` along ``dim``.

        :math:`\\mu = \\frac1n \\sum_i t_i` and
        :math:`s = \\sqrt{\\frac1n \\sum_i (t_i - \\mu)^2}` (the maximum-likelihood,
        i.e. population, standard deviation, as in scikit-learn's
        ``StandardScaler``). A (numerically) constant column has :math:`s` at or
        below the floor :math:`\\epsilon_{\\text{mach}} (1 + |\\mu|)`; its scale is
        set to 1 so that it is only centred and never divided by ~0.

        :param t: floating tensor with at least one entry along ``dim``; must be
            finite.
        :param dim: the dimension indexing observations.
        :raises TypeError: if ``t`` is not a floating tensor or ``dim`` not an int.
        :raises ValueError: if ``dim`` is out of range, ``t`` is empty along it or
            contains non-finite values.
        """
        _check_float_tensor(t, "t")
        if isinstance(dim, bool) or not isinstance(dim, Integral):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if t.dim() == 0:
            raise ValueError("t must have at least one dimension; reshape a scalar with t.reshape(1)")
        if not -t.dim() <= dim < t.dim():
            raise ValueError(f"dim={dim} is out of range for t with {t.dim()} dimensions")
        if t.shape[dim] == 0:
            raise ValueError(f"t has no observations along dim={dim}; pass a non-empty tensor")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("t contains NaN or infinite values; clean or impute them before fitting")
        loc = t.mean(dim=dim, keepdim=True)
        std = t.std(dim=dim, correction=0, keepdim=True)
        floor = torch.finfo(t.dtype).eps * (1.0 + loc.abs())
        scale = torch.where(std > floor, std, torch.ones_like(std))
        return cls(loc=loc, scale=scale)

    def _check_compatible(self, t: object, name: str) -> Tensor:
        _check_float_tensor(t, name)
        assert isinstance(t, Tensor)
        try:
            shape = torch.broadcast_shapes(t.shape, self.loc.shape)
        except RuntimeError:
            shape = None
        if shape != t.shape:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not broadcast against the fitted "
                f"shape {tuple(self.loc.shape)}; lay it out like the data the Standardizer was fitted on"
            )
        return t

    def transform(self, t: Tensor) -> Tensor:
        """Standardise: :math:`(t - \\mu) / s`."""
        t = self._check_compatible(t, "t")
        return (t - self.loc.to(t)) / self.scale.to(t)

    def inverse(self, t: Tensor) -> Tensor:
        """Undo :meth:`transform`: :math:`\\mu + s\\, t`."""
        t = self._check_compatible(t, "t")
        return self.loc.to(t) + self.scale.to(t) * t

    def inverse_variance(self, v: Tensor) -> Tensor:
        """Map a variance from standardised to original units: :math:`s^2 v`."""
        v = self._check_compatible(v, "v")
        return self.scale.to(v).square() * v


def _check_xy(x: object, y: object) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}; wrap it with torch.as_tensor")
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError("x and y must have a leading observation dimension; scalars cannot be split")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(seed)


def _random_split(
    x: Tensor, y: Tensor, names: Sequence[str], fractions: Sequence[float], seed: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Split rows by a seeded permutation into consecutive blocks of the given sizes."""
    n = x.shape[0]
    # Round every part but the first; the first absorbs the rounding remainder.
    rest = [round(f * n) for f in fractions[1:]]
    sizes = [n - sum(rest), *rest]
    for name, size, fraction in zip(names, sizes, fractions):
        if size < 1:
            raise ValueError(
                f"the {name!r} part would be empty ({fraction:g} of n={n} rows); "
                f"pass more data or a larger fraction for {name!r}"
            )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator).to(x.device)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    start = 0
    for name, size in zip(names, sizes):
        idx = perm[start : start + size]
        out[name] = (x[idx], y[idx.to(y.device)])
        start += size
    return out


def train_design_test_split(
    x: Tensor,
    y: Tensor,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Randomly split ``(x, y)`` into train, design (transfer) and test parts.

    The rows are permuted uniformly at random (seeded by ``seed``) and cut into
    consecutive blocks of sizes ``round(f_design n)`` and ``round(f_test n)``, the
    train part taking the remainder. The parts are disjoint and together cover
    every row exactly once.

    :param x: inputs, a tensor with ``n`` rows.
    :param y: targets, a tensor with ``n`` rows.
    :param fractions: ``(train, design, test)`` fractions, each positive,
        summing to 1.
    :param seed: non-negative int seeding the permutation.
    :returns: ``{"train": (x, y), "design": (x, y), "test": (x, y)}``.
    :raises TypeError: on non-tensor inputs or a non-int seed.
    :raises ValueError: on mismatched rows, invalid fractions, or an empty part.
    """
    x, y = _check_xy(x, y)
    seed = _check_seed(seed)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or len(fractions) != 3:
        raise ValueError(
            f"fractions must be a sequence of three numbers (train, design, test), got {fractions!r}"
        )
    for name, f in zip(("train", "design", "test"), fractions):
        if isinstance(f, bool) or not isinstance(f, Real) or not math.isfinite(f) or f <= 0:
            raise ValueError(f"fractions: the {name!r} fraction must be a positive number, got {f!r}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions):g})")
    return _random_split(x, y, ("train", "design", "test"), [float(f) for f in fractions], seed)


def train_test_split(
    x: Tensor, y: Tensor, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, tuple[Tensor, Tensor]]:
    """Randomly split ``(x, y)`` into train and test parts (the UCI protocol).

    The standard UCI regression benchmark repeats an independent random 90/10
    split per seed; ``round(test_fraction n)`` permuted rows form the test part
    and the rest the training part.

    :param x: inputs, a tensor with ``n`` rows.
    :param y: targets, a tensor with ``n`` rows.
    :param test_fraction: fraction in ``(0, 1)`` held out for testing.
    :param seed: non-negative int seeding the permutation.
    :returns: ``{"train": (x, y), "test": (x, y)}``.
    :raises TypeError: on non-tensor inputs or a non-int seed.
    :raises ValueError: on mismatched rows, a fraction outside ``(0, 1)``, or an
        empty part.
    """
    x, y = _check_xy(x, y)
    seed = _check_seed(seed)
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, Real)
        or not 0.0 < test_fraction < 1.0
    ):
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    f = float(test_fraction)
    return _random_split(x, y, ("train", "test"), [1.0 - f, f], seed)
