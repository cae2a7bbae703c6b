"""``curvlab-train callbacks=curvature`` end to end: figures and plot read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from curvlab_testing import QUICK, mlflow_client, run_cli, runs_of


def history(workdir: Path, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow_client(workdir).get_metric_history(run_id, key)}


def test_figures_and_plot_are_logged_to_mlflow(train_cli, tmp_path: Path) -> None:
    schedule = [
        "callbacks=curvature",
        "callbacks.curvature.every_n_steps=20",
        "callbacks.curvature.max_overhead=null",
    ]
    train_cli(*QUICK, "optimizer=lamb", *schedule)

    (run,) = runs_of(tmp_path)
    run_id, metrics = run.info.run_id, run.data.metrics
    client = mlflow_client(tmp_path)

    # Two epochs of 20 steps: measured at steps 0, 20 and 40.
    for key in ("lambda_max", "trace", "trace_stderr", "gradient_curvature", "grad_norm"):
        assert sorted(history(tmp_path, run_id, f"curvature/{key}")) == [0, 20, 40], key
    # LAMB's figures need its second moments (and its trust ratios its next step): from step 20.
    for key in ("preconditioned_sharpness", "stability_threshold", "stability_ratio"):
        assert sorted(history(tmp_path, run_id, f"curvature/{key}")) == [20, 40], key
    trust = {k for k in metrics if k.startswith("curvature/trust_ratio/")}
    assert "curvature/trust_ratio/layers.0.linear.weight" in trust
    assert len(trust) == 6  # three layers, a weight and a bias each

    # The figures hang together: ratio = sharpness / threshold, threshold from eta = 1e-3.
    ratio = history(tmp_path, run_id, "curvature/stability_ratio")
    sharpness = history(tmp_path, run_id, "curvature/preconditioned_sharpness")
    threshold = history(tmp_path, run_id, "curvature/stability_threshold")
    assert threshold[40] == pytest.approx((2 + 2 * 0.9) / (0.1 * 1e-3), rel=1e-6)
    assert ratio[40] == pytest.approx(sharpness[40] / threshold[40], rel=1e-6)
    assert metrics["curvature/lambda_max"] > 0
    assert metrics["curvature/trace_stderr"] > 0

    (plot,) = client.list_artifacts(run_id, "curvature")
    assert plot.path == "curvature/sharpness.png"
    assert plot.file_size > 10_000
    png = Path(client.download_artifacts(run_id, plot.path)).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (on_disk,) = (tmp_path / "outputs").rglob("curvature/sharpness.png")
    assert on_disk.read_bytes() == png


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_run_logs_the_figures_of_one_process(tmp_path: Path) -> None:
    """Two CPU ranks measure their shards of the fixed batch; at step 0 (same weights) the
    logged figures equal a one-process run's up to float32 rounding in Lanczos."""
    args = [*QUICK, "trainer.max_epochs=1", "callbacks=curvature", "test_after_fit=false"]
    args.append("callbacks.curvature.max_overhead=null")
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    run_cli("curvlab.cli.train", args, tmp_path / "one")
    run_cli("curvlab.cli.train", [*args, *ddp], tmp_path / "two")

    (single,) = runs_of(tmp_path / "one")
    (distributed,) = runs_of(tmp_path / "two")
    for key, rel in (("lambda_max", 1e-4), ("trace", 1e-4), ("gradient_curvature", 1e-4)):
        one = history(tmp_path / "one", single.info.run_id, f"curvature/{key}")
        two = history(tmp_path / "two", distributed.info.run_id, f"curvature/{key}")
        assert sorted(one) == sorted(two) == [0, 20], key  # at the start and at the end
        assert two[0] == pytest.approx(one[0], rel=rel), key
