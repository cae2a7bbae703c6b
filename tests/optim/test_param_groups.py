"""Parameter groups built from conf/param_groups, checked group by group."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from curvlab.config import CONFIG_DIR
from curvlab.models.vit import ViT
from curvlab.optim import Lamb, ParamGroupsConfig, build_optimizer

DEFAULT_YAML = Path(CONFIG_DIR) / "param_groups" / "default.yaml"

VIT_REGULAR = {
    "net.patch_embed.proj.weight",
    "net.blocks.0.attn.qkv.weight",
    "net.blocks.0.attn.proj.weight",
    "net.blocks.0.mlp.fc1.weight",
    "net.blocks.0.mlp.fc2.weight",
    "net.head.weight",
}
VIT_EXCLUDED = {
    "net.cls_token",
    "net.pos_embed",
    "net.patch_embed.proj.bias",
    "net.blocks.0.norm1.weight",
    "net.blocks.0.norm1.bias",
    "net.blocks.0.attn.qkv.bias",
    "net.blocks.0.attn.proj.bias",
    "net.blocks.0.norm2.weight",
    "net.blocks.0.norm2.bias",
    "net.blocks.0.mlp.fc1.bias",
    "net.blocks.0.mlp.fc2.bias",
    "net.norm.weight",
    "net.norm.bias",
    "net.head.bias",
}


def vit() -> ViT:
    return ViT((1, 8, 8), 10, patch_size=4, embed_dim=8, depth=1, num_heads=2)


def optimizer_from_yaml(name: str) -> partial:
    return hydra.utils.instantiate(OmegaConf.load(Path(CONFIG_DIR) / "optimizer" / f"{name}.yaml"))


def names(group: dict) -> set[str]:
    return set(group["param_names"])


def test_default_yaml_matches_the_code_defaults() -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(DEFAULT_YAML))

    assert ParamGroupsConfig.from_mapping(cfg) == ParamGroupsConfig()


def test_vit_under_lamb_splits_weights_from_biases_norms_and_embeddings() -> None:
    model = vit()
    opt = build_optimizer(model, optimizer_from_yaml("lamb"), OmegaConf.load(DEFAULT_YAML))
    regular, excluded = opt.param_groups

    assert isinstance(opt, Lamb)
    assert names(regular) == VIT_REGULAR
    assert names(excluded) == VIT_EXCLUDED
    assert (regular["weight_decay"], regular["layer_adaptation"]) == (0.01, True)
    assert (excluded["weight_decay"], excluded["layer_adaptation"]) == (0.0, False)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_adamw_gets_only_the_weight_decay_override() -> None:
    regular, excluded = build_optimizer(vit(), optimizer_from_yaml("adamw"), None).param_groups

    assert names(regular) == VIT_REGULAR and names(excluded) == VIT_EXCLUDED
    assert (regular["weight_decay"], excluded["weight_decay"]) == (0.01, 0.0)
    assert "layer_adaptation" not in excluded and "layer_adaptation" not in regular


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adagrad", "adam"])
def test_zero_weight_decay_needs_no_split(name: str) -> None:
    (group,) = build_optimizer(vit(), optimizer_from_yaml(name), None).param_groups

    assert names(group) == VIT_REGULAR | VIT_EXCLUDED
    assert group["weight_decay"] == 0.0


def test_a_decayed_sgd_splits() -> None:
    factory = hydra.utils.instantiate(
        OmegaConf.merge(
            OmegaConf.load(Path(CONFIG_DIR) / "optimizer" / "sgd.yaml"), {"weight_decay": 1e-4}
        )
    )
    regular, excluded = build_optimizer(vit(), factory, None).param_groups

    assert names(excluded) == VIT_EXCLUDED
    assert (regular["weight_decay"], excluded["weight_decay"]) == (1e-4, 0.0)


def test_an_optimizer_without_weight_decay_gets_one_group() -> None:
    model = vit()
    opt = build_optimizer(model, partial(torch.optim.Rprop, lr=0.01), None)

    assert len(opt.param_groups) == 1
    assert names(opt.param_groups[0]) == VIT_REGULAR | VIT_EXCLUDED
    assert "weight_decay" not in opt.param_groups[0]


class WholeModelOptimizer(torch.optim.SGD):
    """Stands in for NewtonCG: built with the model, it needs one group of all parameters."""

    def __init__(self, params: list, model: nn.Module, weight_decay: float = 0.1) -> None:
        super().__init__(params, lr=0.1, weight_decay=weight_decay)
        assert len(self.param_groups) == 1
        assert all(isinstance(p, torch.Tensor) for p in self.param_groups[0]["params"])
        self.model = model


def test_an_optimizer_taking_the_model_gets_one_plain_group() -> None:
    model = vit()
    opt = build_optimizer(model, partial(WholeModelOptimizer, model=model), None)

    assert opt.param_groups[0]["params"] == list(model.parameters())
    assert opt.param_groups[0]["weight_decay"] == 0.1


def test_embeddings_can_be_decayed_and_adaptation_kept_for_excluded_tensors() -> None:
    cfg = {"exclude_names": [], "use_model_hints": False, "no_layer_adaptation": False}
    opt = build_optimizer(vit(), optimizer_from_yaml("lamb"), cfg)
    regular, excluded = opt.param_groups

    embeddings = {"net.cls_token", "net.pos_embed"}
    assert names(regular) == VIT_REGULAR | embeddings
    assert names(excluded) == VIT_EXCLUDED - embeddings
    assert (excluded["weight_decay"], excluded["layer_adaptation"]) == (0.0, True)


def test_model_hints_alone_exclude_the_embeddings() -> None:
    cfg = {"exclude_names": [], "use_model_hints": True}
    regular, excluded = build_optimizer(vit(), optimizer_from_yaml("lamb"), cfg).param_groups

    assert names(regular) == VIT_REGULAR and names(excluded) == VIT_EXCLUDED


class Toy(nn.Module):
    """One parameter per rule, plus a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.gamma = nn.Parameter(torch.ones(4))  # 1-D, not in a norm module
        self.table = nn.Parameter(torch.zeros(3, 4))  # 2-D, listed by no_weight_decay()
        self.frozen = nn.Linear(2, 2).requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"table"}


