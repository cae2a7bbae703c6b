"""Metric learning: embeddings where examples of one class lie close, judged by recall@k."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics import MetricCollection

from curvlab.tasks.base import Task
from curvlab.tasks.metrics import RecallAtK


class MetricLearning(Task):
    """The network's output is an embedding ``(B, D)``; targets are integer class labels.

    The losses are the metric-learning rows of the guide's loss table (triplet, contrastive,
    cosine embedding); pairs and triplets are formed inside each batch from the labels. With
    ``normalize`` the embeddings are put on the unit sphere before the loss and the metric, so
    Euclidean distances lie in [0, 2] and rank like cosine similarities. The metric is
    ``recall_at_<k>``: the share of examples of the split whose k nearest other examples
    include one of the same class.

    Args:
        embedding_dim: D, the width of the network's output.
        normalize: L2-normalise the embeddings.
        recall_k: k of the recall metric.
    """

    name = "metric_learning"
    losses = ("triplet", "contrastive", "cosine_embedding")

    def __init__(self, embedding_dim: int = 32, normalize: bool = True, recall_k: int = 1) -> None:
        if embedding_dim < 1:
            raise ValueError(f"task.embedding_dim={embedding_dim} must be >= 1.")
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.recall_k = recall_k

    def setup(self, datamodule: Any) -> int:
        y = datamodule.y
        if y.dim() != 1 or y.is_floating_point():
            raise ValueError(
                f"task=metric_learning needs integer class labels shaped (n,); the data gives "
                f"{tuple(y.shape)} {y.dtype}. Use data=digits."
            )
        return self.embedding_dim

    def embed(self, outputs: torch.Tensor) -> torch.Tensor:
        """The embeddings the loss and the metric see."""
        return F.normalize(outputs, dim=-1) if self.normalize else outputs

    def metrics(self) -> MetricCollection:
        return MetricCollection({f"recall_at_{self.recall_k}": RecallAtK(self.recall_k)})

    def compute_loss(
        self, loss_fn: Callable[..., torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        return loss_fn(self.embed(outputs), targets)

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        metrics.update(self.embed(outputs), targets)
