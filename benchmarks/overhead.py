"""What curvlab's stack costs per optimizer step, against a plain PyTorch loop.

Both sides train the same model from the same initial weights on the same batches in this
process: curvlab through Lightning with MLflow logging (an embedded store in a temporary
directory), checkpoint callback and progress bar at their default settings; the baseline as a
bare ``for x, y in loader: loss.backward(); optimizer.step()`` loop. Steps after a warm-up are
timed, and the script prints steps per second, their ratio, and the fixed overhead per step.

    .venv/bin/python benchmarks/overhead.py                 # MLP and the two ViTs
    .venv/bin/python benchmarks/overhead.py --models vit --steps 200
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from curvlab.config import CONFIG_DIR
from curvlab.tracking.mlflow_run import make_logger
from curvlab.training.build import build_parts, build_trainer

MODELS = {
    "mlp": ["model=mlp"],
    # conf/model/vit: D=64, L=4, h=4, P=2 on the 8x8 digits (17 tokens), a few ms a step.
    "vit": ["model=vit", "model.embed_dim=64", "model.depth=4", "model.num_heads=4"],
    # ViT-Tiny's width and heads (D=192, h=3) at depth 6 with P=1 (65 tokens).
    "vit_small": [
        "model=vit",
        "model.patch_size=1",
        "model.embed_dim=192",
        "model.depth=6",
        "model.num_heads=3",
    ],
}
STEPS = {"mlp": 600, "vit": 150, "vit_small": 40}


class StepTimer(pl.Callback):
    """Times optimizer steps ``warmup`` to the end of fitting."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.elapsed = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.warmup


def compose_run(model: str, workdir: Path, extra: list[str] = ()):
    overrides = [
        *MODELS[model],
        f"paths.output_dir={workdir}",
        f"logger.tracking_uri=sqlite:///{workdir}/m.db",
        "logger.experiment_name=overhead",
        "data.batch_size=64",
        *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def initial_weights(model: str, workdir: Path) -> dict:
    """The weights both sides start from: the curvlab run's, seeded."""
    pl.seed_everything(0, workers=True)
    return copy.deepcopy(build_parts(compose_run(model, workdir), "ce").model.state_dict())


def time_curvlab(
    model: str, steps: int, warmup: int, workdir: Path, extra: list[str] = ()
) -> float:
    cfg = compose_run(model, workdir, extra)
    pl.seed_everything(0, workers=True)
    parts = build_parts(cfg, "ce")
    # curvlab's own logger: metrics are batched and queued for MLflow's background writer.
    logger = make_logger(cfg.logger)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, logger, max_steps=warmup + steps, max_epochs=-1)
    trainer.callbacks.append(timer)

    # Validation is work of its own, not per-step overhead; both sides skip it.
    trainer.limit_val_batches = 0
    trainer.num_sanity_val_steps = 0
    trainer.fit(parts.module, datamodule=parts.datamodule)
    return timer.steps / timer.elapsed


def time_plain(model: str, steps: int, warmup: int, workdir: Path, initial: dict) -> float:
    cfg = compose_run(model, workdir)
    parts = build_parts(cfg, "ce")
    net = parts.model
    net.load_state_dict(initial)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = parts.datamodule.train_dataloader(topology=(1, 0))

    step, epoch, start = 0, 0, 0.0
    while step < warmup + steps:
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            if step == warmup:
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            optimizer.step()
            step += 1
            if step == warmup + steps:
                break
        epoch += 1
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=4, help="best of this many timings")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both sides)")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="Hydra overrides for the curvlab side only"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    print(f"{'model':6} {'curvlab steps/s':>16} {'plain steps/s':>14} {'ratio':>7}", end="")
    print(f" {'overhead us/step':>17}")
    for model in args.models:
        steps = args.steps or STEPS[model]
        best_curvlab, best_plain = 0.0, 0.0
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(tmp)
                initial = initial_weights(model, workdir)
                # Alternate which side runs first: the second finds warm caches and allocator.
                plain_first = repeat % 2 == 1
                if plain_first:
                    plain_rate = time_plain(model, steps, args.warmup, workdir, initial)
                curvlab_rate = time_curvlab(model, steps, args.warmup, workdir, args.overrides)
                if not plain_first:
                    plain_rate = time_plain(model, steps, args.warmup, workdir, initial)
                best_curvlab = max(best_curvlab, curvlab_rate)
                best_plain = max(best_plain, plain_rate)
        overhead_us = (1 / best_curvlab - 1 / best_plain) * 1e6
        print(
            f"{model:6} {best_curvlab:16.1f} {best_plain:14.1f} "
            f"{best_curvlab / best_plain:7.3f} {overhead_us:17.0f}"
        )


if __name__ == "__main__":
    main()
