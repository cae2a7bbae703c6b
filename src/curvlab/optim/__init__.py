"""Optimizers, parameter groups and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, optimizer_factory: Callable[..., torch.optim.Optimizer]
) -> torch.optim.Optimizer:
    """Complete a partial optimizer config with the model's parameters."""
    return optimizer_factory(params=[p for p in model.parameters() if p.requires_grad])