@pytest.mark.parametrize(
    ("cfg", "excluded"),
    [
        ({}, {"lin.bias", "ln.weight", "ln.bias", "bn.weight", "bn.bias", "gamma", "table"}),
        (
            {"exclude_biases": False, "exclude_1d": False},
            {"ln.weight", "ln.bias", "bn.weight", "bn.bias", "table"},
        ),
        (
            {"exclude_norms": False, "exclude_1d": False},
            {"lin.bias", "ln.bias", "bn.bias", "table"},
        ),
        (
            {"use_model_hints": False, "exclude_1d": False},
            {"lin.bias", "ln.weight", "ln.bias", "bn.weight", "bn.bias"},
        ),
        (
            {
                "exclude_biases": False,
                "exclude_norms": False,
                "exclude_1d": False,
                "use_model_hints": False,
            },
            set(),
        ),
    ],
    ids=["defaults", "no bias or 1-D rule", "no norm or 1-D rule", "no hints", "nothing"],
)
def test_each_rule_adds_exactly_its_parameters(cfg: dict, excluded: set[str]) -> None:
    groups = build_optimizer(Toy(), optimizer_from_yaml("adamw"), cfg).param_groups
    trainable = {
        "lin.weight",
        "lin.bias",
        "ln.weight",
        "ln.bias",
        "bn.weight",
        "bn.bias",
        "gamma",
        "table",
    }

    by_decay = {g["weight_decay"]: names(g) for g in groups}
    assert by_decay.get(0.0, set()) == excluded
    assert by_decay[0.01] == trainable - excluded


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="exclude_bias"):
        build_optimizer(Toy(), optimizer_from_yaml("adamw"), {"exclude_bias": False})
