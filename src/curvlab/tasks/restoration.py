"""Image restoration: predict the clean image from a degraded one, judged by PSNR."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio

from curvlab.tasks.base import Task


class Restoration(Task):
    """Outputs with one value per pixel, reshaped to the target image ``(B, C, H, W)``.

    The network predicts ``C H W`` values (the MLP's last layer, or the ViT's head) that are
    laid out as the image before the loss and the metric, so image losses (total variation,
    perceptual: the guide's loss table) see images. PSNR is ``10 log10(range^2 / MSE)`` with
    the MSE over the whole split.

    A feature-space loss alone (``perceptual``) leaves pixel values loosely tied; ``pixel_weight``
    adds a pixel term to whichever loss is chosen: ``L = loss + pixel_weight * MSE`` (guide
    1.2.1).

    Args:
        data_range: the pixel range ``range`` of the PSNR (1 for images in [0, 1]).
        pixel_weight: weight of the added MSE term; 0 trains on the chosen loss alone.
    """

    name = "restoration"
    losses = ("mse", "mae", "total_variation", "perceptual")

    image_shape: tuple[int, ...] = ()

    def __init__(self, data_range: float = 1.0, pixel_weight: float = 0.0) -> None:
        if data_range <= 0 or pixel_weight < 0:
            raise ValueError(
                f"task.data_range={data_range} must be > 0 and task.pixel_weight={pixel_weight} "
                ">= 0."
            )
        self.data_range = data_range
        self.pixel_weight = pixel_weight

    def setup(self, datamodule: Any) -> int:
        x, y = datamodule.x, datamodule.y
        if y.dim() != 4 or x.shape != y.shape:
            raise ValueError(
                f"task=restoration needs image targets (n, C, H, W) shaped like the inputs; the "
                f"data gives inputs {tuple(x.shape)} and targets {tuple(y.shape)}. Use "
                "data=noisy_digits."
            )
        self.image_shape = tuple(y.shape[1:])
        return math.prod(self.image_shape)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"psnr": PeakSignalNoiseRatio(data_range=self.data_range)})

    def compute_loss(
        self, loss_fn: Callable[..., torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        x_hat = outputs.reshape(targets.shape)  # (B, C, H, W)
        loss = loss_fn(x_hat, targets)
        if self.pixel_weight:
            loss = loss + self.pixel_weight * F.mse_loss(x_hat, targets)
        return loss

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        metrics.update(outputs.reshape(targets.shape), targets)
