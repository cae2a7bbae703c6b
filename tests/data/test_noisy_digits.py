"""The denoising data: clean digits as targets, a fixed draw of Gaussian noise on the inputs."""

from __future__ import annotations

import math

import pytest
import torch

from curvlab.data import NoisyDigitsDataModule
from curvlab.data.digits import load_digit_arrays


def test_targets_are_the_clean_digits_and_inputs_carry_the_noise() -> None:
    data = NoisyDigitsDataModule(noise_std=0.3)
    clean, _ = load_digit_arrays()

    assert torch.equal(data.y, clean)
    noise = data.x - data.y
    assert noise.mean().item() == pytest.approx(0.0, abs=0.01)
    assert noise.std().item() == pytest.approx(0.3, rel=0.01)


def test_the_input_psnr_is_the_noise_level() -> None:
    data = NoisyDigitsDataModule(noise_std=0.3)

    for split in ("train", "val", "test"):
        assert data.input_psnr(split) == pytest.approx(-20 * math.log10(0.3), abs=0.25)


def test_the_noise_seed_fixes_the_noise() -> None:
    a, b = NoisyDigitsDataModule(noise_seed=1), NoisyDigitsDataModule(noise_seed=1)
    c = NoisyDigitsDataModule(noise_seed=2)

    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
