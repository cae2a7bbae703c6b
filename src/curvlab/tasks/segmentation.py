"""Segmentation: a 0/1 mask per channel and pixel, judged by mean IoU and Dice."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection

from curvlab.models import ViT
from curvlab.models.heads import Unflatten, ViTSegmenter
from curvlab.tasks.base import Task
from curvlab.tasks.metrics import MeanDice, MeanIoU


class Segmentation(Task):
    """Mask logits ``(B, K, H, W)`` against 0/1 masks ``(B, K, H, W)``, a sigmoid per pixel.

    Losses: Dice and IoU (guide 1.2.6), BCE with logits (1.2.4), sigmoid focal (1.2.5), and
    BCE plus Dice.

    With ``model=vit`` the ViT is the backbone and a light decoder maps its patch tokens to the
    mask (:class:`~curvlab.models.heads.ViTSegmenter`, the guide's chapter 4.8 use); any other
    network predicts ``K H W`` logits that are reshaped to the mask. Mean IoU and mean Dice
    are averaged over the K channels (background is not a channel), on pixels thresholded at
    probability ``threshold``, with counts summed over the whole split.

    Args:
        threshold: probability above which a pixel counts as inside the mask.
    """

    name = "segmentation"
    # TODO(segmentation-classes): masks are 0/1 per channel with a sigmoid per pixel; class-index
    # masks with a softmax over kinds (ce, focal) are not offered, so those losses are refused.
    losses = ("dice_bce", "dice", "iou", "bce_logits", "focal_binary")

    mask_shape: tuple[int, ...] = ()

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"task.threshold={threshold} must lie in (0, 1).")
        self.threshold = threshold

    def setup(self, datamodule: Any) -> int:
        y = datamodule.y
        if y.dim() != 4 or not y.is_floating_point():
            raise ValueError(
                f"task=segmentation needs 0/1 float masks shaped (n, K, H, W); the data gives "
                f"{tuple(y.shape)} {y.dtype}. Use data=shapes."
            )
        self.mask_shape = tuple(y.shape[1:])
        return math.prod(self.mask_shape)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        if isinstance(model, ViT):
            return ViTSegmenter(model, num_classes=self.mask_shape[0])
        return Unflatten(model, self.mask_shape)

    def metrics(self) -> MetricCollection:
        K = self.mask_shape[0]
        return MetricCollection(
            {"miou": MeanIoU(K, self.threshold), "dice": MeanDice(K, self.threshold)}
        )

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        metrics.update(torch.sigmoid(outputs), targets)
