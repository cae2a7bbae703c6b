"""Bad input is refused before any work, with one paragraph naming the key and the choices."""

from __future__ import annotations

from pathlib import Path

from curvlab_testing import QUICK


def _nothing_written(workdir: Path) -> bool:
    return not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_vit_with_heads_not_dividing_d_is_refused(train_cli, tmp_path: Path) -> None:
    proc = train_cli("model=vit", "model.embed_dim=100", "model.num_heads=3", check=False)

    assert proc.returncode != 0
    assert "model.embed_dim=100 is not divisible by model.num_heads=3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _nothing_written(tmp_path)


def test_typo_in_a_group_choice_lists_the_valid_ones(train_cli, tmp_path: Path) -> None:
    proc = train_cli("optimizer=adamm", check=False)

    assert proc.returncode != 0
    assert "optimizer/adamm" in proc.stderr
    assert "adamw" in proc.stderr and "sgd" in proc.stderr
    assert _nothing_written(tmp_path)


def test_typo_in_a_key_names_it(train_cli, tmp_path: Path) -> None:
    proc = train_cli("trainer.max_epoch=3", check=False)

    assert proc.returncode != 0
    assert "trainer.max_epoch" in proc.stderr
    assert _nothing_written(tmp_path)


def test_unreachable_tracking_server_is_reported_before_training(train_cli, tmp_path):
    proc = train_cli(*QUICK, "logger.tracking_uri=http://127.0.0.1:9", check=False)

    assert proc.returncode != 0
    assert "logger.tracking_uri=http://127.0.0.1:9 is unreachable" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))
    assert _nothing_written(tmp_path)


def test_missing_data_file_is_reported(train_cli, tmp_path: Path) -> None:
    proc = train_cli("data=files", "data.path=nowhere.npz", check=False)

    assert proc.returncode != 0
    assert "data.path=nowhere.npz does not exist" in proc.stderr
    assert _nothing_written(tmp_path)


def test_resume_without_a_checkpoint_is_reported(train_cli, tmp_path: Path) -> None:
    proc = train_cli("ckpt_path=last", check=False)

    assert proc.returncode != 0
    assert "ckpt_path=last: no last.ckpt under paths.log_dir=outputs" in proc.stderr
    assert _nothing_written(tmp_path)


def test_help_and_cfg_job_work_from_any_directory(train_cli, tmp_path: Path) -> None:
    help_text = train_cli("--help").stdout
    assert help_text.startswith("curvlab-train")
    groups = dict(line.split(": ", 1) for line in help_text.splitlines() if ": " in line)
    assert groups["model"] == "guide_mlp, mlp, vit"
    assert {"adam", "adamw", "sgd"} <= set(groups["optimizer"].split(", "))
    assert {"digits", "files"} <= set(groups["data"].split(", "))

    job = train_cli("--cfg", "job", "model=vit").stdout
    assert "_target_: curvlab.models.ViT" in job
    assert "patch_size: 2" in job
    assert _nothing_written(tmp_path)
