"""Metric-learning losses on a batch of embeddings and their labels (the guide's loss table).

Each loss is called ``loss(embeddings, labels)`` with ``(B, D)`` embeddings and ``(B,)``
integer labels; pairs and triplets are formed inside the batch from the labels, so a sampler
that puts several examples of each class in a batch gives them something to learn from.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MINING = ("batch_hard", "batch_all")


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``d_ij = ||e_i - e_j||`` of ``(B, D)`` embeddings, shape ``(B, B)``.

    Differences are formed explicitly (no ``|a|^2 + |b|^2 - 2ab`` cancellation), and the square
    root is guarded so identical embeddings get distance 0 with gradient 0 instead of NaN.
    """
    sq = (embeddings[:, None, :] - embeddings[None, :, :]).pow(2).sum(-1)  # (B, B)
    positive = sq > 0
    root = torch.where(positive, sq, torch.ones_like(sq)).sqrt()
    return torch.where(positive, root, torch.zeros_like(sq))


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(same, different)`` boolean ``(B, B)`` masks; ``same`` excludes the diagonal."""
    equal = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return equal & ~eye, ~equal


def upper_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair ``i < j`` of the batch: indices ``(i, j)`` and whether the labels match."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    return i, j, labels[i] == labels[j]


def zero_like_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that is still connected to the graph, for batches with nothing to compare."""
    return embeddings.sum() * 0


class BatchTripletLoss(nn.Module):
    """Triplet loss with online mining (Schroff et al. 2015; Hermans et al. 2017).

    For an anchor ``a``, a positive ``p`` (same label) and a negative ``n`` (other label):
    ``L(a, p, n) = max(0, d(a, p) - d(a, n) + margin)`` with Euclidean ``d``.

    - ``batch_hard``: each anchor takes its farthest positive and nearest negative; the loss is
      the mean over anchors that have both.
    - ``batch_all``: every valid triplet of the batch; the loss is the mean over triplets that
      still violate the margin (those with ``L > 0``), so finished triplets do not dilute it.

    A batch without any valid triplet (one class, or all singletons) gives 0. ``batch_all``
    holds a ``(B, B, B)`` tensor of triplet losses, so it suits batches of a few hundred.

    Args:
        margin: required gap between positive and negative distances.
        mining: ``batch_hard`` or ``batch_all``.
        normalize: L2-normalise the embeddings first (distances then lie in [0, 2]).
    """

    def __init__(
        self, margin: float = 1.0, mining: str = "batch_hard", normalize: bool = False
    ) -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"loss.mining={mining!r} is not valid; choose one of {MINING}.")
        self.margin = float(margin)
        self.mining = mining
        self.normalize = normalize

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mined triplet loss of ``(B, D)`` embeddings with ``(B,)`` labels."""
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=-1)

        d = pairwise_distances(embeddings)  # (B, B)
        same, different = label_masks(labels)

        if self.mining == "batch_hard":
            valid = same.any(1) & different.any(1)  # (B,) anchors with a positive and a negative
            if not valid.any():
                return zero_like_loss(embeddings)
            d_ap = d.masked_fill(~same, float("-inf")).amax(1)  # farthest positive
            d_an = d.masked_fill(~different, float("inf")).amin(1)  # nearest negative
            return F.relu(d_ap - d_an + self.margin)[valid].mean()

        valid = same[:, :, None] & different[:, None, :]  # (B, B, B) over (a, p, n)
        losses = F.relu(d[:, :, None] - d[:, None, :] + self.margin)[valid]
        active = losses > 0
        if not active.any():
            return zero_like_loss(embeddings)
        return losses[active].mean()


class ContrastiveLoss(nn.Module):
    """Pairwise contrastive loss (Hadsell, Chopra and LeCun 2006) over all pairs of the batch.

    For a pair at Euclidean distance ``d`` with ``y = 1`` when the labels match:
    ``L = 1/2 * (y d^2 + (1 - y) max(0, margin - d)^2)``, averaged over the ``B(B-1)/2`` pairs.
    Similar pairs are pulled together, dissimilar ones pushed at least ``margin`` apart.

    Args:
        margin: distance beyond which dissimilar pairs cost nothing.
        normalize: L2-normalise the embeddings first.
    """

    def __init__(self, margin: float = 1.0, normalize: bool = False) -> None:
        super().__init__()
        self.margin = float(margin)
        self.normalize = normalize

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Contrastive loss of ``(B, D)`` embeddings with ``(B,)`` labels."""
        if len(labels) < 2:
            return zero_like_loss(embeddings)
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=-1)

        i, j, similar = upper_pairs(labels)
        d = pairwise_distances(embeddings)[i, j]  # (P,) one distance per pair

        pull = d.pow(2)
        push = F.relu(self.margin - d).pow(2)
        return 0.5 * torch.where(similar, pull, push).mean()


class BatchCosineEmbeddingLoss(nn.Module):
    """Cosine embedding loss over all pairs of the batch, via ``torch.nn.CosineEmbeddingLoss``.

    For a pair with cosine similarity ``cos(e_i, e_j)``: ``L = 1 - cos`` when the labels match
    and ``max(0, cos - margin)`` otherwise, averaged over the ``B(B-1)/2`` pairs. Only
    directions matter, so embedding norms are free.

    Args:
        margin: cosine below which dissimilar pairs cost nothing, in [-1, 1].
    """

    def __init__(self, margin: float = 0.0) -> None:
        super().__init__()
        if not -1 <= margin <= 1:
            raise ValueError(f"loss.margin={margin} must lie in [-1, 1].")
        self.criterion = nn.CosineEmbeddingLoss(margin=margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cosine embedding loss of ``(B, D)`` embeddings with ``(B,)`` labels."""
        if len(labels) < 2:
            return zero_like_loss(embeddings)

        i, j, similar = upper_pairs(labels)
        # torch's convention: +1 marks a similar pair, -1 a dissimilar one
        y = similar.to(embeddings.dtype) * 2 - 1
        return self.criterion(embeddings[i], embeddings[j], y)
