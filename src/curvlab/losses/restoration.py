"""Image-restoration objective: MSE (guide 1.2.1) plus a total-variation regulariser.

Total variation is the last row of the guide's loss table (image smoothing and denoising).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import total_variation as summed_total_variation


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a ``(B, C, H, W)`` batch, per pixel and image.

    ``TV(x) = 1 / (B C H W) * sum_{b,c,i,j} (|x_{i+1,j} - x_{i,j}| + |x_{i,j+1} - x_{i,j}|)``.
    The neighbour sums come from ``torchmetrics``; dividing by ``C H W`` keeps the regulariser's
    weight independent of the image size.
    """
    if images.dim() != 4:
        raise ValueError(
            f"total variation needs an image batch (B, C, H, W), got {tuple(images.shape)}."
        )
    return summed_total_variation(images, reduction="mean") / images[0].numel()


class TotalVariationLoss(nn.Module):
    """Mean squared error plus weighted total variation of the prediction.

    ``L(x_hat, x) = 1/N sum (x - x_hat)^2 + weight * TV(x_hat)`` (guide 1.2.1 and the loss
    table's total variation; TV as in :func:`total_variation`). The TV term penalises
    differences between neighbouring pixels, so noise is removed at the price of fine detail.

    Args:
        weight: strength of the TV term; 0 gives plain MSE.
    """

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"loss.weight={weight} must be >= 0.")
        self.weight = float(weight)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE of ``(B, C, H, W)`` images plus ``weight`` times the prediction's TV."""
        return F.mse_loss(prediction, target) + self.weight * total_variation(prediction)
