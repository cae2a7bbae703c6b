"""Every conf/loss entry: present, documented, and instantiated with its hyperparameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from curvlab import losses
from curvlab.models import MLP

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"

CATALOGUE = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
    "bce": nn.BCELoss,
    "bce_logits": nn.BCEWithLogitsLoss,
    "ce": nn.CrossEntropyLoss,
    "focal": losses.FocalLoss,
    "focal_binary": losses.SigmoidFocalLoss,
    "dice": losses.DiceLoss,
    "iou": losses.IoULoss,
    "dice_bce": losses.DiceBCELoss,
    "kl_div": losses.DistillationLoss,
    "triplet": losses.BatchTripletLoss,
    "contrastive": losses.ContrastiveLoss,
    "cosine_embedding": losses.BatchCosineEmbeddingLoss,
    "perceptual": losses.PerceptualLoss,
    "total_variation": losses.TotalVariationLoss,
}

# where a wrapper keeps a hyperparameter that is not a plain attribute
NESTED = {("dice_bce", "smooth"): "dice", ("dice_bce", "per_image"): "dice"}
NESTED[("cosine_embedding", "margin")] = "criterion"
NOT_STORED = {("perceptual", "checkpoint_path"), ("perceptual", "weights_only")}
# null defaults that the loss resolves: the one hidden layer of the checkpoint's MLP
RESOLVED = {("perceptual", "layers"): ["layers.0"], ("perceptual", "layer_weights"): [1.0]}


def perceptual_checkpoint(path: Path) -> str:
    net = MLP((4,), 2, hidden=[3])
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "curvlab": {
                "config": {"model": {"_target_": "curvlab.models.MLP", "hidden": [3]}},
                "input_shape": [4],
                "num_outputs": 2,
            },
        },
        path,
    )
    return str(path)


def test_the_catalogue_is_complete() -> None:
    assert {p.stem for p in CONF.glob("*.yaml")} == set(CATALOGUE)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_default_is_commented_and_the_guide_named(name: str) -> None:
    lines = (CONF / f"{name}.yaml").read_text().splitlines()

    assert lines[0].startswith("# ") and "guide" in " ".join(lines[:3])
    for line in lines:
        if re.match(r"^\w+:", line) and not line.startswith("_target_"):
            assert " # " in line, f"{name}.yaml: no comment on {line!r}"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_instantiates_with_the_configured_hyperparameters(name: str, tmp_path: Path) -> None:
    config = OmegaConf.load(CONF / f"{name}.yaml")
    if name == "perceptual":
        config.checkpoint_path = perceptual_checkpoint(tmp_path / "phi.ckpt")

    loss = instantiate(config)

    assert type(loss) is CATALOGUE[name]
    for key, value in config.items():
        if key == "_target_" or (name, key) in NOT_STORED:
            continue
        owner = getattr(loss, NESTED[(name, key)]) if (name, key) in NESTED else loss
        expected = RESOLVED.get((name, key), value)
        assert getattr(owner, key) == expected, f"{name}.{key}"


def test_the_package_exports_what_the_configs_name() -> None:
    targets = {OmegaConf.load(p)._target_ for p in CONF.glob("*.yaml")}
    ours = {t.rsplit(".", 1)[1] for t in targets if t.startswith("curvlab.losses.")}

    assert ours <= set(losses.__all__)
