"""Metrics that torchmetrics lacks in the form the tasks report: mask overlap and recall@k.

Both accumulate over a whole split (summed counts, gathered embeddings), so an epoch's value
does not depend on how the split was batched, and DDP processes combine exactly.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class _MaskOverlap(Metric):
    """Per-channel pixel counts ``|A ∩ B|``, ``|A|``, ``|B|`` over all images of a split."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        for name in ("intersection", "predicted", "actual"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.float64), "sum")

    def update(self, probabilities: torch.Tensor, masks: torch.Tensor) -> None:
        """Add a batch of ``(B, K, H, W)`` probabilities and 0/1 masks."""
        a = (probabilities > self.threshold).flatten(2).double()  # (B, K, HW) predicted set A
        b = (masks > 0.5).flatten(2).double()  # (B, K, HW) true set B
        self.intersection += (a * b).sum((0, 2))
        self.predicted += a.sum((0, 2))
        self.actual += b.sum((0, 2))

    def _mean(self, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        # A channel absent from both prediction and truth agrees perfectly: score 1.
        score = torch.where(denominator > 0, numerator / denominator.clamp_min(1), 1.0)
        return score.mean().float()


class MeanIoU(_MaskOverlap):
    """Mean over mask channels of ``IoU = |A ∩ B| / |A ∪ B|`` (guide 1.2.6), pixels thresholded.

    Args:
        num_classes: K, the mask channels averaged (background is not a channel).
        threshold: probability above which a pixel is predicted in the mask.
    """

    def compute(self) -> torch.Tensor:
        union = self.predicted + self.actual - self.intersection
        return self._mean(self.intersection, union)


class MeanDice(_MaskOverlap):
    """Mean over mask channels of ``Dice = 2 |A ∩ B| / (|A| + |B|)`` (guide 1.2.6).

    Args:
        num_classes: K, the mask channels averaged (background is not a channel).
        threshold: probability above which a pixel is predicted in the mask.
    """

    def compute(self) -> torch.Tensor:
        return self._mean(2 * self.intersection, self.predicted + self.actual)


class RecallAtK(Metric):
    """Share of examples whose ``k`` nearest other examples include one of the same label.

    Embeddings of the whole split are gathered; each one queries all the others (itself
    excluded) by Euclidean distance.

    Args:
        k: neighbours looked at.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"task.recall_k={k} must be >= 1.")
        self.k = k
        self.add_state("embeddings", [], "cat")
        self.add_state("labels", [], "cat")

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Add ``(B, D)`` embeddings and their ``(B,)`` labels."""
        self.embeddings.append(embeddings.detach().float())
        self.labels.append(labels.detach())

    def compute(self) -> torch.Tensor:
        e, y = dim_zero_cat(self.embeddings), dim_zero_cat(self.labels)
        d = torch.cdist(e, e)  # (n, n)
        d.fill_diagonal_(float("inf"))
        k = min(self.k, len(y) - 1)
        neighbours = d.topk(k, dim=1, largest=False).indices  # (n, k)
        hit = (y[neighbours] == y[:, None]).any(dim=1)
        return hit.float().mean()
