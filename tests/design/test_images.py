"""Label-free image augmentations: shapes, seeding, range, what each family does, the strength limit, errors."""

import itertools

import pytest
import torch

from pyro_dlf.design.images import IMAGE_FAMILIES, SHIFT_FAMILIES, augment_images, augmentation_magnitudes


def _images(n=8, size=14, seed=0, dtype=torch.float32):
    # Strictly inside (0, 1): every pixel differs from the zero fill and from its neighbours.
    return 0.05 + 0.9 * torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _augment(x, family, copies=1, strength=1.0, seed=1):
    return augment_images(x, copies, families=(family,), strength=strength, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_copy_layout():
    x = _images(5, dtype=torch.float64)
    out = augment_images(x, 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (15, 1, 14, 14) and out.dtype == torch.float64
    # At a vanishing strength every copy is its source image: copy c of image i is row c*N + i.
    faint = augment_images(x, 3, strength=1e-9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(faint, x.repeat(3, 1, 1, 1), atol=1e-6, rtol=0)


def test_deterministic_given_the_generator():
    x = _images()
    a = augment_images(x, 2, generator=torch.Generator().manual_seed(3))
    b = augment_images(x, 2, generator=torch.Generator().manual_seed(3))
    c = augment_images(x, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_values_stay_in_the_unit_interval():
    # Binary images put every pixel at an end of the range, where zoom, contrast and mixing could leave it.
    x = (torch.rand(64, 2, 10, 10, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    for family in IMAGE_FAMILIES:
        out = _augment(x, family, copies=2)
        assert float(out.min()) >= 0 and float(out.max()) <= 1, family


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_each_family_changes_images(family):
    x = _images(40)
    out = _augment(x, family)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    # Only a parameter draw within ~1e-3 of the identity leaves an image unchanged (under 1 % per image).
    assert float(changed.float().mean()) >= 0.9, family


def test_translate_is_a_whole_pixel_shift_with_zero_fill():
    x = _images(12)
    out = _augment(x, "translate")
    m = 2  # round(14 / 7)
    for image, shifted in zip(x, out):
        matches = []
        for dy, dx in itertools.product(range(-m, m + 1), repeat=2):
            expected = torch.zeros_like(image)
            expected[:, max(dy, 0):14 + min(dy, 0), max(dx, 0):14 + min(dx, 0)] = \
                image[:, max(-dy, 0):14 + min(-dy, 0), max(-dx, 0):14 + min(-dx, 0)]
            if torch.equal(expected, shifted):
                matches.append((dy, dx))
        assert len(matches) == 1 and matches[0] != (0, 0)


def test_scale_zooms_about_the_centre_without_rotating():
    # A horizontal bar on the two centre rows (13, 14 of 28): a zoom about the centre keeps every column's
    # mass centred on row 13.5; any rotation would tilt the bar and move the centroids along it.
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 13:15, 3:25] = 1.0
    out = _augment(x, "scale")
    rows = torch.arange(28, dtype=torch.float32).view(1, 28, 1)
    mass = out[:, 0].sum(1)
    centroid = (out[:, 0] * rows).sum(1) / mass.clamp_min(1e-12)
    assert float((centroid - 13.5)[mass > 1e-3].abs().max()) < 1e-4
    assert not torch.allclose(out, x)


def test_contrast_keeps_the_order_of_pixel_values():
    # x**γ and a positive contrast factor are increasing; clipping keeps that weakly.
    x = _images(20)
    out = _augment(x, "contrast")
    order = x.flatten(1).argsort(1)
    ranked = out.flatten(1).gather(1, order)
    assert bool((ranked[:, 1:] >= ranked[:, :-1] - 1e-6).all())


def test_occlude_sets_one_square_to_zero():
    x = _images(16, size=28)
    out = _augment(x, "occlude")
    side = 9  # round(28 / 3)
    for image, occluded in zip(x, out):
        changed = (occluded != image)[0]
        rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
        assert int(changed.sum()) == side * side
        assert int(rows[-1] - rows[0]) + 1 == side and int(cols[-1] - cols[0]) + 1 == side
        assert bool((occluded[0][changed] == 0).all())


def test_mix_is_a_convex_combination_with_another_image():
    x = _images(6, dtype=torch.float64)
    out = _augment(x, "mix", copies=4)
    for row, mixed in enumerate(out):
        i = row % 6
        fits = []
        for j in range(6):
            if j == i:
                continue
            # mixed − x_i = w (x_j − x_i): least-squares w and its residual.
            d, target = (x[j] - x[i]).flatten(), (mixed - x[i]).flatten()
            w = float(d @ target / (d @ d))
            fits.append((float((target - w * d).abs().max()), w))
        residual, w = min(fits)
        assert residual < 1e-12 and 0 <= w <= 0.5


def test_strength_to_zero_is_the_identity_and_strength_scales_the_change():
    x = _images(64, size=28)
    for family in IMAGE_FAMILIES:
        faint = _augment(x, family, strength=1e-6)
        # Each family moves a pixel by at most ~ strength × (a few units), far below 1e-4 here.
        assert float((faint - x).abs().max()) < 1e-4, family
        weak, strong = ((_augment(x, family, strength=s) - x).abs().mean() for s in (0.25, 1.0))
        assert weak < strong, family


def test_augmentation_magnitudes():
    full = augmentation_magnitudes(1.0, (28, 28))
    assert set(full) == set(IMAGE_FAMILIES)
    assert "up to 4 px" in full["translate"] and "9×9" in full["occlude"] and "1.250" in full["scale"]
    half = augmentation_magnitudes(0.5, (28, 28))
    assert "up to 2 px" in half["translate"] and "5×5" in half["occlude"]


def test_rotation_and_noise_are_not_families():
    assert not set(IMAGE_FAMILIES) & set(SHIFT_FAMILIES)
    for name in ("rotate", "rotation", "noise", "gaussian_noise", "Rotation"):
        with pytest.raises(ValueError, match="rotation and additive Gaussian noise"):
            augment_images(_images(), families=(name,))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=[[0.5]]), ValueError, "x must be a floating tensor"),
    (dict(x=torch.ones(2, 3, 4, 4, dtype=torch.long)), ValueError, "x must be a floating tensor"),
    (dict(x=torch.rand(4, 8, 8)), ValueError, r"\(N, C, H, W\)"),
    (dict(x=2 * torch.ones(2, 1, 4, 4)), ValueError, r"x must lie in \[0, 1\].*divide 8-bit pixels by 255"),
    (dict(x=torch.full((2, 1, 4, 4), float("nan"))), ValueError, "NaN"),
    (dict(copies=0), ValueError, "copies"),
    (dict(copies=1.5), TypeError, "copies"),
    (dict(families="mix"), ValueError, "families must be a non-empty sequence"),
    (dict(families=()), ValueError, "families must be a non-empty sequence"),
    (dict(families=("blur",)), ValueError, "unknown family 'blur'"),
    (dict(families=("mix", "mix")), ValueError, "repeats a name"),
    (dict(strength=0.0), ValueError, r"strength must be a number in \(0, 1\]"),
    (dict(strength=1.5), ValueError, "strength"),
    (dict(strength=True), ValueError, "strength"),
    (dict(alpha=0), ValueError, "alpha must be a positive number"),
    (dict(generator=0), ValueError, "generator must be a CPU torch.Generator"),
    (dict(x=torch.rand(1, 1, 4, 4)), ValueError, "mixing needs at least 2 images"),
])
def test_bad_inputs_raise_one_line_errors(kwargs, error, match):
    args = {"x": _images(3), **kwargs}
    with pytest.raises(error, match=match) as info:
        augment_images(args.pop("x"), **args)
    assert "\n" not in str(info.value)
