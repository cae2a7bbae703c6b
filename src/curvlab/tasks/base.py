"""What a run predicts: the task fixes the head size, the metrics and the losses that fit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MetricCollection


class Task(ABC):
    """A prediction problem: how model outputs meet targets, and how results are judged.

    Subclasses list the ``conf/loss`` entries that make sense for them in ``losses``; the
    training entry point refuses any other before work starts.
    """

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]

    # TODO(tasks-monitor): a task cannot yet name the metric its best checkpoint is chosen by;
    # checkpoints follow val/loss unless a recipe sets callbacks.model_checkpoint.monitor.

    def check_loss(self, loss_name: str | None) -> None:
        """Refuse a loss that does not fit this task, naming the ones that do."""
        if loss_name is not None and loss_name not in self.losses:
            raise ValueError(
                f"loss={loss_name} does not fit task={self.name}; the losses that fit this "
                f"task are: {', '.join(self.losses)}. Pick one with loss=NAME, or change "
                "task=."
            )

    @abstractmethod
    def setup(self, datamodule: Any) -> int:
        """Read what the task needs from the data; return the width of the model's output."""

    @abstractmethod
    def metrics(self) -> MetricCollection:
        """Fresh metrics, updated with ``update_metrics`` and computed per epoch."""

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The network the run trains: ``model`` itself, or ``model`` under a task head.

        Called once when the run is built, before the Lightning module exists, so checkpoints
        hold the wrapped network's weights and rebuilding the run rebuilds the same keys.
        """
        return model

    def compute_loss(
        self, loss_fn: Callable[..., torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The scalar objective for a batch."""
        return loss_fn(outputs, targets)

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        """Feed one batch into the metrics."""
        metrics.update(outputs, targets)
