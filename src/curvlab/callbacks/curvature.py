"""A Lightning callback that tracks the curvature of the loss during training.

On a schedule it measures, on a fixed batch held out of the training stream, the sharpness
lambda_max (and the next eigenvalues), tr(H), the curvature along the gradient and the
stability figure of the optimizer in use (see :mod:`curvlab.callbacks.stability`), logs them
as ``curvature/*`` metrics and at the end of fitting draws sharpness against steps beside the
loss. Hessian-vector products follow guide sections 2.11 and 3.7.

Measurements leave no trace on training: they run on the unwrapped module through
``torch.autograd.grad`` (no ``.grad`` written), in eval mode, with the RNG state restored, so a
CPU run with a fixed seed ends with bit-identical weights whether the callback is on or off.
Under DDP each rank measures its contiguous shard of the batch and every product is
all-reduced, weighted by the shards' sizes, with probes from a seed shared by all ranks:
every rank holds the figures of the whole batch, and rank zero logs them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from curvlab.callbacks.measure import FIGURES, CurvatureProbe, Method, shard, shard_sum_reduce
from curvlab.callbacks.stability import StabilityRule, lamb_trust_ratios, stability_rule
from curvlab.curvature import check_second_order
from curvlab.optim import Lamb

PLOT_NAME = "sharpness.png"
# The loss curve of the plot keeps at most this many points (thinned by 2 whenever exceeded).
MAX_LOSS_POINTS = 4096
SOURCES = {"measurement": "held-out measurement batch", "train": "training split"}


class CurvatureCallback(pl.Callback):
    """Logs ``curvature/*`` figures every N steps or epochs, and a sharpness plot at the end.

    The LightningModule must expose the network as ``.model`` (else the module itself is
    measured) and the training loss as ``objective(outputs, targets)``; the datamodule must
    provide ``measurement_batch()``.

    Args:
        every_n_steps: measure after every this many optimizer steps; None: not by steps.
        every_n_epochs: measure after every this many training epochs; None: not by epochs.
        at_start: also measure once before the first step (step 0).
        at_end: also measure once when fitting ends, unless that step was just measured.
        max_overhead: skip a measurement due by the schedule (or at the end) if, at the cost
            of the previous one, it would bring the time spent measuring above this share of
            the training time so far; None measures on schedule whatever it costs. The first
            measurement is always taken.
        figures: which of ``lambda_max``, ``trace``, ``gradient_curvature``, ``stability``.
        top_k: eigenvalues logged (``curvature/lambda_max``, ``curvature/lambda_2``, ...).
        max_iter: cap on Lanczos steps (HVPs) per eigenvalue run.
        tol: relative Ritz residual at which Lanczos stops.
        trace_probes: Hutchinson probes (HVPs) per trace estimate.
        seed: seed of the start and probe vectors, shared by all ranks and measurements.
        warm_start: start each Lanczos run from the previous measurement's eigenvectors.
        method: HVP method, ``auto`` (R-operator for curvlab's MLP and ViT, else timed),
            ``rop``, ``reverse`` (double backward) or ``forward``.
        source: ``measurement`` (the datamodule's held-out batch) or ``train`` (the whole
            training split, for full-batch runs whose sharpness is that of the training loss).
        plot: draw the sharpness plot at the end of fitting and log it as an artifact.
        plot_dir: folder the PNG is written to; None writes it to a temporary folder, from
            which only an MLflow logger keeps it.
    """

    def __init__(
        self,
        every_n_steps: int | None = 100,
        every_n_epochs: int | None = None,
        at_start: bool = True,
        at_end: bool = True,
        max_overhead: float | None = 0.015,
        figures: list[str] | tuple[str, ...] = FIGURES,
        top_k: int = 1,
        max_iter: int = 20,
        tol: float = 1e-3,
        trace_probes: int = 10,
        seed: int = 0,
        warm_start: bool = True,
        method: Method = "auto",
        source: Literal["measurement", "train"] = "measurement",
        plot: bool = True,
        plot_dir: str | None = None,
    ) -> None:
        if every_n_steps is None and every_n_epochs is None and not (at_start or at_end):
            raise ValueError("CurvatureCallback: set every_n_steps or every_n_epochs.")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and value < 1:
                raise ValueError(f"CurvatureCallback: {name}={value} must be positive or null.")
        if max_overhead is not None and max_overhead <= 0:
            raise ValueError(f"CurvatureCallback: max_overhead={max_overhead} must be > 0.")
        if source not in ("measurement", "train"):
            raise ValueError(f"CurvatureCallback: source={source!r}; use measurement or train.")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.at_start = at_start
        self.at_end = at_end
        self.max_overhead = max_overhead
        self.source = source
        self.plot = plot
        self.plot_dir = plot_dir
        self.probe = CurvatureProbe(
            list(figures), top_k, max_iter, tol, trace_probes, seed, warm_start, method
        )
        self.records: list[dict[str, float]] = []
        self.losses: list[tuple[int, float]] = []
        self._pending_losses: list[tuple[int, Tensor]] = []
        self._loss_stride = 1
        self._batch: tuple[Tensor, Tensor] | None = None
        self._reduce = None
        self._trust_ratios: dict[str, float] | None = None
        self._trust_step = -1
        self._last_step = -1
        self._batch_idx = 0
        self._optimizer_name: str | None = None
        self._clock_start = 0.0
        self._spent = 0.0
        self._last_cost = 0.0
        self._warned: set[str] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Refuse a model without second derivatives before the first step, not at the first
        # measurement; the message names the fix (e.g. model.attention=math).
        try:
            check_second_order(_network(pl_module))
        except ValueError as err:
            from curvlab.training.build import ConfigError  # the CLI prints it as one line

            raise ConfigError(f"callbacks.curvature: {err}") from err

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock_start, self._spent, self._last_cost = time.perf_counter(), 0.0, 0.0
        if self.at_start and trainer.global_step == 0:
            self._measure(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # LAMB's trust ratios exist only inside its step: replay them before a measured step.
        wants = "stability" in self.probe.figures and isinstance(optimizer, Lamb)
        if wants and self._next_step_is_measured(trainer):
            self._trust_ratios = lamb_trust_ratios(optimizer)
            self._trust_step = trainer.global_step + 1

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor) and self.plot:
            self._record_loss(trainer.global_step, loss)

        # With gradient accumulation several batches end at the same optimizer step.
        step = trainer.global_step
        due = self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step
        if due and self._affordable(trainer):
            self._measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        due = n and (trainer.current_epoch + 1) % n == 0 and trainer.global_step != self._last_step
        if due and self._affordable(trainer):
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and trainer.global_step != self._last_step and self._affordable(trainer):
            self._measure(trainer, pl_module)
        if self.plot and self.records and trainer.is_global_zero:
            self._log_plot(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run's plot keeps the sharpness measured before the interruption.
        self.records = list(state_dict.get("records", []))

    def _record_loss(self, step: int, loss: Tensor) -> None:
        if step % self._loss_stride:
            return
        self._pending_losses.append((step, loss.detach()))
        # Read the losses back in blocks: one device sync per 256 steps, not one per step.
        if len(self._pending_losses) >= 256:
            self._flush_losses()

    def _flush_losses(self) -> None:
        if self._pending_losses:
            steps = [step for step, _ in self._pending_losses]
            values = torch.stack([v.float() for _, v in self._pending_losses]).tolist()
            self.losses += zip(steps, values, strict=True)
            self._pending_losses = []
        if len(self.losses) > MAX_LOSS_POINTS:
            self._loss_stride *= 2
            self.losses = [(s, v) for s, v in self.losses if s % self._loss_stride == 0]

    def _next_step_is_measured(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step + 1
        if self.every_n_steps and step % self.every_n_steps == 0:
            return True
        last_batch = self._batch_idx + 1 >= trainer.num_training_batches
        epoch_done = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return bool(last_batch and epoch_done)

    def _affordable(self, trainer: pl.Trainer) -> bool:
        """Whether the time spent measuring is within ``max_overhead`` of the training time."""
        if self.max_overhead is None:
            return True
        # The next measurement is expected to cost what the last one did.
        training = time.perf_counter() - self._clock_start - self._spent
        affordable = self._spent + self._last_cost <= self.max_overhead * training
        # Clocks differ between ranks; rank zero decides, as every rank must join a measurement.
        if trainer.world_size > 1:
            affordable = trainer.strategy.broadcast(affordable, src=0)
        return bool(affordable)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        self._last_step = trainer.global_step
        model = _network(pl_module)
        batch, reduce = self._local_batch(trainer, pl_module)
        rule = self._rule(trainer, model)

        figures = self.probe.measure(model, pl_module.objective, batch, reduce, rule)

        # Trust ratios are logged at the step they were applied; the rule keeps the latest.
        if self._trust_ratios is not None and self._trust_step == trainer.global_step:
            figures.update(
                {f"curvature/trust_ratio/{k}": v for k, v in self._trust_ratios.items()}
            )
        # Of the wall time since training started, the share spent measuring (up to this
        # measurement's logging): 1 at step 0, where nothing else has run yet.
        now = time.perf_counter()
        spent = self._spent + now - start
        figures["curvature/time_share"] = spent / max(now - self._clock_start, spent, 1e-9)
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=trainer.global_step)
        self.records.append({"step": float(trainer.global_step), **figures})
        if rule is not None:
            self._optimizer_name = rule.optimizer
        # Logging counts towards the budget: an unbuffered MLflow logger writes each time.
        self._last_cost = time.perf_counter() - start
        self._spent += self._last_cost

    def _local_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[tuple[Tensor, Tensor], Any]:
        """This rank's shard of the fixed batch (read once, kept on the device) and the reduce."""
        if self._batch is None:
            whole = _fixed_batch(trainer, self.source)
            world_size, rank = trainer.world_size, trainer.global_rank
            x, y = shard(whole, rank, world_size) if world_size > 1 else whole
            self._batch = (x.to(pl_module.device), y.to(pl_module.device))
            if world_size > 1:
                self._reduce = shard_sum_reduce(len(x) / len(whole[0]))
            rank_zero_info(
                f"curvature: measuring on {len(whole[0])} {self.source} examples "
                f"({world_size} shard(s))"
            )
        return self._batch, self._reduce

    def _rule(self, trainer: pl.Trainer, model: torch.nn.Module) -> StabilityRule | None:
        if "stability" not in self.probe.figures or not trainer.optimizers:
            return None
        optimizer = trainer.optimizers[0]
        params = [p for p in model.parameters() if p.requires_grad]
        rule = stability_rule(optimizer, params, self._trust_ratios)
        if rule is None and trainer.global_step > 0:
            self._warn_once(
                type(optimizer).__name__,
                f"curvature: no stability rule for {type(optimizer).__name__}; "
                "curvature/stability_ratio is not logged.",
            )
        return rule

    def _log_plot(self, trainer: pl.Trainer) -> None:
        # Imported here: matplotlib costs a third of a second, paid only when a plot is drawn.
        from curvlab.callbacks.plot import plot_sharpness

        self._flush_losses()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(self.plot_dir) if self.plot_dir else Path(tmp)
            path = plot_sharpness(
                self.records,
                self.losses,
                folder / PLOT_NAME,
                self._optimizer_name,
                SOURCES[self.source],
            )
            mlflow = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]
            for logger in mlflow:
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="curvature")
            if self.plot_dir:
                rank_zero_info(f"curvature: sharpness plot at {path}")
            elif not mlflow:
                self._warn_once(
                    "plot", "curvature: no MLflow logger and no plot_dir; plot dropped."
                )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)


def _network(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The plain network: ``pl_module.model`` when there is one (never a DDP wrapper)."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, torch.nn.Module) else pl_module


def _fixed_batch(trainer: pl.Trainer, source: str) -> tuple[Tensor, Tensor]:
    datamodule = trainer.datamodule
    if source == "train" and hasattr(datamodule, "train_set"):
        # The whole training split: the full batch of a full-batch run, in a fixed order.
        indices = datamodule.train_set.indices
        return datamodule.x[indices], datamodule.y[indices]
    if source == "train" or not hasattr(datamodule, "measurement_batch"):
        raise ValueError(
            "CurvatureCallback needs a datamodule with measurement_batch() (or train_set, x "
            "and y for source=train), such as curvlab.data.ArrayDataModule."
        )
    return datamodule.measurement_batch()
