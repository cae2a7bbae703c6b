"""End-to-end runs of curvlab-train and curvlab-eval, read back from MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from curvlab_testing import QUICK, mlflow_client, run_cli, runs_of


def _only_dir(path: Path) -> Path:
    (child,) = list(path.iterdir())
    return child


def test_run_is_tracked_in_embedded_mlflow(train_cli, tmp_path: Path) -> None:
    train_cli(*QUICK, "+logger.tags.team=vision")

    (run,) = runs_of(tmp_path)
    client = mlflow_client(tmp_path)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags

    # The resolved config, flattened, is the run's params.
    assert params["model._target_"] == "curvlab.models.MLP"
    assert params["optimizer.lr"] == "0.001"
    assert params["trainer.max_epochs"] == "2"
    assert params["data.batch_size"] == "64"

    # Per-step training metrics at the logging interval; epoch-level validation; test at the end.
    steps_per_epoch = math.ceil(1257 / 64)
    train_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert train_steps == list(range(9, 2 * steps_per_epoch, 10))
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert {"train/lr", "val/loss", "val/f1", "test/loss", "test/acc", "test/f1"} <= set(metrics)
    assert metrics["train/lr"] == pytest.approx(1e-3)
    assert 0.0 < metrics["test/acc"] <= 1.0

    assert tags["curvlab.version"] == "0.1.0"
    assert "trainer.max_epochs=2" in tags["curvlab.command"]
    assert tags["curvlab.command"].endswith("+logger.tags.team=vision")
    assert tags["team"] == "vision"

    config_files = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert config_files == {"config/config.yaml", "config/overrides.yaml"}
    overrides = Path(client.download_artifacts(run.info.run_id, "config/overrides.yaml"))
    assert "trainer.max_epochs=2" in overrides.read_text()
    (ckpt,) = client.list_artifacts(run.info.run_id, "checkpoints")
    state = torch.load(client.download_artifacts(run.info.run_id, ckpt.path), weights_only=False)
    assert state["curvlab"]["mlflow_run_id"] == run.info.run_id
    assert state["curvlab"]["input_shape"] == [1, 8, 8]


def test_eval_logs_into_the_checkpoints_run(train_cli, tmp_path: Path) -> None:
    train_cli(*QUICK)
    (ckpt,) = (tmp_path / "outputs").rglob("epoch*.ckpt")

    run_cli("curvlab.cli.evaluate", [f"ckpt_path={ckpt}"], tmp_path)

    (run,) = runs_of(tmp_path)
    metrics = run.data.metrics
    # The same checkpoint on the same split gives the same figures as the test after fitting.
    assert metrics["eval/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["eval/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_resume_is_bit_exact_and_continues_the_run(tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    full.mkdir()
    split.mkdir()
    args = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5"]

    run_cli("curvlab.cli.train", [*args, "trainer.max_epochs=4"], full)
    # Stopped halfway: two of four epochs, and no test (it would not have reached it).
    run_cli("curvlab.cli.train", [*args, "trainer.max_epochs=2", "test_after_fit=false"], split)
    run_cli("curvlab.cli.train", [*args, "trainer.max_epochs=4", "ckpt_path=last"], split)

    def final_weights(root: Path) -> dict[str, torch.Tensor]:
        (last,) = sorted((root / "outputs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[
            -1:
        ]
        return torch.load(last, weights_only=False)["state_dict"]

    reference, resumed = final_weights(full), final_weights(split)
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name

    # One MLflow run, with the same metric steps as the uninterrupted run: none lost, none twice.
    (run_full,) = runs_of(full)
    (run_split,) = runs_of(split)
    for key in ("train/loss", "train/lr", "val/loss", "val/acc", "test/acc", "epoch"):
        steps_full = [
            m.step for m in mlflow_client(full).get_metric_history(run_full.info.run_id, key)
        ]
        steps_split = [
            m.step for m in mlflow_client(split).get_metric_history(run_split.info.run_id, key)
        ]
        assert sorted(steps_split) == sorted(steps_full), key
    final_full = mlflow_client(full).get_metric_history(run_full.info.run_id, "train/loss")
    final_split = mlflow_client(split).get_metric_history(run_split.info.run_id, "train/loss")
    assert [m.value for m in final_split] == [m.value for m in final_full]


def test_multirun_gives_one_run_per_job(train_cli, tmp_path: Path) -> None:
    train_cli("-m", *QUICK, "trainer.max_epochs=1", "optimizer=sgd,adam")

    runs = runs_of(tmp_path)
    assert sorted(r.data.params["optimizer._target_"] for r in runs) == [
        "torch.optim.Adam",
        "torch.optim.SGD",
    ]
    sweep = _only_dir(tmp_path / "outputs" / "multiruns")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.ddp
def test_ddp_on_two_cpu_processes_makes_one_run_and_one_directory(train_cli, tmp_path: Path):
    proc = train_cli(
        *QUICK,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
    )

    (run,) = runs_of(tmp_path)
    run_dirs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    # 1257 training examples, global batch 64 = 2 x 32: the same 20 optimizer steps as 1 process.
    history = mlflow_client(tmp_path).get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [9, 19]
    assert run.data.params["trainer.strategy._target_"].endswith(".DDPStrategy")
    assert run.data.params["trainer.strategy.timeout.seconds"] == "1800"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr


def test_vit_run_logs_the_cost_model(train_cli, tmp_path: Path) -> None:
    train_cli(
        "model=vit",
        "optimizer=adamw",
        "trainer.max_epochs=3",
        "data.batch_size=128",
        "trainer.enable_progress_bar=false",
    )

    (run,) = runs_of(tmp_path)
    params = run.data.params
    # 8x8 digits in 2x2 patches: 16 patch tokens and [CLS]; D=64 over h=4 heads.
    assert params["cost/tokens"] == "17"
    assert params["cost/head_dim"] == "16"
    assert params["cost/attention_entries_per_layer"] == str(4 * 17**2)
    assert params["cost/batch_size"] == "128"
    assert int(params["cost/params"]) > 0
    history = mlflow_client(tmp_path).get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 3
