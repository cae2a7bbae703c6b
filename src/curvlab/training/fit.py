"""One training run: build, track, fit, test, and upload the best checkpoint."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from curvlab.launch import lightning_topology
from curvlab.models import ViT
from curvlab.models.cost import vit_cost_params
from curvlab.tracking.mlflow_run import (
    log_checkpoint,
    log_params,
    make_logger,
    record_run_setup,
    resolve_tracking_uri,
)
from curvlab.training.build import ConfigError, build_parts, build_trainer
from curvlab.training.checkpoints import read_curvlab_state, resolve_ckpt_path

log = logging.getLogger(__name__)


def train(cfg: DictConfig, loss_name: str | None, overrides: list[str]) -> float | None:
    """Fit the configured run and return its final validation loss (for sweepers)."""
    pl.seed_everything(cfg.seed, workers=True)

    # Under torchrun the process layout is torchrun's: the user never sets it twice.
    topology = lightning_topology()
    if topology is not None:
        with open_dict(cfg):
            cfg.trainer.devices, cfg.trainer.num_nodes = topology

    # Everything that can be refused is checked before an MLflow run exists.
    try:
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir)
        run_id = read_curvlab_state(ckpt_path).get("mlflow_run_id") if ckpt_path else None
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err
    parts = build_parts(cfg, loss_name)
    try:
        logger = make_logger(cfg.logger, run_id=run_id)
    except ConnectionError as err:
        raise ConfigError(str(err)) from err
    trainer = build_trainer(cfg, logger)

    record_run_setup(logger, cfg, overrides, resumed=run_id is not None)
    if isinstance(parts.model, ViT) and run_id is None:
        log_params(
            logger, vit_cost_params(parts.model, cfg.data.batch_size, cfg.trainer.precision)
        )
    if trainer.is_global_zero:
        parts.module.checkpoint_extra["mlflow_run_id"] = logger.run_id
        uri = resolve_tracking_uri(cfg.logger.tracking_uri)
        parts.module.checkpoint_extra["mlflow_tracking_uri"] = uri
        rank_zero_info(f"MLflow run {logger.run_id} at {uri}")

    trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path)

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if cfg.test_after_fit:
        trainer.test(parts.module, datamodule=parts.datamodule, ckpt_path=best or None)
    if best and cfg.logger.log_checkpoint:
        log_checkpoint(logger, best)

    val_loss = trainer.callback_metrics.get("val/loss")
    return float(val_loss) if val_loss is not None else None
