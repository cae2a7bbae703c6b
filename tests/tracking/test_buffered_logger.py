"""The MLflow logger batches metrics: nothing is lost, and each write holds many steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from curvlab.tracking.mlflow_run import BufferedMLFlowLogger


@pytest.fixture
def logger(tmp_path: Path) -> BufferedMLFlowLogger:
    return BufferedMLFlowLogger(
        experiment_name="buffered",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        flush_interval_s=3600.0,
        synchronous=True,
    )


def history(logger: BufferedMLFlowLogger, key: str) -> list[tuple[int, float]]:
    # The logger's own client reads the store directly, past the buffer.
    return [(m.step, m.value) for m in logger.experiment.get_metric_history(logger.run_id, key)]


def test_metrics_wait_for_a_flush_and_then_arrive_in_one_batch(
    logger: BufferedMLFlowLogger, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    log_batch = logger.experiment.log_batch

    def counted(*args: object, metrics: list, **kwargs: object) -> None:
        batches.append(len(metrics))
        log_batch(*args, metrics=metrics, **kwargs)

    monkeypatch.setattr(logger.experiment, "log_batch", counted)
    for step in range(9, 100, 10):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1}, step=step)
    assert batches == []
    assert history(logger, "train/loss") == []

    logger.finalize("success")
    assert batches == [20]
    assert history(logger, "train/loss") == [
        (s, pytest.approx(1.0 / (s + 1))) for s in range(9, 100, 10)
    ]
    assert [step for step, _ in history(logger, "train/lr")] == list(range(9, 100, 10))
    assert logger.experiment.get_run(logger.run_id).info.status == "FINISHED"


def test_a_checkpoint_writes_what_came_before_it(logger: BufferedMLFlowLogger) -> None:
    logger.log_metrics({"val/loss": 0.5}, step=19)
    logger.after_save_checkpoint(checkpoint_callback=None)  # type: ignore[arg-type]
    assert history(logger, "val/loss") == [(19, 0.5)]


def test_the_interval_bounds_how_long_metrics_wait(logger: BufferedMLFlowLogger) -> None:
    logger.flush_interval_s = 0.0
    logger.log_metrics({"train/loss": 2.0}, step=0)
    assert history(logger, "train/loss") == [(0, 2.0)]


def test_more_metrics_than_one_batch_takes_are_split(logger: BufferedMLFlowLogger) -> None:
    for step in range(1200):
        logger.log_metrics({"train/loss": float(step)}, step=step)
    logger.flush()
    assert [step for step, _ in history(logger, "train/loss")] == list(range(1200))
