"""Parameter groups: which tensors skip weight decay and LAMB's layer adaptation.

Decaying a bias, a normalisation scale, a position embedding or a class token pulls it towards
zero without regularising the function much, and the trust ratio of such small tensors is noisy;
the usual recipe (BERT, ViT, LAMB's paper) exempts them. A tensor is *excluded* when any enabled
rule matches it; excluded tensors then get ``weight_decay=0`` and/or
``layer_adaptation=False``, where the optimizer takes those arguments at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


@dataclass(frozen=True)
class ParamGroupsConfig:
    """The rules of ``conf/param_groups``; see ``default.yaml`` for each field."""

    exclude_biases: bool = True
    exclude_norms: bool = True
    exclude_1d: bool = True
    exclude_names: tuple[str, ...] = ("pos_embed", "cls_token", "reg_token", "dist_token")
    use_model_hints: bool = True
    no_weight_decay: bool = True
    no_layer_adaptation: bool = True

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ParamGroupsConfig:
        """Build from a (DictConfig or dict) mapping; missing keys keep their defaults."""
        if cfg is None:
            return cls()
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(
                f"unknown param_groups keys {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        kwargs = dict(cfg)
        if "exclude_names" in kwargs:
            kwargs["exclude_names"] = tuple(kwargs["exclude_names"] or ())
        return cls(**kwargs)


def excluded_names(model: nn.Module, cfg: ParamGroupsConfig) -> set[str]:
    """Names of the trainable parameters that the enabled rules exclude."""
    hinted: set[str] = set()
    if cfg.use_model_hints:
        # timm models list their embeddings in no_weight_decay(), relative to themselves.
        for prefix, module in model.named_modules():
            hint = getattr(module, "no_weight_decay", None)
            if callable(hint):
                hinted |= {f"{prefix}.{name}" if prefix else name for name in hint()}

    out = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for leaf, p in module.named_parameters(recurse=False):
            name = f"{module_name}.{leaf}" if module_name else leaf
            if not p.requires_grad:
                continue
            if (
                (cfg.exclude_biases and leaf == "bias")
                or (cfg.exclude_norms and is_norm)
                or (cfg.exclude_1d and p.ndim <= 1)
                or leaf in cfg.exclude_names
                or name in hinted
            ):
                out.add(name)
    return out


def build_param_groups(
    model: nn.Module, cfg: ParamGroupsConfig, accepted: Iterable[str]
) -> list[dict[str, Any]]:
    """Split the trainable parameters into a regular group and an excluded group.

    Args:
        model: the module whose parameters are optimized.
        cfg: the exclusion rules and what exclusion switches off.
        accepted: keyword arguments the optimizer takes; overrides outside it are not passed.

    Returns:
        Groups of ``(name, parameter)`` pairs in model order, the regular one first; empty
        groups are left out, and a single group is returned when nothing is overridden.
    """
    accepted = set(accepted)
    overrides: dict[str, Any] = {}
    if cfg.no_weight_decay and "weight_decay" in accepted:
        overrides["weight_decay"] = 0.0
    if cfg.no_layer_adaptation and "layer_adaptation" in accepted:
        overrides["layer_adaptation"] = False

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not overrides:
        return [{"params": named}]

    excluded = excluded_names(model, cfg)
    regular = [(n, p) for n, p in named if n not in excluded]
    exempt = [(n, p) for n, p in named if n in excluded]
    groups = []
    if regular:
        groups.append({"params": regular})
    if exempt:
        groups.append({"params": exempt, **overrides})

    if _is_rank_zero():
        log.info(
            "parameter groups: %d tensors (%d values) regular, %d tensors (%d values) with %s",
            len(regular),
            sum(p.numel() for _, p in regular),
            len(exempt),
            sum(p.numel() for _, p in exempt),
            ", ".join(f"{k}={v}" for k, v in overrides.items()),
        )
    return groups


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
