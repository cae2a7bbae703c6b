"""Optimizers, parameter groups and learning-rate schedules (guide section 1.3)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from curvlab.optim import scaling  # noqa: F401  (registers the ${scale_lr:...} resolver)
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
    where the optimizer takes that argument and it changes something (no group split for a
    weight decay of 0). An optimizer whose constructor takes the ``model`` (NewtonCG) gets one
    plain list of all trainable parameters.

    Args:
        model: the module to optimize; only parameters with ``requires_grad`` are included.
        optimizer_factory: the instantiated ``_partial_`` optimizer config.
        param_groups_cfg: exclusion rules; None uses ``ParamGroupsConfig()``.

    Returns:
        The optimizer, its groups holding ``(name, parameter)`` pairs (``param_names`` set).
    """
    cfg = ParamGroupsConfig.from_mapping(param_groups_cfg)
    signature = inspect.signature(optimizer_factory).parameters

    # Optimizers built around the whole network (e.g. NewtonCG) take one group of everything.
    if "model" in signature:
        return optimizer_factory(params=[p for p in model.parameters() if p.requires_grad])

    # A weight-decay override only matters where the configured decay is non-zero.
    decay = signature["weight_decay"].default if "weight_decay" in signature else 0.0
    accepted = {name for name in signature if name != "weight_decay" or decay != 0.0}
    return optimizer_factory(params=build_param_groups(model, cfg, accepted))
