"""Learning rate for a larger global batch, scaled from a rate tuned at a base batch.

Rules, with k = batch / base_batch:

- ``linear``: lr = base_lr * k. Plain SGD: k times the batch averages the gradient over k times
  the examples, so one step stands in for k small ones (Goyal et al., 2017).
- ``sqrt``: lr = base_lr * sqrt(k). Adaptive methods (Adam, AdamW, LAMB): the gradient noise
  falls as 1 / sqrt(batch), and You et al. (ICLR 2020, section 4) scale LAMB's rate this way.
- ``none``: lr = base_lr.
- ``auto``: ``linear`` for SGD-type optimizers (torch.optim.SGD, curvlab's Momentum), ``sqrt``
  for every other optimizer; needs the optimizer's ``_target_``.

Importing this module registers the OmegaConf resolver ``scale_lr``, so a config can say
``lr: ${scale_lr:${lr_scaling.base_lr},${lr_scaling.base_batch},${data.batch_size},sqrt}``.
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

RULES = ("linear", "sqrt", "none", "auto")

# Optimizers whose step is a plain (averaged) gradient step and so follows the linear rule.
_LINEAR_TARGETS = ("torch.optim.SGD", "curvlab.optim.momentum.Momentum", "curvlab.optim.Momentum")


def rule_for(optimizer_target: str) -> str:
    """The ``auto`` rule: ``linear`` for SGD-type optimizers, ``sqrt`` for adaptive ones."""
    return "linear" if optimizer_target in _LINEAR_TARGETS else "sqrt"


def scale_lr(
    base_lr: float,
    base_batch: int,
    batch: int,
    rule: str = "sqrt",
    optimizer_target: str | None = None,
) -> float:
    """Learning rate for ``batch`` given ``base_lr`` tuned at ``base_batch``.

    Args:
        base_lr: rate known to work at ``base_batch``.
        base_batch: global batch size ``base_lr`` was tuned for.
        batch: global batch size of this run (all processes together).
        rule: ``linear``, ``sqrt``, ``none`` or ``auto``.
        optimizer_target: the optimizer config's ``_target_``; required by ``auto``.

    Returns:
        The scaled learning rate.
    """
    if base_batch <= 0 or batch <= 0:
        raise ValueError(f"batch sizes must be positive, got base {base_batch}, batch {batch}")
    if rule not in RULES:
        raise ValueError(f"unknown scaling rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == "auto":
        if optimizer_target is None:
            raise ValueError("rule=auto needs the optimizer's _target_ as the fifth argument")
        rule = rule_for(optimizer_target)

    k = batch / base_batch
    factor = {"linear": k, "sqrt": math.sqrt(k), "none": 1.0}[rule]
    return float(base_lr) * factor


if not OmegaConf.has_resolver("scale_lr"):
    OmegaConf.register_new_resolver("scale_lr", scale_lr)
