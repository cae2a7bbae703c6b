"""Synthetic segmentation data: discs, squares and triangles on noise, with per-pixel masks.

Everything is drawn from one seed, so the same settings give the same images on every machine
and nothing is downloaded. Shapes never overlap (their bounding squares keep a one-pixel gap),
so each pixel belongs to at most one shape and the masks are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from curvlab.data.arrays import ArrayDataModule

SHAPE_KINDS = ("disc", "square", "triangle")

# Placement tries per shape before an image settles for fewer shapes.
_PLACEMENT_TRIES = 50


def shape_mask(kind: str, cy: int, cx: int, r: int, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape inside the square ``[cy +- r] x [cx +- r]``.

    A disc has radius ``r``; a square has half-side ``r``; a triangle points up, with its apex
    at row ``cy - r`` and its base, ``2 r + 1`` pixels wide, on row ``cy + r``.
    """
    yy, xx = np.mgrid[:size, :size]
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "triangle":
        # The half-width grows from 0 at the apex to r at the base.
        return (np.abs(dy) <= r) & (2 * np.abs(dx) <= dy + r)
    raise ValueError(f"unknown shape kind {kind!r}; valid kinds are {', '.join(SHAPE_KINDS)}.")


def _apart(box: tuple[int, int, int], placed: list[tuple[int, int, int]]) -> bool:
    """Whether a shape's bounding square keeps a one-pixel gap to every placed one."""
    cy, cx, r = box
    return all(abs(cy - py) > r + pr + 1 or abs(cx - px) > r + pr + 1 for py, px, pr in placed)


def make_shapes(
    num_images: int,
    image_size: int = 32,
    kinds: Sequence[str] = SHAPE_KINDS,
    max_shapes: int = 3,
    min_radius: int = 3,
    max_radius: int = 7,
    noise_std: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw images and their masks.

    Each image holds 1..``max_shapes`` shapes of random kind, size (``r`` in
    ``[min_radius, max_radius]``), position and brightness (in [0.5, 1]) on a black background,
    plus Gaussian noise of standard deviation ``noise_std`` over every pixel.

    Returns:
        Images ``(n, 1, S, S)`` float32 and masks ``(n, K, S, S)`` float32 in {0, 1}, one
        channel per entry of ``kinds``.
    """
    if not kinds or any(kind not in SHAPE_KINDS for kind in kinds):
        raise ValueError(
            f"data.kinds={list(kinds)} is not valid; choose among {', '.join(SHAPE_KINDS)}."
        )
    if not 1 <= min_radius <= max_radius or 2 * max_radius + 1 > image_size:
        raise ValueError(
            f"data.min_radius={min_radius} and data.max_radius={max_radius} must satisfy "
            f"1 <= min_radius <= max_radius and 2 * max_radius + 1 <= image_size={image_size}."
        )
    if max_shapes < 1 or num_images < 1:
        raise ValueError(
            f"data.max_shapes={max_shapes} and data.num_images={num_images} must be >= 1."
        )

    rng = np.random.default_rng(seed)
    S, K = image_size, len(kinds)
    images = np.zeros((num_images, 1, S, S), dtype=np.float32)
    masks = np.zeros((num_images, K, S, S), dtype=np.float32)
    for i in range(num_images):
        placed: list[tuple[int, int, int]] = []
        for _ in range(rng.integers(1, max_shapes + 1)):
            k = int(rng.integers(K))
            brightness = rng.uniform(0.5, 1.0)
            for _ in range(_PLACEMENT_TRIES):
                r = int(rng.integers(min_radius, max_radius + 1))
                cy, cx = (int(c) for c in rng.integers(r, S - r, size=2))
                if _apart((cy, cx, r), placed):
                    break
            else:
                continue
            placed.append((cy, cx, r))
            inside = shape_mask(kinds[k], cy, cx, r, S)
            masks[i, k][inside] = 1.0
            images[i, 0][inside] = brightness

    images += rng.normal(0.0, noise_std, size=images.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(masks)


class ShapesDataModule(ArrayDataModule):
    """Synthetic shapes as ``(1, S, S)`` images with ``(K, S, S)`` 0/1 mask targets.

    Args:
        num_images: images drawn (before the train/val/test split).
        image_size: S.
        kinds: shape kinds drawn, one mask channel each (when ``per_kind``).
        max_shapes: most shapes in one image.
        min_radius: smallest shape half-size r in pixels.
        max_radius: largest shape half-size r in pixels.
        noise_std: standard deviation of the Gaussian pixel noise.
        shapes_seed: seed of the drawing, independent of the split and training seeds.
        per_kind: one mask channel per kind (K = len(kinds)); False merges them into one
            foreground channel (K = 1).
        **kwargs: batch size, split fractions and seeds, as for :class:`ArrayDataModule`.
    """

    def __init__(
        self,
        num_images: int = 2000,
        image_size: int = 32,
        kinds: Sequence[str] = SHAPE_KINDS,
        max_shapes: int = 3,
        min_radius: int = 3,
        max_radius: int = 7,
        noise_std: float = 0.2,
        shapes_seed: int = 0,
        per_kind: bool = True,
        **kwargs: object,
    ) -> None:
        kinds = list(kinds)
        x, y = make_shapes(
            num_images,
            image_size,
            kinds,
            max_shapes,
            min_radius,
            max_radius,
            noise_std,
            shapes_seed,
        )
        if not per_kind:
            y = y.amax(dim=1, keepdim=True)  # (n, 1, S, S) foreground
        super().__init__(x, y, **kwargs)
        self.mask_names = kinds if per_kind else ["foreground"]
