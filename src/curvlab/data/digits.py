"""scikit-learn's handwritten digits: 1,797 real 8x8 images that ship with the package."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from curvlab.data.arrays import ArrayDataModule

DIGITS_MAX = 16.0  # pixel values are integers 0..16


def load_digit_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """Images as ``(n, 1, 8, 8)`` float32 in [0, 1] and labels as ``(n,)`` int64."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / DIGITS_MAX
    y = torch.tensor(digits.target, dtype=torch.int64)
    return x, y


class DigitsDataModule(ArrayDataModule):
    """The digits as images; the MLP flattens them, the ViT cuts them into patches.

    Args:
        max_examples: keep only the first this many images before splitting (None: all
            1,797); the dataset cycles through the ten digits, so a prefix stays balanced.
        **kwargs: see :class:`ArrayDataModule`.
    """

    def __init__(self, max_examples: int | None = None, **kwargs: object) -> None:
        x, y = load_digit_arrays()
        if max_examples is not None:
            x, y = x[:max_examples], y[:max_examples]
        super().__init__(x, y, num_classes=10, **kwargs)
