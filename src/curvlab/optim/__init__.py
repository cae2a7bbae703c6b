"""Optimizers, parameter groups and learning-rate schedules (guide section 1.3)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from curvlab.optim.lamb import Lamb
from curvlab.optim.momentum import Momentum
from curvlab.optim.param_groups import ParamGroupsConfig, build_param_groups

__all__ = ["Lamb", "Momentum", "ParamGroupsConfig", "build_optimizer", "build_param_groups"]


def build_optimizer(
    model: nn.Module,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    param_groups_cfg: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Complete a partial optimizer config with the model's parameter groups.

    Biases, normalisation weights, position embeddings and class tokens go into a group
    without weight decay and without LAMB's layer adaptation, as ``param_groups_cfg`` (the
    ``conf/param_groups`` entry; None means its defaults) decides. An override is only passed
    where the optimizer takes that argument.

    Args:
        model: the module to optimize; only parameters with ``requires_grad`` are included.
        optimizer_factory: the instantiated ``_partial_`` optimizer config.
        param_groups_cfg: exclusion rules; None uses ``ParamGroupsConfig()``.

    Returns:
        The optimizer, its groups holding ``(name, parameter)`` pairs (``param_names`` set).
    """
    cfg = ParamGroupsConfig.from_mapping(param_groups_cfg)
    accepted = inspect.signature(optimizer_factory).parameters
    return optimizer_factory(params=build_param_groups(model, cfg, accepted))
