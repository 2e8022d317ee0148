r"""Design points for images: label-free augmentations of an image batch.

The teachers need no labels, so a student's design points may be new images
made from the given ones. :func:`augment_images` returns ``copies`` augmented
copies of a batch :math:`x \in [0, 1]^{N×C×H×W}`; each copy of each image gets
one family drawn uniformly from ``families``. With ``s`` the ``strength`` in
:math:`(0, 1]`, :math:`u \sim \mathrm{Uniform}(-1, 1)` (a fresh draw for every
image and parameter) and :math:`d = \min(H, W)` the image's shorter side:

* ``"translate"``: a shift by integer offsets :math:`(δ_y, δ_x)` drawn
  uniformly from :math:`\{-m, …, m\}^2 \setminus \{(0, 0)\}`,
  :math:`m = \lfloor s d / 7 + 1/2 \rfloor` (4 pixels on 28×28 images, 1 on
  8×8), :math:`\tilde x_{r,k} = x_{r-δ_y,\,k-δ_x}`, zero where that falls
  outside the image. Whole pixels, so the strokes are not blurred.
* ``"scale"``: a zoom about the centre by :math:`z = 1.25^{s u}`,
  :math:`\tilde x(p) = x(p / z)` in coordinates centred on the image, bilinear
  (:func:`torch.nn.functional.grid_sample`), zero outside. The same factor on
  both axes and no rotation.
* ``"contrast"``: gamma, contrast and brightness together,
  :math:`\tilde x = \mathrm{clip}\big(k (x^γ - \bar m) + \bar m + β,\ 0, 1\big)`,
  :math:`γ = 1.5^{s u_1}`, :math:`k = 1.5^{s u_2}`, :math:`β = 0.2\, s u_3`,
  :math:`\bar m` the image's mean of :math:`x^γ`.
* ``"occlude"``: cutout (DeVries and Taylor, 2017): a square of side
  :math:`a = \lfloor s d / 3 + 1/2 \rfloor` (9 pixels on 28×28 images), placed
  uniformly inside the image, set to 0.
* ``"mix"``: a convex combination with another image of the batch,
  :math:`\tilde x_i = (1 - w) x_i + w x_j`, :math:`j \ne i` uniform,
  :math:`w = s \min(λ, 1 - λ)`, :math:`λ \sim \mathrm{Beta}(α, α)`. At
  :math:`s = 1` these are mixup's images (Zhang et al., 2018), each counted
  as a copy of the image it is nearer to.

Every family is the identity in the limit :math:`s \to 0` and keeps values in
:math:`[0, 1]`. Rotation and additive Gaussian noise are deliberately *not*
families: they are the distribution shifts the image benchmark tests
(:mod:`pyro_dlf_bench.harness.image_shift`), so design points made with them would
show the student the test shifts.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_dlf._validation import check_image_families, check_images, check_int, check_strength

__all__ = ["IMAGE_FAMILIES", "SHIFT_FAMILIES", "augment_images", "augmentation_magnitudes"]

#: The augmentation families of :func:`augment_images`.
IMAGE_FAMILIES = ("translate", "scale", "contrast", "occlude", "mix")
#: Names of the benchmark's distribution shifts, refused as augmentation families.
SHIFT_FAMILIES = ("rotate", "rotation", "noise", "gaussian", "gaussian_noise")

_MAX_ZOOM = 1.25  # largest zoom in (and 1/1.25 out) at strength 1
_PHOTOMETRIC = 1.5  # largest gamma and contrast factor (and their inverses) at strength 1
_BRIGHTNESS = 0.2  # largest brightness shift at strength 1


def _max_shift(strength: float, height: int, width: int) -> int:
    return int(math.floor(strength * min(height, width) / 7 + 0.5))


def _patch_side(strength: float, height: int, width: int) -> int:
    return int(math.floor(strength * min(height, width) / 3 + 0.5))


def _uniform(n: int, generator: Optional[torch.Generator]) -> Tensor:
    """``n`` draws of Uniform(−1, 1) in float64 on the CPU (the same numbers on every device)."""
    return 2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1


def _translate(x: Tensor, strength: float, generator: Optional[torch.Generator]) -> Tensor:
    n, c, h, w = x.shape
    m = _max_shift(strength, h, w)
    if m == 0:
        return x.clone()
    side = 2 * m + 1
    k = torch.randint(0, side * side - 1, (n,), generator=generator)
    k = k + (k >= side * side // 2).long()  # skip the centre: (0, 0) would leave the image as it is
    dy, dx = k // side - m, k % side - m
    padded = F.pad(x, (m, m, m, m))
    rows = (torch.arange(h) - dy[:, None] + m).to(x.device)
    cols = (torch.arange(w) - dx[:, None] + m).to(x.device)
    index_n = torch.arange(n, device=x.device)[:, None, None, None]
    index_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[index_n, index_c, rows[:, None, :, None], cols[:, None, None, :]]


def _scale(x: Tensor, strength: float, generator: Optional[torch.Generator]) -> Tensor:
    zoom = _MAX_ZOOM ** (strength * _uniform(x.shape[0], generator))
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom  # the output at p samples the input at p / z
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _contrast(x: Tensor, strength: float, generator: Optional[torch.Generator]) -> Tensor:
    u = _uniform(3 * x.shape[0], generator).view(3, -1, 1, 1, 1).to(x)
    gamma, factor, shift = _PHOTOMETRIC ** (strength * u[0]), _PHOTOMETRIC ** (strength * u[1]), _BRIGHTNESS * strength * u[2]
    curved = x ** gamma
    mean = curved.mean((1, 2, 3), keepdim=True)
    return (factor * (curved - mean) + mean + shift).clamp(0, 1)


def _occlude(x: Tensor, strength: float, generator: Optional[torch.Generator]) -> Tensor:
    n, _, h, w = x.shape
    a = _patch_side(strength, h, w)
    if a == 0:
        return x.clone()
    top = torch.randint(0, h - min(a, h) + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, w - min(a, w) + 1, (n,), generator=generator).to(x.device)
    r, k = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_rows = (r >= top[:, None]) & (r < top[:, None] + a)
    inside_cols = (k >= left[:, None]) & (k < left[:, None] + a)
    patch = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return x.masked_fill(patch, 0.0)


def _beta_symmetric(alpha: float, n: int, generator: Optional[torch.Generator]) -> Tensor:
    """``n`` draws of Beta(α, α) by the inverse CDF of seeded uniforms (torch's Beta sampler takes no generator)."""
    from scipy.special import betaincinv

    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.as_tensor(betaincinv(alpha, alpha, u.numpy()), dtype=torch.float64)


def _mix(x: Tensor, partner: Tensor, strength: float, alpha: float, generator: Optional[torch.Generator]) -> Tensor:
    lam = _beta_symmetric(alpha, x.shape[0], generator)
    weight = (strength * torch.minimum(lam, 1 - lam)).view(-1, 1, 1, 1).to(x)
    return ((1 - weight) * x + weight * partner).clamp(0, 1)


_FAMILY_FUNCTIONS: dict[str, Callable[[Tensor, float, Optional[torch.Generator]], Tensor]] = {
    "translate": _translate, "scale": _scale, "contrast": _contrast, "occlude": _occlude}


def augment_images(x: Tensor, copies: int = 1, *, families: Sequence[str] = IMAGE_FAMILIES, strength: float = 1.0,
                   alpha: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Label-free augmented copies of an image batch (the families and their maths: the module docstring).

    :param x: images ``(N, C, H, W)`` with values in ``[0, 1]``; ``N >= 2`` when ``"mix"`` is a family.
    :param copies: augmented copies of every image.
    :param families: the families to draw from, uniformly, one per copy of each image.
    :param strength: :math:`s \in (0, 1]`, scales every family's magnitude (``s → 0``: the identity).
    :param alpha: the Beta parameter :math:`α` of ``"mix"`` (1: :math:`λ` uniform).
    :param generator: source of every random draw (CPU); the output is a function of its state.
    :returns: ``(copies * N, C, H, W)`` in the dtype and on the device of ``x``, values in ``[0, 1]``;
        copy ``c`` of image ``i`` is row ``c * N + i``.
    :raises ValueError: for images outside ``[0, 1]`` or of the wrong shape, an unknown family (or
        rotation or noise), a strength outside ``(0, 1]``, a non-positive ``alpha``, too few images to mix.
    """
    x = check_images(x)
    copies = check_int(copies, "copies")
    families = check_image_families(families, IMAGE_FAMILIES, SHIFT_FAMILIES)
    strength = check_strength(strength)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < float(alpha) < math.inf:
        raise ValueError(f"alpha must be a positive number (1: λ uniform on [0, 1]), got {alpha!r}")
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise ValueError(f"generator must be a CPU torch.Generator or None, got {generator!r}; "
                         "e.g. generator=torch.Generator().manual_seed(0)")
    n = x.shape[0]
    if "mix" in families and n < 2:
        raise ValueError("x: mixing needs at least 2 images; pass more images or drop 'mix' from families")
    out = x.repeat(copies, 1, 1, 1)
    source = torch.arange(n).repeat(copies)
    choice = torch.randint(len(families), (copies * n,), generator=generator)
    for k, name in enumerate(families):
        rows = (choice == k).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        if name == "mix":
            # A partner other than the image itself: i + Uniform{1, …, N − 1}, modulo N.
            partner = (source[rows] + torch.randint(1, n, (rows.numel(),), generator=generator)) % n
            out[rows.to(x.device)] = _mix(out[rows.to(x.device)], x[partner.to(x.device)], strength, float(alpha), generator)
        else:
            out[rows.to(x.device)] = _FAMILY_FUNCTIONS[name](out[rows.to(x.device)], strength, generator)
    return out.clamp_(0, 1)


def augmentation_magnitudes(strength: float = 1.0, image_size: tuple[int, int] = (28, 28), alpha: float = 1.0) -> dict[str, str]:
    """Each family's magnitude at ``strength`` on images of ``image_size = (H, W)``, in words (for reports)."""
    s = check_strength(strength)
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__") or len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), two positive ints such as (28, 28), got {image_size!r}")
    h, w = (check_int(v, "image_size") for v in image_size)
    zoom, photo = _MAX_ZOOM ** s, _PHOTOMETRIC ** s
    return {
        "translate": f"integer shifts of up to {_max_shift(s, h, w)} px per axis, zero fill",
        "scale": f"zoom by a factor in [{1 / zoom:.3f}, {zoom:.3f}] about the centre, no rotation",
        "contrast": f"gamma and contrast factors in [{1 / photo:.3f}, {photo:.3f}], brightness shift up to ±{_BRIGHTNESS * s:.2f}",
        "occlude": f"a {_patch_side(s, h, w)}×{_patch_side(s, h, w)} px square set to 0",
        "mix": f"(1 − w) x_i + w x_j with w = {s:g}·min(λ, 1 − λ), λ ~ Beta({alpha:g}, {alpha:g})",
    }
