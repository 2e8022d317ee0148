r"""Design points for tabular inputs: neighbour-distance jitter, Gaussian perturbation, mixup, outward probes.

Teachers are usually fitted to their training inputs and agree most there, so
their spread at the training inputs under-states their spread at new inputs.
:func:`neighbour_jitter` places design points where new inputs fall: for a
training input :math:`x_i` (in standardized coordinates) let
:math:`d_i = \min_{k \ne i} \lVert x_i - x_k \rVert` be the distance to its
nearest neighbour, then

.. math::

    \tilde x_i = x_i + d_i\, u_i, \qquad u_i \sim \mathrm{Uniform}(S^{D-1}).

A fresh input from the same distribution lies, in distribution, at the
leave-one-out nearest-neighbour distance from the training set, so
:math:`\tilde x_i` sits as far from the data as a new input typically does.
Caveat: on inputs confined to a grid or to discrete levels, :math:`\tilde x_i`
leaves the support (new inputs do not), and teachers may disagree there far
more than at new inputs.

:func:`gaussian_perturbation` draws from the kernel density estimate of the
inputs: :math:`\tilde x = x_i + h\, ε`, :math:`ε \sim N(0, I)` in
standardized coordinates, with Scott's bandwidth :math:`h = n^{-1/(D+4)}`
(the data-derived scale that makes the estimate's bias and variance balance
for a Gaussian-like density). It spreads design points slightly beyond the
data, where teachers begin to disagree.

:func:`mixup` draws convex combinations of random pairs,
:math:`\tilde x = λ x_i + (1 − λ) x_j`, :math:`λ \sim \mathrm{Beta}(α, α)`
(Zhang et al., 2018): inputs between the data, inside their convex hull.

All three need no labels: the teachers are evaluated at the new points.

:func:`outward_probes` reaches *beyond* the data: in standardized
coordinates (the data's centroid at the origin) each row is pushed away from
the centroid, :math:`\tilde x_i = (1 + ρ u_i)\, x_i`,
:math:`u_i \sim \mathrm{Uniform}(0, 1)`, so the probes fill the shell from the
data out to :math:`1 + ρ` times each row's distance from the centre, in every
direction the data extend. The default :math:`ρ = 1/2` asks for half the
data's own reach beyond it. Teachers' values there are all out of sample, so
they can check (without labels) whether a student keeps the teachers'
disagreement where the data end.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyro_dlf._validation import check_generator, check_int, check_real, check_rows

__all__ = ["neighbour_jitter", "gaussian_perturbation", "mixup", "outward_probes", "scott_bandwidth"]


class _Standardized:
    """Per-feature mean and population standard deviation of ``x``; a (numerically) constant feature keeps scale 1."""

    def __init__(self, x: Tensor) -> None:
        self.loc = x.mean(0)
        scale = x.std(0, unbiased=False)
        floor = torch.finfo(x.dtype).eps * (1 + self.loc.abs())
        self.scale = torch.where(scale > floor, scale, torch.ones_like(scale))

    def transform(self, x: Tensor) -> Tensor:
        return (x - self.loc) / self.scale

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.scale + self.loc


def scott_bandwidth(num_points: int, num_features: int) -> float:
    """Scott's rule :math:`n^{-1/(D+4)}`: the kernel bandwidth in units of each feature's standard deviation."""
    num_points, num_features = check_int(num_points, "num_points"), check_int(num_features, "num_features")
    return float(num_points) ** (-1.0 / (num_features + 4))


def _reference(x: Tensor, reference: Optional[Tensor]) -> Tensor:
    """The rows that set the standardization: ``x`` itself, or checked ``reference`` rows with ``x``'s columns."""
    if reference is None:
        return x
    check_rows(reference, "reference")
    if reference.shape[1] != x.shape[1]:
        raise ValueError(f"reference has {reference.shape[1]} columns but x has {x.shape[1]}; pass the data rows x was taken from")
    return reference


