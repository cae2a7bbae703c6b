"""Binary and multi-label classification: one sigmoid output per label, 0/1 targets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryF1Score,
    MultilabelAUROC,
    MultilabelF1Score,
)

from curvlab.tasks.base import Task


class _SigmoidClassification(Task):
    """Logits ``(B, L)`` against 0/1 float targets ``(B, L)``, one sigmoid per label.

    Cross entropy on probabilities (``bce``, guide 1.2.4 with K = 2) sees ``sigmoid(z)``; the
    losses on logits (``bce_logits``, guide 1.2.4; ``focal_binary``, guide 1.2.5) see ``z``.
    """

    losses = ("bce_logits", "bce", "focal_binary")
    data_hint = "data=digits_ge5 (one label) or data=digit_attributes (several)"

    num_labels: int = 0

    def setup(self, datamodule: Any) -> int:
        y = datamodule.y
        if y.dim() != 2 or not y.is_floating_point():
            raise ValueError(
                f"task={self.name} needs 0/1 float targets shaped (n, labels); the data gives "
                f"{tuple(y.shape)} {y.dtype}. Use {self.data_hint}."
            )
        self.num_labels = int(y.shape[1])
        return self.num_labels

    def compute_loss(
        self, loss_fn: Callable[..., torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        # BCELoss expects probabilities; the others take logits.
        if isinstance(loss_fn, nn.BCELoss):
            outputs = torch.sigmoid(outputs)
        return loss_fn(outputs, targets)

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        # Probabilities, not logits: torchmetrics would read logits that happen to lie in
        # [0, 1] as probabilities.
        metrics.update(torch.sigmoid(outputs), targets.long())


class BinaryClassification(_SigmoidClassification):
    """One yes/no label per example (e.g. "is this digit >= 5"), judged by AUROC and F1.

    F1 thresholds the probability at 0.5.
    """

    name = "binary"

    def setup(self, datamodule: Any) -> int:
        num_labels = super().setup(datamodule)
        if num_labels != 1:
            raise ValueError(
                f"task=binary predicts one label but the data gives {num_labels}; use "
                "task=multilabel for several labels, or data=digits_ge5."
            )
        return num_labels

    def metrics(self) -> MetricCollection:
        return MetricCollection({"auroc": BinaryAUROC(), "f1": BinaryF1Score()})


class MultiLabelClassification(_SigmoidClassification):
    """Several independent yes/no labels per example (a multi-hot target).

    Judged by AUROC and F1, each the unweighted mean over labels (macro); F1 thresholds each
    probability at 0.5.
    """

    name = "multilabel"

    def setup(self, datamodule: Any) -> int:
        num_labels = super().setup(datamodule)
        if num_labels < 2:
            raise ValueError(
                "task=multilabel needs at least two labels per example; use task=binary for "
                "one, or data=digit_attributes."
            )
        return num_labels

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "auroc": MultilabelAUROC(self.num_labels, average="macro"),
                "f1": MultilabelF1Score(self.num_labels, average="macro"),
            }
        )
