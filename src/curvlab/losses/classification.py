"""Focal losses (guide section 1.2.5) for imbalanced classification, on logits.

Plain cross entropy (section 1.2.4) comes straight from ``torch.nn`` (``CrossEntropyLoss``,
``BCELoss``, ``BCEWithLogitsLoss``); this module adds the focal variants. The multiclass one is
written here with log-softmax; the sigmoid one wraps ``torchvision.ops.sigmoid_focal_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Refuse a reduction other than ``mean``, ``sum`` or ``none``."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"loss.reduction={reduction!r} is not valid; choose one of {', '.join(REDUCTIONS)}."
        )


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``mean``, ``sum`` or ``none`` to a tensor of per-element losses."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    """Multiclass focal loss on logits (guide section 1.2.5, Lin et al. 2017).

    ``L = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t = softmax(z)_y`` the probability of the
    true class. ``log p_t`` comes from log-softmax (a log-sum-exp, so large logits are safe) and
    ``1 - p_t`` from ``-expm1(log p_t)``, exact even when ``p_t`` rounds to 1.

    Args:
        alpha: class weights ``alpha_t``: one float for all classes, one float per class, or
            ``None`` for no weighting.
        gamma: focusing exponent; ``gamma = 0`` gives (weighted) cross entropy.
        reduction: ``mean`` (plain mean over elements, not weighted by ``alpha``), ``sum`` or
            ``none``.
    """

    alpha: torch.Tensor | None

    def __init__(
        self,
        alpha: float | Sequence[float] | None = None,
        gamma: float = 2.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        if gamma < 0:
            raise ValueError(f"loss.gamma={gamma} must be >= 0 (0 gives cross entropy).")
        if alpha is None:
            self.register_buffer("alpha", None)
        elif isinstance(alpha, (int, float)):
            self.register_buffer("alpha", torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor([float(a) for a in alpha]))
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Focal loss of ``(B, K, ...)`` logits against ``(B, ...)`` integer classes."""
        log_p = F.log_softmax(logits, dim=1)
        log_p_t = log_p.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, ...)
        loss = -log_p_t

        if self.gamma != 0:
            # the clamp keeps d/dp (1 - p_t)^gamma finite for gamma < 1 once p_t rounds to 1
            one_minus_p_t = (-torch.expm1(log_p_t)).clamp_min(torch.finfo(log_p_t.dtype).tiny)
            loss = loss * one_minus_p_t.pow(self.gamma)

        if self.alpha is not None:
            alpha_t = self.alpha if self.alpha.dim() == 0 else self.alpha[target]
            loss = alpha_t.to(loss.dtype) * loss

        return reduce(loss, self.reduction)


class SigmoidFocalLoss(nn.Module):
    """Binary / multi-label focal loss on logits (guide 1.2.5), RetinaNet's form.

    ``L = -alpha_t (1 - p_t)^gamma log p_t`` per element, with ``p = sigmoid(z)``,
    ``p_t = p`` where the target is 1 and ``1 - p`` where it is 0, and ``alpha_t = alpha`` for
    positives, ``1 - alpha`` for negatives. Delegates to ``torchvision.ops.sigmoid_focal_loss``,
    whose ``log p_t`` is binary cross entropy with logits (stable for large ``|z|``).

    Args:
        alpha: weight of the positive class in [0, 1], or ``None`` for no weighting.
        gamma: focusing exponent; ``gamma = 0`` gives (weighted) BCE with logits.
        reduction: ``mean``, ``sum`` or ``none``.
    """

    def __init__(
        self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"loss.alpha={alpha} must lie in [0, 1], or be null for no weight.")
        if gamma < 0:
            raise ValueError(f"loss.gamma={gamma} must be >= 0 (0 gives BCE with logits).")
        self.alpha = alpha
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Focal loss of logits against 0/1 targets of the same shape."""
        # torchvision spells "no class weighting" as alpha = -1
        alpha = -1.0 if self.alpha is None else self.alpha
        return sigmoid_focal_loss(
            logits,
            target.to(logits.dtype),
            alpha=alpha,
            gamma=self.gamma,
            reduction=self.reduction,
        )
