"""Single-label classification over ``num_classes`` classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from curvlab.tasks.base import Task

# Losses that compare outputs with a target vector rather than a class index.
_REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)


class Classification(Task):
    """Logits of width ``num_classes`` against integer class targets.

    Judged by accuracy and macro F1. Losses that regress on vectors (MSE and friends) see
    one-hot targets, as in the guide's squared-error examples.
    """

    name = "classification"
    losses = ("ce", "focal", "mse")

    num_classes: int = 0

    def setup(self, datamodule: Any) -> int:
        self.num_classes = int(datamodule.num_classes)
        return self.num_classes

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(self.num_classes, average="micro"),
                "f1": MulticlassF1Score(self.num_classes, average="macro"),
            }
        )

    def compute_loss(
        self, loss_fn: Callable[..., torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(loss_fn, _REGRESSION_LOSSES):
            targets = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
        return loss_fn(outputs, targets)
