"""MSE + total variation against float64 loops over neighbouring pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.losses import TotalVariationLoss, total_variation

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def tv_reference(x: list) -> float:
    """1/(B C H W) sum |x_{i+1,j} - x_{i,j}| + |x_{i,j+1} - x_{i,j}| over a nested [b][c][i][j]."""
    total, count = 0.0, 0
    for image in x:
        for ch in image:
            h, w = len(ch), len(ch[0])
            count += h * w
            for i in range(h):
                for j in range(w):
                    if i + 1 < h:
                        total += abs(ch[i + 1][j] - ch[i][j])
                    if j + 1 < w:
                        total += abs(ch[i][j + 1] - ch[i][j])
    return total / count


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_hat = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    return x_hat, torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)


def test_total_variation_matches_the_neighbour_sum() -> None:
    x_hat, _ = images(0)

    assert total_variation(x_hat).item() == pytest.approx(tv_reference(x_hat.tolist()), rel=1e-6)


def test_known_images() -> None:
    h, w = 4, 6
    checkerboard = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2).double()

    assert total_variation(torch.full((1, 1, h, w), 0.7)).item() == 0.0
    # every horizontal and vertical neighbour differs by 1
    expected = (h * (w - 1) + (h - 1) * w) / (h * w)
    assert total_variation(checkerboard[None, None]).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.3])
def test_loss_is_mse_plus_weighted_tv(weight: float) -> None:
    x_hat, x = images(1)
    loss = instantiate(
        OmegaConf.merge(OmegaConf.load(CONF / "total_variation.yaml"), {"weight": weight})
    )

    value = loss(x_hat, x)

    pairs = zip(x_hat.flatten().tolist(), x.flatten().tolist(), strict=True)
    mse = sum((a - b) ** 2 for a, b in pairs) / x.numel()
    assert value.item() == pytest.approx(mse + weight * tv_reference(x_hat.tolist()), rel=1e-6)


def test_gradients_match_finite_differences() -> None:
    x_hat, x = images(2)
    x_hat.requires_grad_(True)
    loss = TotalVariationLoss(weight=0.2)

    assert torch.autograd.gradcheck(lambda y: loss(y, x), (x_hat,))


def test_refuses_non_image_input_and_negative_weight() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        total_variation(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="weight"):
        TotalVariationLoss(weight=-1.0)
