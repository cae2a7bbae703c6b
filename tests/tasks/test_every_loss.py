"""Every (task, loss) pair trains: the objective falls on a batch the network is fitted to."""

from __future__ import annotations

import pytest
import torch
from task_table import SMALL, SMALL_VIT, TASK_LOSSES

from curvlab.training.build import build_parts

PAIRS = sorted((task, loss) for task, losses in TASK_LOSSES.items() for loss in losses)

# Adam steps on one batch, and the share of the first loss that may be left at most. The tiny
# ViT needs more steps for the overlap losses; a random teacher's soft targets disagree with
# the labels, so the distillation objective has a floor well above 0.
STEPS = {"segmentation": 120}
REMAINING = {"distillation": 0.8}


@pytest.mark.parametrize(("task", "loss"), PAIRS)
def test_the_objective_falls_on_one_batch(task: str, loss: str, config, random_checkpoint) -> None:
    extra = {
        "distillation": [f"task.teacher={random_checkpoint}"],
        "segmentation": SMALL_VIT,
        "restoration": [f"loss.checkpoint_path={random_checkpoint}"]
        if loss == "perceptual"
        else [],
    }.get(task, [])
    torch.manual_seed(0)
    parts = build_parts(config(f"task={task}", f"loss={loss}", *SMALL.get(task, []), *extra), loss)
    x, y = next(iter(parts.datamodule.train_dataloader()))
    model, module = parts.model, parts.module
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    first = module.objective(model(x), y).item()
    for _ in range(STEPS.get(task, 40)):
        optimizer.zero_grad()
        module.objective(model(x), y).backward()
        optimizer.step()
    last = module.objective(model(x), y).item()

    assert first > 0 and last < REMAINING.get(task, 0.6) * first, (first, last)
    metrics = parts.task.metrics()
    parts.task.update_metrics(metrics, model(x).detach(), y)
    assert all(torch.isfinite(v).all() for v in metrics.compute().values())
