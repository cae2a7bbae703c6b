"""Knowledge distillation through the KL divergence of guide section 1.2.7 (Hinton et al. 2015).

A student matches a frozen teacher's softened class distribution as well as the hard labels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DistillationLoss(nn.Module):
    """KL divergence to a teacher at temperature ``T`` plus cross entropy on the labels.

    ``L = alpha * T^2 * D_KL(P || Q) + (1 - alpha) * CE(z_s, y)``, where
    ``P = softmax(z_t / T)`` (teacher), ``Q = softmax(z_s / T)`` (student) and
    ``D_KL(P || Q) = sum_i P(i) log(P(i) / Q(i))`` (guide 1.2.7), averaged over the batch.
    ``T^2`` keeps the soft term's gradients on the scale of the hard term's as ``T`` grows.
    Both distributions enter as log-softmax, so ``Q ≈ 0`` never takes the log of 0.

    Call it as ``loss(student_logits, (teacher_logits, labels))`` with ``(B, K)`` logits and
    ``(B,)`` integer labels; ``loss(student_logits, teacher_logits)`` is allowed when
    ``alpha = 1`` (soft targets only). The teacher logits are treated as constants.

    Args:
        temperature: ``T > 0``; larger values soften both distributions.
        alpha: weight of the distillation term in [0, 1]; ``1 - alpha`` weighs the labels.
        label_smoothing: smoothing of the hard-label cross entropy.
    """

    def __init__(
        self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature={temperature} must be > 0.")
        if not 0 <= alpha <= 1:
            raise ValueError(f"loss.alpha={alpha} must lie in [0, 1].")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)

    def forward(
        self,
        student_logits: torch.Tensor,
        target: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """Distillation loss of ``(B, K)`` student logits against the teacher (and labels)."""
        if isinstance(target, torch.Tensor):
            teacher_logits, labels = target, None
        else:
            teacher_logits, labels = target
        if labels is None and self.alpha < 1:
            raise ValueError(
                f"loss.alpha={self.alpha} weighs hard labels, but the target holds only teacher "
                "logits; pass (teacher_logits, labels) or set loss.alpha=1."
            )

        T = self.temperature
        # the teacher is a fixed target: no gradient may flow back into it
        log_p = F.log_softmax(teacher_logits.detach() / T, dim=-1)  # log P
        log_q = F.log_softmax(student_logits / T, dim=-1)  # log Q
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        loss = self.alpha * T**2 * kl

        if labels is not None and self.alpha < 1:
            ce = F.cross_entropy(student_logits, labels, label_smoothing=self.label_smoothing)
            loss = loss + (1 - self.alpha) * ce

        return loss
