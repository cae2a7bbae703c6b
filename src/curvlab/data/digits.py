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
    """The digits as images; the MLP flattens them, the ViT cuts them into patches."""

    def __init__(self, **kwargs: object) -> None:
        x, y = load_digit_arrays()
        super().__init__(x, y, num_classes=10, **kwargs)
