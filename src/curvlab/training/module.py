"""The LightningModule: one model, one loss, one task, an optimizer and a schedule."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from curvlab.optim import build_optimizer
from curvlab.tasks import Task

Batch = tuple[torch.Tensor, torch.Tensor]


class CurvlabModule(pl.LightningModule):
    """Trains ``model`` on ``task`` with ``loss_fn``; the optimizer and schedule are partials.

    Args:
        model: the network; its output width must fit the task.
        loss_fn: called through ``task.compute_loss(loss_fn, outputs, targets)``.
        task: what is predicted and how it is scored.
        optimizer: a partial optimizer, completed with the model's parameters.
        scheduler: a partial schedule taking ``optimizer`` and ``total_steps``, stepped once per
            optimizer step, or None for a constant rate.
        param_groups: which parameters skip weight decay and layer adaptation (the
            ``conf/param_groups`` entry); None keeps curvlab's defaults.
        checkpoint_extra: stored under ``checkpoint["curvlab"]`` (config, shapes, run id), so a
            checkpoint can rebuild its model and find its MLflow run.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        task: Task,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        param_groups: Mapping[str, Any] | None = None,
        checkpoint_extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_groups = param_groups
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.val_metrics = task.metrics().clone(prefix="val/")
        self.test_stage = "test"
        self.test_metrics = task.metrics().clone(prefix="test/")

    def rename_test_stage(self, stage: str) -> None:
        """Log ``trainer.test`` results as ``<stage>/*`` (e.g. ``eval/*`` for curvlab-eval)."""
        self.test_stage = stage
        self.test_metrics = self.task.metrics().clone(prefix=f"{stage}/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def objective(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The scalar loss the optimizer minimises (used by curvature probes too)."""
        return self.task.compute_loss(self.loss_fn, outputs, targets)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.objective(self.model(x), y)

        # The logger keeps every log_every_n_steps-th value only; self.log on the other steps
        # would be bookkeeping for nothing (about a millisecond a step on a slow CPU).
        if self._logs_this_step():
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/lr", lr, on_step=True, on_epoch=False)
        return loss

    def _logs_this_step(self) -> bool:
        # Lightning's own rule for writing step metrics to the logger.
        trainer = self.trainer
        if trainer.fast_dev_run:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and ((self.global_step + 1) % every == 0 or trainer.should_stop)

    def _evaluate(self, batch: Batch, stage: str, metrics: Any) -> None:
        x, y = batch
        outputs = self.model(x)
        loss = self.objective(outputs, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, prog_bar=stage == "val")
        self.task.update_metrics(metrics, outputs, y)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_stage, self.test_metrics)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # Second-order optimizers (Newton-CG) take curvature products on the step's own batch.
        optimizer = self.optimizers().optimizer
        if hasattr(optimizer, "set_batch"):
            optimizer.set_batch(batch)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory
        # Optimizers built around the network (Newton-CG) also get it and the objective.
        if "model" in inspect.signature(factory).parameters:
            factory = functools.partial(factory, model=self.model, loss_fn=self.objective)
        optimizer = build_optimizer(self.model, factory, self.param_groups)
        if self.scheduler_factory is None:
            return optimizer

        # Schedules that decay to an end need the run's length in optimizer steps.
        kwargs: dict[str, Any] = {"optimizer": optimizer}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(**kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["curvlab"] = dict(self.checkpoint_extra)
