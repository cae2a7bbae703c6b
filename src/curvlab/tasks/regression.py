"""Regression: real-valued targets, judged in the target's own units."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from curvlab.tasks.base import Task


class Regression(Task):
    """Outputs ``(B, T)`` against float targets ``(B, T)``, with the guide's 1.2.1-1.2.3 losses.

    Losses are computed on the targets as the data serves them (standardised for the diabetes
    data); MAE and RMSE are reported in the original units, using the data's ``target_mean``
    and ``target_std`` when it has them, and R^2 (unit-free) beside them; with several targets
    R^2 is their mean.
    """

    name = "regression"
    losses = ("mse", "mae", "huber", "smooth_l1")

    num_targets: int = 0
    target_mean: float = 0.0
    target_std: float = 1.0

    def setup(self, datamodule: Any) -> int:
        y = datamodule.y
        if y.dim() != 2 or not y.is_floating_point():
            raise ValueError(
                f"task=regression needs float targets shaped (n, targets); the data gives "
                f"{tuple(y.shape)} {y.dtype}. Use data=diabetes."
            )
        self.num_targets = int(y.shape[1])
        self.target_mean = float(getattr(datamodule, "target_mean", 0.0))
        self.target_std = float(getattr(datamodule, "target_std", 1.0))
        return self.num_targets

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "mae": MeanAbsoluteError(),
                "rmse": MeanSquaredError(squared=False),
                "r2": R2Score(),
            }
        )

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        # Back to the original units: y = y_std * s + m.
        scale, shift = self.target_std, self.target_mean
        metrics.update(outputs * scale + shift, targets * scale + shift)
