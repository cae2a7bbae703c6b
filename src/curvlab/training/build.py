"""Turn a composed Hydra config into the parts of a run, refusing bad input up front.

Every check here runs before a tracking run is created or a step is taken, so a typo or an
impossible combination costs seconds and leaves nothing half-written behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from torch import nn

from curvlab.data import ArrayDataModule
from curvlab.tasks import Task
from curvlab.training.module import CurvlabModule


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the valid choices."""


@dataclass
class RunParts:
    """What a run trains and on what."""

    datamodule: ArrayDataModule
    task: Task
    model: nn.Module
    module: CurvlabModule


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with the cause of a failure surfaced as a ConfigError."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, FileNotFoundError, TypeError)):
            raise ConfigError(str(cause)) from err
        raise ConfigError(f"{key}: {err}") from err
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err


def _optional(node: DictConfig | None) -> DictConfig | None:
    """A group entry such as ``scheduler=none`` composes to an empty node: no object."""
    return node if node else None


def build_parts(
    cfg: DictConfig, loss_name: str | None, checkpoint_extra: dict[str, Any] | None = None
) -> RunParts:
    """Instantiate data, task, model, loss, optimizer and schedule from ``cfg``.

    Args:
        cfg: the composed root config (conf/train.yaml).
        loss_name: the chosen ``conf/loss`` entry, checked against the task's fitting losses.
        checkpoint_extra: stored in every checkpoint of the run (see ``CurvlabModule``).
    """
    datamodule = _instantiate(cfg.data, "data", seed=cfg.seed)
    task = _instantiate(cfg.task, "task")
    try:
        task.check_loss(loss_name)
        num_outputs = task.setup(datamodule)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    model = _instantiate(
        cfg.model, "model", input_shape=datamodule.input_shape, num_outputs=num_outputs
    )
    # The task may put a head on the network (a mask decoder); checkpoints hold the result.
    model = task.wrap_model(model)
    loss_fn = _instantiate(cfg.loss, "loss")
    optimizer = _instantiate(cfg.optimizer, "optimizer")
    scheduler_cfg = _optional(cfg.get("scheduler"))
    scheduler = _instantiate(scheduler_cfg, "scheduler") if scheduler_cfg else None

    extra = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "input_shape": list(datamodule.input_shape),
        "num_outputs": num_outputs,
        "loss_name": loss_name,
        **(checkpoint_extra or {}),
    }
    param_groups = cfg.get("param_groups")
    module = CurvlabModule(
        model,
        loss_fn,
        task,
        optimizer,
        scheduler,
        param_groups=OmegaConf.to_container(param_groups, resolve=True) if param_groups else None,
        checkpoint_extra=extra,
    )
    return RunParts(datamodule=datamodule, task=task, model=model, module=module)


def build_trainer(cfg: DictConfig, logger: Any, **overrides: Any) -> pl.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` with the configured callbacks."""
    callbacks = [
        _instantiate(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None
    ]
    # trainer.enable_progress_bar=false is the one switch for quiet logs: the configured bar
    # goes with it (Lightning refuses a bar callback on a trainer without one).
    if not overrides.get("enable_progress_bar", cfg.trainer.get("enable_progress_bar", True)):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return _instantiate(cfg.trainer, "trainer", logger=logger, callbacks=callbacks, **overrides)
