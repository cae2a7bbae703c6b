"""The synthetic shapes: exact masks, reproducible from the seed, images that match them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curvlab.data import ShapesDataModule
from curvlab.data.shapes import make_shapes, shape_mask


@pytest.mark.parametrize(
    ("kind", "pixels"),
    [("square", 25), ("disc", 13), ("triangle", 1 + 1 + 3 + 3 + 5)],
)
def test_each_kind_covers_the_pixels_of_its_definition(kind: str, pixels: int) -> None:
    mask = shape_mask(kind, cy=5, cx=6, r=2, size=12)

    assert mask.sum() == pixels
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 7, 4, 8)


def test_the_triangle_points_up() -> None:
    mask = shape_mask("triangle", cy=5, cx=5, r=3, size=11)

    widths = mask.sum(axis=1)[2:9]  # rows cy - r .. cy + r
    assert widths.tolist() == [1, 1, 3, 3, 5, 5, 7]


def test_the_same_seed_draws_the_same_images_and_another_does_not() -> None:
    x1, y1 = make_shapes(20, seed=3)
    x2, y2 = make_shapes(20, seed=3)
    x3, _ = make_shapes(20, seed=4)

    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_masks_are_exclusive_and_every_image_holds_a_shape() -> None:
    _, masks = make_shapes(200, image_size=32, max_shapes=3, seed=0)

    assert masks.shape == (200, 3, 32, 32)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert masks.sum(dim=1).max() == 1  # no pixel in two shapes
    assert (masks.flatten(1).sum(1) > 0).all()
    kinds_present = (masks.sum(dim=(2, 3)) > 0).float().mean(0)
    assert torch.all((kinds_present > 0.3) & (kinds_present < 0.9))  # all three kinds are drawn


def test_noise_is_what_separates_the_image_from_the_mask() -> None:
    clean, masks = make_shapes(50, noise_std=1e-6, seed=1)
    noisy, _ = make_shapes(50, noise_std=0.2, seed=1)

    inside = masks.amax(dim=1, keepdim=True).bool()
    assert torch.all(clean[~inside].abs() < 1e-4)
    assert clean[inside].min() >= 0.5 - 1e-4 and clean[inside].max() <= 1.0 + 1e-4
    assert (noisy - clean)[~inside].std().item() == pytest.approx(0.2, rel=0.02)


def test_the_data_module_serves_masks_per_kind_or_merged() -> None:
    per_kind = ShapesDataModule(num_images=40, image_size=16, max_radius=5)
    merged = ShapesDataModule(num_images=40, image_size=16, max_radius=5, per_kind=False)

    assert per_kind.input_shape == (1, 16, 16)
    assert per_kind.y.shape == (40, 3, 16, 16) and per_kind.mask_names == [
        "disc",
        "square",
        "triangle",
    ]
    assert merged.y.shape == (40, 1, 16, 16) and merged.mask_names == ["foreground"]
    assert torch.equal(merged.y[:, 0], per_kind.y.amax(dim=1))


def test_impossible_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"data.max_radius=9.*image_size=16"):
        make_shapes(4, image_size=16, max_radius=9)
    with pytest.raises(ValueError, match=r"data.kinds=\['star'\]"):
        make_shapes(4, kinds=["star"])