def gaussian_perturbation(x: Tensor, copies: int = 1, *, bandwidth: Optional[float] = None,
                          generator: Optional[torch.Generator] = None, reference: Optional[Tensor] = None) -> Tensor:
    """Draws ``x_i + h ε`` (standardized coordinates), ``copies`` per row; see the module docstring.

    :param x: inputs ``(n, D)``, ``n >= 2``, in original units.
    :param bandwidth: ``h`` in standard deviations of each feature (default :func:`scott_bandwidth` of the reference rows).
    :param reference: the rows whose feature scales and count set the standardization and the default bandwidth
        (default ``x``): pass the data when ``x`` are a few of its rows, so that their draws are the data's.
    :returns: ``(copies * n, D)`` in the units of ``x``; copy ``c`` of row ``i`` is row ``c * n + i``.
    """
    check_rows(x)
    reference = _reference(x, reference)
    copies = check_int(copies, "copies")
    check_generator(generator)
    h = scott_bandwidth(*reference.shape) if bandwidth is None else check_real(
        bandwidth, "bandwidth", 0, fix="in standard deviations of each feature, e.g. bandwidth=0.5 (None: Scott's rule)")
    standardizer = _Standardized(reference)
    xs = standardizer.transform(x)
    noise = torch.randn(copies, *x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return standardizer.inverse((xs + h * noise).reshape(-1, x.shape[1]))


def mixup(x: Tensor, copies: int = 1, *, alpha: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Convex combinations ``λ x_i + (1 − λ) x_j`` of each row with a random partner, ``λ ~ Beta(α, α)``.

    :param x: inputs ``(n, D)``, ``n >= 2``.
    :param alpha: the Beta parameter (1: λ uniform on [0, 1]).
    :returns: ``(copies * n, D)``; copy ``c`` of row ``i`` is row ``c * n + i``.
    """
    check_rows(x)
    copies = check_int(copies, "copies")
    check_generator(generator)
    alpha = check_real(alpha, "alpha", 0, fix="the Beta(α, α) parameter, e.g. alpha=1.0")
    n = x.shape[0]
    partner = torch.randint(0, n, (copies, n), generator=generator).to(x.device)
    from scipy.special import gammaincinv

    # λ = G1 / (G1 + G2) with G1, G2 ~ Gamma(α) is Beta(α, α); the Gammas come from seeded uniforms
    # through their inverse CDF because torch's Gamma sampler takes no generator.
    u = torch.rand(copies, n, 2, generator=generator, dtype=torch.float64)
    g = torch.as_tensor(gammaincinv(alpha, u.numpy()), dtype=torch.float64)
    # For small α both quantiles can underflow to 0; there G ≈ (u Γ(α + 1))^{1/α}, so λ → 1 when u₁ > u₂, else 0.
    total = g.sum(-1)
    lam = torch.where(total > 0, g[..., 0] / total.clamp_min(torch.finfo(torch.float64).tiny), (u[..., 0] > u[..., 1]).double())
    lam = lam.to(dtype=x.dtype, device=x.device).unsqueeze(-1)
    return (lam * x.unsqueeze(0) + (1 - lam) * x[partner]).reshape(-1, x.shape[1])


def neighbour_jitter(x: Tensor, copies: int = 1, *, generator: Optional[torch.Generator] = None,
                     chunk_size: int = 2048) -> Tensor:
    """Jittered copies of ``x``, each row moved by its nearest-neighbour distance in a random direction.

    :param x: inputs of shape ``(n, D)`` with ``n >= 2``, in original units.
    :param copies: jittered copies per row.
    :param generator: source of the random directions (CPU).
    :param chunk_size: rows per block of the pairwise distances (memory ``chunk_size × n``).
    :returns: ``(copies * n, D)`` points in the units of ``x``; copy ``c`` of row
        ``i`` is row ``c * n + i``.
    :raises ValueError: if ``x`` is not a finite floating ``(n, D)`` tensor with ``n >= 2``.
    """
    check_rows(x)
    copies = check_int(copies, "copies")
    chunk_size = check_int(chunk_size, "chunk_size")
    check_generator(generator)
    standardizer = _Standardized(x)
    xs = standardizer.transform(x)
    distance = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        block = torch.cdist(xs[start:start + chunk_size], xs)
        rows = torch.arange(block.shape[0], device=x.device)
        block[rows, rows + start] = float("inf")  # exclude the point itself
        distance[start:start + chunk_size] = block.min(1).values
    direction = torch.randn(copies, *x.shape, generator=generator, dtype=x.dtype).to(x.device)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    jittered = xs + distance.unsqueeze(-1) * direction
    return standardizer.inverse(jittered.reshape(-1, x.shape[1]))


def outward_probes(x: Tensor, copies: int = 1, *, reach: float = 0.5, generator: Optional[torch.Generator] = None,
                   reference: Optional[Tensor] = None) -> Tensor:
    r"""Rows pushed away from the data's centroid by a random share of their own distance from it.

    In standardized coordinates :math:`\tilde x = (1 + ρ u) x`, :math:`u \sim \mathrm{Uniform}(0, 1)`
    (see the module docstring): points beyond the data in every direction the data extend.

    :param x: inputs ``(n, D)``, ``n >= 2``, in original units.
    :param reach: ``ρ > 0``, how far beyond each row the probes may go, as a share of its distance from the centroid.
    :param reference: the rows whose centroid and feature scales define the standardized coordinates (default ``x``):
        pass the data when ``x`` are a few of its rows.
    :returns: ``(copies * n, D)`` in the units of ``x``; copy ``c`` of row ``i`` is row ``c * n + i``.
    """
    check_rows(x)
    reference = _reference(x, reference)
    copies = check_int(copies, "copies")
    check_generator(generator)
    reach = check_real(reach, "reach", 0, fix="e.g. 0.5: up to half the data's reach beyond it")
    standardizer = _Standardized(reference)
    xs = standardizer.transform(x)
    u = torch.rand(copies, x.shape[0], 1, generator=generator, dtype=x.dtype).to(x.device)
    return standardizer.inverse(((1 + reach * u) * xs.unsqueeze(0)).reshape(-1, x.shape[1]))
