"""The callback inside Lightning runs built like the CLI's: schedule, logged figures, no effect
on training, fail-fast refusal, and the plot."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from curvature_helpers import RecordingLogger

from curvlab.callbacks import CurvatureCallback, CurvatureProbe
from curvlab.callbacks.plot import plot_sharpness
from curvlab.training.build import ConfigError, build_parts, build_trainer
from curvlab_testing import compose_train

QUIET = ["trainer.enable_progress_bar=false", "test_after_fit=false"]
TINY_VIT = [
    "model=vit",
    "model.embed_dim=8",
    "model.depth=1",
    "model.num_heads=2",
    "model.mlp_ratio=1.0",
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(overrides: list[str], tmp_path: Path, logger=False) -> tuple[torch.nn.Module, pl.Trainer]:
    """Build and fit a run as the CLI does (seeded), and return its network and trainer."""
    cfg = compose_train([*QUIET, *overrides, f"paths.output_dir={tmp_path}"])
    pl.seed_everything(cfg.seed, workers=True)
    parts = build_parts(cfg, "ce")
    trainer = build_trainer(cfg, logger=logger)
    trainer.fit(parts.module, datamodule=parts.datamodule)
    return parts.model, trainer


# Runs shorter than an epoch never validate, which the checkpoint callback notes.
@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")
@pytest.mark.parametrize(
    "run",
    [
        ["optimizer=lamb", "+trainer.max_steps=30"],
        # Dropout draws from the global RNG every step: a measurement that moved it would show.
        [*TINY_VIT, "model.attention=math", "model.drop_rate=0.2", "+trainer.max_steps=12"],
    ],
    ids=["mlp-lamb", "vit-dropout-adam"],
)
def test_training_is_bit_identical_with_the_callback_on_or_off(run, tmp_path: Path) -> None:
    off, _ = fit(run, tmp_path / "off")
    logger = RecordingLogger()
    curvature = [
        "callbacks=curvature",
        "callbacks.curvature.every_n_steps=5",
        "callbacks.curvature.max_overhead=null",
    ]
    on, trainer = fit([*run, *curvature], tmp_path / "on", logger)

    off_state, on_state = off.state_dict(), on.state_dict()
    assert all(torch.equal(off_state[k], on_state[k]) for k in off_state)
    # Every 5 steps from step 0, and once more at the last step.
    last = trainer.global_step
    steps = [step for step, _ in logger.history["curvature/lambda_max"]]
    assert steps == sorted({*range(0, last + 1, 5), last})
    # The adaptive rule needs the optimizer's second moments: from the first step on.
    ratio = dict(logger.history["curvature/stability_ratio"])
    sharpness = dict(logger.history["curvature/preconditioned_sharpness"])
    threshold = dict(logger.history["curvature/stability_threshold"])
    assert sorted(ratio) == steps[1:]
    assert all(ratio[s] == pytest.approx(sharpness[s] / threshold[s]) for s in ratio)
    assert all(value > 0 for _, value in logger.history["curvature/lambda_max"])


def test_lamb_trust_ratios_are_logged_per_tensor(tmp_path: Path) -> None:
    run = [
        "optimizer=lamb",
        "+trainer.max_steps=10",
        "callbacks=curvature",
        "callbacks.curvature.max_overhead=null",
    ]
    schedule = ["callbacks.curvature.every_n_steps=5", "callbacks.curvature.figures=[stability]"]
    logger = RecordingLogger()

    model, _ = fit([*run, *schedule], tmp_path, logger)

    keys = {k for k in logger.history if k.startswith("curvature/trust_ratio/")}
    assert keys == {f"curvature/trust_ratio/{name}" for name, _ in model.named_parameters()}
    weight = logger.history["curvature/trust_ratio/layers.0.linear.weight"]
    assert [step for step, _ in weight] == [5, 10]
    assert all(0 < value < 100 and value != 1.0 for _, value in weight)
    assert all(v == 1.0 for _, v in logger.history["curvature/trust_ratio/layers.0.linear.bias"])


def test_epoch_schedule_measures_at_epoch_ends(tmp_path: Path) -> None:
    schedule = [
        "callbacks=curvature",
        "callbacks.curvature.every_n_steps=null",
        "callbacks.curvature.every_n_epochs=1",
        "callbacks.curvature.at_start=false",
        "callbacks.curvature.max_overhead=null",
        "callbacks.curvature.figures=[lambda_max,gradient_curvature]",
        "trainer.max_epochs=2",
    ]
    logger = RecordingLogger()

    fit(schedule, tmp_path, logger)

    # 1,257 training digits in batches of 64: 20 steps per epoch.
    assert [s for s, _ in logger.history["curvature/lambda_max"]] == [20, 40]
    assert [s for s, _ in logger.history["curvature/gradient_curvature"]] == [20, 40]
    assert "curvature/trace" not in logger.history


def test_vit_with_fused_attention_is_refused_before_the_first_step(tmp_path: Path) -> None:
    cfg = compose_train([*QUIET, *TINY_VIT, "callbacks=curvature", f"paths.output_dir={tmp_path}"])
    parts = build_parts(cfg, "ce")
    trainer = build_trainer(cfg, logger=False)

    with pytest.raises(ConfigError, match=r"model\.attention=math"):
        trainer.fit(parts.module, datamodule=parts.datamodule)

    assert trainer.global_step == 0


def test_schedule_options_are_checked() -> None:
    with pytest.raises(ValueError, match="every_n_steps=0"):
        CurvatureCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="source"):
        CurvatureCallback(source="validation")


def test_plot_is_a_png_with_both_panels(tmp_path: Path) -> None:
    import matplotlib.image

    threshold = {"curvature/stability_threshold": 2.0}
    records = [
        {"step": float(s), "curvature/lambda_max": 1 + s / 50, **threshold}
        for s in range(0, 101, 10)
    ]
    losses = [(s, 1.0 / (1 + s)) for s in range(101)]

    path = plot_sharpness(records, losses, tmp_path / "sub" / "sharpness.png", "sgd")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (440, 1210)  # 11 x 4 inches at 110 dpi
    # Both halves hold drawn (non-white) pixels: the sharpness and the loss panels.
    ink = (image[..., :3] < 0.5).any(axis=-1)
    assert ink[:, :605].sum() > 2000 and ink[:, 605:].sum() > 2000


def test_loss_curve_is_thinned_to_a_bounded_number_of_points() -> None:
    callback = CurvatureCallback()

    for step in range(1, 10_001):
        callback._record_loss(step, torch.tensor(1.0 / step))
    callback._flush_losses()

    steps = [s for s, _ in callback.losses]
    assert len(steps) <= 4096
    assert steps == list(range(4, 10_001, 4))  # every 4th step once 4,096 points overflowed
    assert all(v == pytest.approx(1.0 / s) for s, v in callback.losses)


def test_budget_skips_due_measurements_beyond_the_overhead_share(monkeypatch) -> None:
    callback = CurvatureCallback(max_overhead=0.25)
    trainer = SimpleNamespace(world_size=1)
    clock = {"now": 0.0}
    monkeypatch.setattr("curvlab.callbacks.curvature.time.perf_counter", lambda: clock["now"])
    callback._clock_start, callback._spent, callback._last_cost = 0.0, 0.5, 0.25

    # 0.5 s measured out of 3.5 s leaves 3 s of training; another 0.25 s makes exactly 25%.
    clock["now"] = 3.5
    assert callback._affordable(trainer)
    clock["now"] = 3.25
    assert not callback._affordable(trainer)
    callback.max_overhead = None
    assert callback._affordable(trainer)


def test_slow_measurements_are_skipped_in_a_run(tmp_path: Path, monkeypatch) -> None:
    """A measurement that takes 0.2 s, due every step of a 30-step run, fits the 3% budget
    only once (the first, which is always taken) unless a step took over 0.2 s."""
    measure = CurvatureProbe.measure

    def slow(self, *args, **kwargs):
        time.sleep(0.2)
        return measure(self, *args, **kwargs)

    monkeypatch.setattr(CurvatureProbe, "measure", slow)
    logger = RecordingLogger()
    schedule = [
        "callbacks=curvature",
        "callbacks.curvature.every_n_steps=1",
        "callbacks.curvature.figures=[gradient_curvature]",
        "+trainer.max_steps=30",
    ]

    fit(schedule, tmp_path, logger)

    assert [s for s, _ in logger.history["curvature/gradient_curvature"]] == [0]
    # At step 0 nothing but the measurement has run: its share of the time is all of it.
    assert 0.9 < logger.history["curvature/time_share"][0][1] <= 1.0
