"""Every loss fits a task, every task brings its data, and a misfit is refused before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from task_table import SMALL, SMALL_VIT, TASK_DATA, TASK_LOSSES, TASK_METRICS

from curvlab import tasks
from curvlab.config import CONFIG_DIR
from curvlab.training.build import ConfigError, build_parts, build_trainer


def _conf_names(group: str) -> set[str]:
    return {p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")}


def test_every_loss_fits_a_task_and_every_fitting_loss_exists() -> None:
    declared = {
        cls.name: set(cls.losses)
        for cls in map(tasks.__dict__.get, tasks.__all__)
        if cls is not tasks.Task
    }

    assert declared == TASK_LOSSES
    assert set().union(*TASK_LOSSES.values()) == _conf_names("loss")
    assert set(TASK_LOSSES) <= _conf_names("task")


@pytest.mark.parametrize("task", sorted(TASK_DATA))
def test_each_task_config_brings_its_data(task: str, config) -> None:
    cfg = config(f"task={task}")

    assert cfg.data._target_ == f"curvlab.data.{TASK_DATA[task]}"
    assert cfg.task._target_.rsplit(".", 1)[1] in tasks.__all__


def test_a_data_choice_on_the_command_line_beats_the_tasks(config) -> None:
    cfg = config("task=segmentation", "data=digits")

    assert cfg.data._target_ == "curvlab.data.DigitsDataModule"


@pytest.mark.parametrize(
    ("task", "loss"),
    [("regression", "dice"), ("segmentation", "ce"), ("classification", "triplet")],
)
def test_a_loss_that_does_not_fit_is_refused_listing_those_that_do(task, loss, config) -> None:
    cfg = config(f"task={task}", f"loss={loss}")

    with pytest.raises(ConfigError) as refused:
        build_parts(cfg, loss)

    message = str(refused.value)
    assert f"loss={loss} does not fit task={task}" in message
    listed = set(message.split("are: ", 1)[1].split(". ", 1)[0].split(", "))
    assert listed == TASK_LOSSES[task]


def test_data_that_does_not_fit_the_task_is_refused_naming_the_data(config) -> None:
    cfg = config("task=segmentation", "data=digits", "loss=dice")

    with pytest.raises(ConfigError, match=r"task=segmentation needs 0/1 float masks.*data=shapes"):
        build_parts(cfg, "dice")


def test_the_cli_refuses_a_misfit_before_anything_is_written(train_cli, tmp_path: Path) -> None:
    proc = train_cli("task=regression", "loss=dice", check=False)

    assert proc.returncode != 0
    assert (
        "loss=dice does not fit task=regression; the losses that fit this task are: "
        "mse, mae, huber, smooth_l1." in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("task", sorted(TASK_LOSSES))
def test_each_recipe_picks_its_task_and_a_fitting_loss(task: str, choices) -> None:
    picked = choices(f"experiment={task}")

    assert picked.task == task
    assert picked.data == choices(f"task={task}").data
    assert picked.loss in TASK_LOSSES[task]


def test_a_loss_on_the_command_line_beats_the_recipes(choices) -> None:
    picked = choices("experiment=regression", "loss=huber")

    assert (picked.task, picked.data, picked.loss) == ("regression", "diabetes", "huber")


# The ViT needs images: every task but regression (10 features per patient) takes either model.
NETWORKS = [(task, "mlp") for task in sorted(TASK_METRICS)] + [
    (task, "vit") for task in sorted(TASK_METRICS) if task != "regression"
]


@pytest.mark.parametrize(("task", "network"), NETWORKS)
def test_one_step_logs_the_tasks_metrics(task, network, config, random_checkpoint) -> None:
    loss = sorted(TASK_LOSSES[task])[0]
    extra = [f"task.teacher={random_checkpoint}"] if task == "distillation" else []
    model = SMALL_VIT if network == "vit" else ["model=mlp"]
    cfg = config(f"task={task}", f"loss={loss}", *SMALL.get(task, []), *model, *extra)
    parts = build_parts(cfg, loss)

    trainer = build_trainer(cfg, logger=False, fast_dev_run=True, enable_progress_bar=False)
    trainer.fit(parts.module, datamodule=parts.datamodule)

    logged = {k.split("/", 1)[1] for k in trainer.callback_metrics if k.startswith("val/")}
    assert logged == TASK_METRICS[task] | {"loss"}
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())


def test_task_configs_instantiate_the_tasks_they_name(config, random_checkpoint: str) -> None:
    for task in TASK_LOSSES:
        extra = [f"task.teacher={random_checkpoint}"] if task == "distillation" else []
        obj = instantiate(config(f"task={task}", *extra).task)
        assert obj.name == task


def test_a_wrapped_model_rebuilds_from_its_run_config(config) -> None:
    # curvlab-eval rebuilds a run from the config in its checkpoint and loads the weights.
    cfg = config("task=segmentation", "loss=dice", *SMALL["segmentation"], *SMALL_VIT)
    trained = build_parts(cfg, "dice")
    state = trained.module.state_dict()

    rebuilt = build_parts(cfg, "dice")
    rebuilt.module.load_state_dict(state, strict=True)

    assert {k.split(".")[1] for k in state if k.startswith("model.")} == {"backbone", "decoder"}
    x = trained.datamodule.x[:4]
    assert torch.equal(rebuilt.model.eval()(x), trained.model.eval()(x))
