"""Evaluating a finished checkpoint with the config stored inside it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from curvlab.tracking.mlflow_run import make_logger
from curvlab.training.build import ConfigError, build_parts
from curvlab.training.checkpoints import read_curvlab_state

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the checkpoint's run, evaluate it on ``cfg.split``, return the metrics."""
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist; give a .ckpt file.")
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} is not valid; choose test or val.")
    try:
        state = read_curvlab_state(path)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    run_cfg = OmegaConf.create(state["config"])
    if cfg.batch_size is not None:
        run_cfg.data.batch_size = cfg.batch_size
    parts = build_parts(run_cfg, state.get("loss_name"))
    parts.module.rename_test_stage("eval")

    # The run lives where the checkpoint's training logged it, unless told otherwise.
    logger_cfg = cfg.logger.copy()
    logger_cfg.tracking_uri = logger_cfg.tracking_uri or state.get("mlflow_tracking_uri")
    run_id = state.get("mlflow_run_id") if cfg.log_to_run else None
    logger = make_logger(logger_cfg, run_id=run_id) if run_id else False
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=logger, enable_checkpointing=False)
    dataloader = (
        parts.datamodule.test_dataloader()
        if cfg.split == "test"
        else parts.datamodule.val_dataloader()
    )
    (results,) = trainer.test(parts.module, dataloaders=dataloader, ckpt_path=str(path))
    return {name: float(value) for name, value in results.items()}
