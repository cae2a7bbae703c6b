"""Knowledge distillation: a student classifier learns from a frozen teacher checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from curvlab.losses import DistillationLoss, load_feature_network
from curvlab.tasks.base import Task

log = logging.getLogger(__name__)

# Examples per forward pass when the teacher labels the data.
_TEACHER_BATCH = 512


class Distillation(Task):
    """A student's logits ``(B, K)`` against the labels and a teacher's logits.

    The teacher, a curvlab classification checkpoint, is run once over the whole data set when
    the run is built; its logits travel with the labels as targets ``(B, 1 + K)`` (column 0
    the label, then the K logits), so the teacher is never in the student's checkpoint and
    costs nothing per step. ``kl_div`` distils (KL at temperature T plus cross entropy, guide
    1.2.7); ``ce`` trains the same student on the labels alone, as a baseline.

    Metrics: ``acc`` (the student's accuracy), ``teacher_acc`` (the teacher's, on the same
    split) and ``agreement`` (how often the student's class is the teacher's).

    Args:
        teacher: path of the teacher's ``.ckpt`` (e.g. a ``task=classification`` run's best
            checkpoint).
        weights_only: safe unpickling of the checkpoint; False only for a trusted file that
            pickles other objects.
    """

    name = "distillation"
    losses = ("kl_div", "ce")

    num_classes: int = 0

    def __init__(self, teacher: str, weights_only: bool = True) -> None:
        self.teacher = teacher
        self.weights_only = weights_only

    def setup(self, datamodule: Any) -> int:
        labels = datamodule.y
        if datamodule.num_classes is None or labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(
                f"task=distillation needs integer class labels shaped (n,); the data gives "
                f"{tuple(labels.shape)} {labels.dtype}. Use data=digits."
            )
        self.num_classes = int(datamodule.num_classes)
        try:
            teacher = load_feature_network(self.teacher, weights_only=self.weights_only)
        except (FileNotFoundError, KeyError, RuntimeError) as err:
            raise ValueError(f"task.teacher={self.teacher}: {err}") from err

        # The teacher labels every example once; the logits then ride along with the labels.
        x = datamodule.x
        with torch.no_grad():
            try:
                z_t = torch.cat([teacher(chunk) for chunk in x.split(_TEACHER_BATCH)])
            except RuntimeError as err:
                raise ValueError(
                    f"task.teacher={self.teacher} does not accept this data's inputs "
                    f"{tuple(x.shape[1:])}: {err}"
                ) from err
        if z_t.shape != (len(x), self.num_classes):
            raise ValueError(
                f"task.teacher={self.teacher} gives {z_t.shape[-1]} outputs per example; the "
                f"data has {self.num_classes} classes."
            )
        datamodule.replace_targets(torch.cat([labels.unsqueeze(1).to(z_t.dtype), z_t], dim=1))
        log.info("teacher %s labelled %d examples", self.teacher, len(x))
        return self.num_classes

    @staticmethod
    def split_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels (B,), teacher logits (B, K))`` from the ``(B, 1 + K)`` targets."""
        return targets[:, 0].long(), targets[:, 1:]

    def metrics(self) -> MetricCollection:
        K = self.num_classes
        # No compute groups: the three accuracies look alike but are fed different inputs.
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(K, average="micro"),
                "teacher_acc": MulticlassAccuracy(K, average="micro"),
                "agreement": MulticlassAccuracy(K, average="micro"),
            },
            compute_groups=False,
        )

    def compute_loss(
        self, loss_fn: Callable[..., torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        labels, z_t = self.split_targets(targets)
        if isinstance(loss_fn, DistillationLoss):
            return loss_fn(outputs, (z_t, labels))
        return loss_fn(outputs, labels)

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        labels, z_t = self.split_targets(targets)
        inputs = {
            "acc": (outputs, labels),
            "teacher_acc": (z_t, labels),
            "agreement": (outputs, z_t.argmax(dim=1)),
        }
        for name, metric in metrics.items(keep_base=True):
            metric.update(*inputs[name])
