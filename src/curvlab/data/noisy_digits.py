"""Denoising data: the digits with additive Gaussian noise as input, the clean image as target."""

from __future__ import annotations

import math

import torch

from curvlab.data.arrays import ArrayDataModule
from curvlab.data.digits import load_digit_arrays


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(range^2 / MSE)`` in dB over the whole batch."""
    mse = float((prediction - target).pow(2).mean())
    return 10 * math.log10(data_range**2 / mse)


class NoisyDigitsDataModule(ArrayDataModule):
    """Noisy digits ``x = clean + noise_std * n``, ``n ~ N(0, 1)``, with target ``y = clean``.

    Pixels lie in [0, 1]; the noisy input is not clipped, so its MSE to the clean image is
    ``noise_std^2`` on average and its PSNR about ``-20 log10(noise_std)`` dB. The noise is drawn
    once from its own seed, so every epoch and every run sees the same noisy images.

    Args:
        noise_std: standard deviation of the noise.
        noise_seed: seed of the noise, independent of the split and training seeds.
        **kwargs: batch size, split fractions and seeds, as for :class:`ArrayDataModule`.
    """

    def __init__(self, noise_std: float = 0.3, noise_seed: int = 0, **kwargs: object) -> None:
        if noise_std <= 0:
            raise ValueError(f"data.noise_std={noise_std} must be > 0.")
        clean, _ = load_digit_arrays()
        generator = torch.Generator().manual_seed(noise_seed)
        noise = torch.randn(clean.shape, generator=generator)
        super().__init__(clean + noise_std * noise, clean, **kwargs)
        self.noise_std = noise_std

    def input_psnr(self, split: str = "val") -> float:
        """PSNR of the noisy inputs against the clean images on ``split`` (the baseline)."""
        subsets = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        if split not in subsets:
            raise ValueError(f"split={split!r}; choose one of {', '.join(subsets)}.")
        indices = subsets[split].indices
        return psnr(self.x[indices], self.y[indices])
