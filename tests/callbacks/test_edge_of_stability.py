"""``experiment=edge_of_stability``: full-batch gradient descent climbs to 2 / eta and stays.

Cohen et al. (ICLR 2021) observe that the sharpness lambda_max of the training loss rises
during full-batch gradient descent ("progressive sharpening") until it reaches 2 / eta, and
then hovers there instead of rising further, while the loss keeps falling.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curvlab_testing import mlflow_client, run_cli, runs_of


@pytest.mark.slow
def test_sharpness_rises_to_two_over_lr_and_hovers_there(tmp_path: Path) -> None:
    # One thread: on a shared machine two OpenMP threads made this run ten times slower.
    args = ["experiment=edge_of_stability", "trainer.enable_progress_bar=false"]
    run_cli("curvlab.cli.train", args, tmp_path, env={"OMP_NUM_THREADS": "1"})

    (run,) = runs_of(tmp_path)
    client = mlflow_client(tmp_path)
    lambda_max = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "curvature/lambda_max")
    }
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    threshold = run.data.metrics["curvature/stability_threshold"]
    assert threshold == pytest.approx(2 / 1.0)  # eta = 1
    assert sorted(lambda_max) == list(range(0, 1501, 10))

    # Progressive sharpening: from well below the line to the line within 300 steps.
    assert lambda_max[0] < 0.5 * threshold
    crossing = min(step for step, value in lambda_max.items() if value >= 0.95 * threshold)
    assert crossing <= 300

    # The edge of stability: from step 500 on, within 15% of 2 / eta, neither escaping above
    # (gradient descent would diverge) nor falling back to where it started.
    late = [value for step, value in lambda_max.items() if step >= 500]
    assert all(0.85 * threshold <= value <= 1.15 * threshold for value in late)
    assert run.data.metrics["curvature/stability_ratio"] == pytest.approx(
        lambda_max[1500] / threshold, rel=1e-6
    )
    assert loss[-1] < 0.1 * loss[0]
