"""Shared set-up for the task tests: one thread, composed configs, short in-process runs.

Test modules here use these fixtures rather than importing helpers: pytest loads every
``conftest.py`` under the one module name ``conftest``, so a ``from conftest import`` would find
whichever was loaded last.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from curvlab.config import CONFIG_DIR
from curvlab.models import MLP
from curvlab.training.build import RunParts, build_parts, build_trainer


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread, then restore the previous count.

    On the shared 2-core machine, two threads made a ViT step ten times slower than one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The root training config with ``overrides``, composed as the CLI would.

    ``with_hydra`` keeps Hydra's own node, whose ``runtime.choices`` names each group's pick.
    """
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=with_hydra)


@pytest.fixture
def choices() -> Callable[..., DictConfig]:
    """``choices(*overrides)``: the option each config group resolves to."""

    def pick(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), with_hydra=True).hydra.runtime.choices

    return pick


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``config(*overrides)``: the composed config, writing under ``tmp_path``."""

    def make(*overrides: str) -> DictConfig:
        return compose_config([*overrides, f"paths.output_dir={tmp_path}"])

    return make


@dataclass
class Fitted:
    """A finished in-process run: its parts and the test metrics of its best checkpoint."""

    parts: RunParts
    test: dict[str, float]
    best_checkpoint: str


def fit_run(cfg: DictConfig, loss_name: str) -> Fitted:
    """Train ``cfg`` without MLflow, then test its best checkpoint (by validation loss)."""
    pl.seed_everything(cfg.seed, workers=True)
    parts = build_parts(cfg, loss_name)
    trainer = build_trainer(
        cfg, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    with warnings.catch_warnings():
        # Lightning's hints about worker processes and small logging intervals.
        warnings.simplefilter("ignore")
        trainer.fit(parts.module, datamodule=parts.datamodule)
        best = trainer.checkpoint_callback.best_model_path
        (results,) = trainer.test(
            parts.module, datamodule=parts.datamodule, ckpt_path=best, verbose=False
        )
    return Fitted(parts, {k: float(v) for k, v in results.items()}, best)


@pytest.fixture
def fit(config: Callable[..., DictConfig]) -> Callable[..., Fitted]:
    """``fit(loss, *overrides)``: a short run of ``loss=<loss>`` with the overrides."""

    def run(loss_name: str, *overrides: str) -> Fitted:
        return fit_run(config(*overrides, f"loss={loss_name}"), loss_name)

    return run


@pytest.fixture
def random_checkpoint(tmp_path: Path) -> str:
    """A curvlab checkpoint of an untrained digits MLP (10 classes), as training writes one."""
    torch.manual_seed(0)
    net = MLP((1, 8, 8), 10, hidden=[16])
    path = tmp_path / "random_mlp.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "curvlab": {
                "config": {"model": {"_target_": "curvlab.models.MLP", "hidden": [16]}},
                "input_shape": [1, 8, 8],
                "num_outputs": 10,
            },
        },
        path,
    )
    return str(path)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    """A trained digits classifier: its best checkpoint and its test accuracy.

    The default MLP ([128, 64]) trained 20 epochs with cross entropy, as
    ``curvlab-train experiment=classification`` does; about 5 s on one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher")
    cfg = compose_config(["experiment=classification", f"paths.output_dir={out}"])
    fitted = fit_run(cfg, "ce")
    torch.set_num_threads(previous)
    return fitted.best_checkpoint, fitted.test["test/acc"]
