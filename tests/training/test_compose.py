"""Every config group composes, and every entry instantiates to what it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.config import CONFIG_DIR
from curvlab.training.build import ConfigError, build_parts, build_trainer
from curvlab_testing import compose_train

GROUPS = (
    "data",
    "task",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "paths",
    "hydra",
)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_every_group_is_a_folder_with_entries() -> None:
    for group in GROUPS:
        assert (Path(CONFIG_DIR) / group).is_dir(), group
    assert {"digits", "files"} <= set(_options("data"))
    assert {"mlp", "vit"} <= set(_options("model"))
    assert {"ce", "mse"} <= set(_options("loss"))
    assert {"sgd", "adam", "adamw"} <= set(_options("optimizer"))


def test_every_default_carries_a_comment() -> None:
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # A "key: value" line (not a mapping opener, list item or comment) explains itself.
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-")) or stripped.endswith(":"):
                continue
            if stripped.startswith(("_target_:", "_partial_:")):
                continue
            assert "#" in line, f"{path.relative_to(CONFIG_DIR)}:{number} has no comment: {line}"


@pytest.mark.parametrize("group", ["model", "optimizer", "scheduler", "loss", "trainer", "task"])
def test_each_entry_composes_and_instantiates(group: str, tmp_path: Path) -> None:
    for option in _options(group):
        cfg = compose_train([f"{group}={option}", f"paths.output_dir={tmp_path}"])
        node = cfg[group]
        # Models need data shapes (tested below); some entries need a path the user gives.
        if not node or group == "model" or OmegaConf.missing_keys(node):
            continue
        obj = instantiate(
            node,
            **({"params": [torch.nn.Parameter(torch.zeros(2))]} if group == "optimizer" else {}),
        )
        if group == "scheduler":
            optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            obj(optimizer=optimizer, total_steps=10)
        assert obj is not None


@pytest.mark.parametrize("model", ["mlp", "guide_mlp", "vit"])
def test_fast_dev_run_trains(model: str, tmp_path: Path) -> None:
    cfg = compose_train([f"model={model}", f"paths.output_dir={tmp_path}", "optimizer=sgd"])
    parts = build_parts(cfg, "ce")
    before = [p.detach().clone() for p in parts.model.parameters()]

    trainer = build_trainer(cfg, logger=False, fast_dev_run=True, enable_progress_bar=False)
    trainer.fit(parts.module, datamodule=parts.datamodule)

    after = list(parts.model.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0


def test_vit_refuses_heads_that_do_not_divide_d(tmp_path: Path) -> None:
    cfg = compose_train(["model=vit", "model.embed_dim=100", "model.num_heads=3"])
    with pytest.raises(ConfigError, match=r"model.embed_dim=100.*model.num_heads=3"):
        build_parts(cfg, "ce")


def test_vit_refuses_patches_that_do_not_tile(tmp_path: Path) -> None:
    cfg = compose_train(["model=vit", "model.patch_size=3"])
    with pytest.raises(ConfigError, match=r"model.patch_size=3.*image size 8"):
        build_parts(cfg, "ce")


def test_files_data_trains_like_digits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=120)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    cfg = compose_train(
        [
            "data=files",
            f"data.path={tmp_path / 'data.npz'}",
            "data.batch_size=16",
            "model=vit",
            f"paths.output_dir={tmp_path}",
        ]
    )

    parts = build_parts(cfg, "ce")

    assert parts.datamodule.input_shape == (3, 4, 4)
    assert parts.model(torch.zeros(2, 3, 4, 4)).shape == (2, 3)
    pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False).fit(
        parts.module, datamodule=parts.datamodule
    )


@pytest.mark.parametrize("optimizer", _options("optimizer"))
def test_every_optimizer_takes_a_training_step(optimizer: str, tmp_path: Path) -> None:
    cfg = compose_train([f"optimizer={optimizer}", f"paths.output_dir={tmp_path}"])
    parts = build_parts(cfg, "ce")
    before = [p.detach().clone() for p in parts.model.parameters()]

    trainer = build_trainer(cfg, logger=False, fast_dev_run=2, enable_progress_bar=False)
    trainer.fit(parts.module, datamodule=parts.datamodule)

    moved = [not torch.equal(b, a) for b, a in zip(before, parts.model.parameters(), strict=True)]
    assert all(moved), optimizer
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
