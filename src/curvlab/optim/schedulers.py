"""Learning-rate schedules: linear warmup, then cosine, linear or polynomial decay.

Every schedule is stepped once per optimizer step and has the signature the training module
calls, ``factory(optimizer=opt, total_steps=n)``, with the remaining arguments bound by the
config. The rate used at optimizer step s (counting from 0) is base_lr * factor(s):

    s < W:  factor = (s + 1) / W                                    (warmup reaches 1 at s = W - 1)
    s >= W: p = min(1, (s - W) / (T - W)),  factor = rho + (1 - rho) * d(p)

with W warmup steps, T total steps, rho = ``min_lr_ratio`` and d the decay, 1 at p = 0 and 0 at
p = 1: cosine d(p) = (1 + cos(pi p)) / 2, linear d(p) = 1 - p, polynomial d(p) = (1 - p)^power.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def _warmup_then(
    decay: Callable[[float], float], total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"steps must be >= 0, got warmup {warmup_steps}, total {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay(progress)

    return factor


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` * base rate.

    Args:
        optimizer: the optimizer whose groups' ``lr`` is scheduled.
        total_steps: optimizer steps of the whole run; the decay ends there.
        warmup_steps: steps of linear warmup from base_lr / W to base_lr.
        min_lr_ratio: final rate as a fraction of each group's base rate.
    """
    decay = _warmup_then(
        lambda p: 0.5 * (1.0 + math.cos(math.pi * p)), total_steps, warmup_steps, min_lr_ratio
    )
    return LambdaLR(optimizer, decay)


def warmup_linear(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup over ``warmup_steps``, then linear decay to ``min_lr_ratio`` * base rate.

    Args:
        optimizer: the optimizer whose groups' ``lr`` is scheduled.
        total_steps: optimizer steps of the whole run; the decay ends there.
        warmup_steps: steps of linear warmup from base_lr / W to base_lr.
        min_lr_ratio: final rate as a fraction of each group's base rate.
    """
    decay = _warmup_then(lambda p: 1.0 - p, total_steps, warmup_steps, min_lr_ratio)
    return LambdaLR(optimizer, decay)


def warmup_polynomial(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    power: float = 2.0,
) -> LambdaLR:
    """Linear warmup over ``warmup_steps``, then (1 - p)^power decay to ``min_lr_ratio``.

    Args:
        optimizer: the optimizer whose groups' ``lr`` is scheduled.
        total_steps: optimizer steps of the whole run; the decay ends there.
        warmup_steps: steps of linear warmup from base_lr / W to base_lr.
        min_lr_ratio: final rate as a fraction of each group's base rate.
        power: exponent of the decay; 1 is linear, larger ones drop faster early on.
    """
    if power <= 0.0:
        raise ValueError(f"power must be positive, got {power}")
    decay = _warmup_then(lambda p: (1.0 - p) ** power, total_steps, warmup_steps, min_lr_ratio)
    return LambdaLR(optimizer, decay)
