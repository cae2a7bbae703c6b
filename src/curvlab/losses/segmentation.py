"""Overlap losses for segmentation masks: Dice and IoU (Jaccard), guide section 1.2.6.

Predictions are ``(B, C, *spatial)``; a binary mask has ``C = 1``. The target decides how
logits become probabilities:

- same shape as the prediction (0/1 masks): sigmoid per element (binary or multi-label);
- ``(B, *spatial)`` integer class indices: softmax over ``C`` and a one-hot target; with
  ``C = 1`` they are read as a 0/1 mask instead (a softmax over one class is always 1).

With soft probabilities ``p`` and target ``g`` the set sizes become sums: ``|A ∩ B| = sum p g``,
``|A| = sum p``, ``|B| = sum g``, taken over the spatial dims (and the batch, unless
``per_image``), then averaged over classes (and images).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def binary_mask_channel(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Give a ``(B, *spatial)`` target of a one-channel prediction its channel dim."""
    if prediction.dim() >= 3 and prediction.shape[1] == 1 and target.dim() == prediction.dim() - 1:
        return target.unsqueeze(1)
    return target


def probabilities_and_masks(
    prediction: torch.Tensor, target: torch.Tensor, from_logits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a prediction and its target into matching ``(B, C, *spatial)`` ``p`` and ``g``."""
    if prediction.dim() < 3:
        raise ValueError(
            f"segmentation losses need predictions of shape (B, C, *spatial), got "
            f"{tuple(prediction.shape)}; give a binary mask one channel, (B, 1, H, W)."
        )
    target = binary_mask_channel(prediction, target)

    if target.shape == prediction.shape:
        p = torch.sigmoid(prediction) if from_logits else prediction
        return p, target.to(p.dtype)

    if target.shape == prediction.shape[:1] + prediction.shape[2:]:
        p = torch.softmax(prediction, dim=1) if from_logits else prediction
        g = F.one_hot(target.long(), prediction.shape[1]).movedim(-1, 1)  # (B, C, *spatial)
        return p, g.to(p.dtype)

    raise ValueError(
        f"segmentation target of shape {tuple(target.shape)} fits neither a mask of the "
        f"prediction's shape {tuple(prediction.shape)} nor class indices of shape "
        f"{tuple(prediction.shape[:1] + prediction.shape[2:])}."
    )


def overlap_sums(
    p: torch.Tensor, g: torch.Tensor, per_image: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum p g, sum p, sum g)`` per class, per image too when ``per_image``."""
    dims = tuple(range(2, p.dim())) if per_image else (0, *range(2, p.dim()))
    return (p * g).sum(dims), p.sum(dims), g.sum(dims)


def safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, defined as 1 where both masks are empty (denominator 0).

    The inner ``where`` keeps the unused division finite so its gradient is 0, not NaN.
    """
    empty = denominator <= 0
    ratio = numerator / torch.where(empty, torch.ones_like(denominator), denominator)
    return torch.where(empty, torch.ones_like(ratio), ratio)


class _OverlapLoss(nn.Module):
    def __init__(
        self, smooth: float = 1.0, from_logits: bool = True, per_image: bool = False
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"loss.smooth={smooth} must be >= 0.")
        self.smooth = float(smooth)
        self.from_logits = from_logits
        self.per_image = per_image

    def score(
        self, intersection: torch.Tensor, size_p: torch.Tensor, size_g: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1 - mean score`` of a ``(B, C, *spatial)`` prediction against its target."""
        p, g = probabilities_and_masks(prediction, target, self.from_logits)
        intersection, size_p, size_g = overlap_sums(p, g, self.per_image)
        return 1 - self.score(intersection, size_p, size_g).mean()


class DiceLoss(_OverlapLoss):
    """Dice loss (guide section 1.2.6): ``L = 1 - Dice``.

    ``Dice = (2 |A ∩ B| + s) / (|A| + |B| + s)`` with soft set sizes (see the module docstring).
    The smoothing ``s`` keeps the score near 1 when a class is absent and hardly predicted;
    when both masks are empty and ``s = 0`` the score is defined as 1 (loss 0).

    Args:
        smooth: ``s``, added to numerator and denominator.
        from_logits: apply sigmoid / softmax to the prediction; False if it holds probabilities.
        per_image: score each image separately and average; otherwise sum over the batch first.
    """

    def score(
        self, intersection: torch.Tensor, size_p: torch.Tensor, size_g: torch.Tensor
    ) -> torch.Tensor:
        return safe_ratio(2 * intersection + self.smooth, size_p + size_g + self.smooth)


class IoULoss(_OverlapLoss):
    """IoU (Jaccard) loss, the Dice table's companion (guide 1.2.6): ``L = 1 - IoU``.

    ``IoU = (|A ∩ B| + s) / (|A| + |B| - |A ∩ B| + s)`` with soft set sizes; empty masks with
    ``s = 0`` score 1 (loss 0).

    Args:
        smooth: ``s``, added to numerator and denominator.
        from_logits: apply sigmoid / softmax to the prediction; False if it holds probabilities.
        per_image: score each image separately and average; otherwise sum over the batch first.
    """

    def score(
        self, intersection: torch.Tensor, size_p: torch.Tensor, size_g: torch.Tensor
    ) -> torch.Tensor:
        union = size_p + size_g - intersection
        return safe_ratio(intersection + self.smooth, union + self.smooth)


class DiceBCELoss(nn.Module):
    """Weighted sum of cross entropy and Dice for segmentation (guide 1.2.4 and 1.2.6).

    ``L = w_ce * CE + w_dice * (1 - Dice)``. Cross entropy is BCE with logits for 0/1 masks
    (guide 1.2.4, binary) and softmax cross entropy for class-index targets; CE gives dense
    per-pixel gradients early on, Dice keeps small foreground regions from being ignored.

    Args:
        bce_weight: ``w_ce``.
        dice_weight: ``w_dice``.
        smooth: Dice smoothing ``s``.
        per_image: Dice per image rather than over the batch.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(smooth=smooth, from_logits=True, per_image=per_image)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Combined loss of ``(B, C, *spatial)`` logits against masks or class indices."""
        # Dice first: it checks the shapes and names the two accepted target layouts
        dice = self.dice(logits, target)

        target = binary_mask_channel(logits, target)
        if target.shape == logits.shape:
            ce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
        else:
            ce = F.cross_entropy(logits, target.long())

        return self.bce_weight * ce + self.dice_weight * dice
