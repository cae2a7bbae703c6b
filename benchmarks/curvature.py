"""Curvature benchmarks: what a Hessian-vector product costs next to a gradient.

Each measurement is a function ``(args) -> list[Row]`` registered in ``MEASUREMENTS``; all of
them run in one process and time their candidates interleaved, so the ratios compare like with
like on a shared machine. Run from the repository root:

    .venv/bin/python benchmarks/curvature.py                 # every measurement
    .venv/bin/python benchmarks/curvature.py hvp_ratio --repeats 9
    .venv/bin/python benchmarks/curvature.py callback_overhead --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from curvlab.callbacks import CurvatureCallback
from curvlab.config import CONFIG_DIR
from curvlab.curvature import HessianOperator, hvp, measurement_mode
from curvlab.curvature._support import as_batches
from curvlab.curvature.rop import closed_form
from curvlab.models import MLP, ViT
from curvlab.tracking.mlflow_run import make_logger
from curvlab.training.build import build_parts, build_trainer


@dataclass
class Row:
    """One line of the results table: a model, a quantity and its ratio to the baseline."""

    model: str
    quantity: str
    ms: float
    ratio: float
    median_ratio: float


@dataclass
class Case:
    name: str
    model: nn.Module
    batch: tuple[Tensor, Tensor]


def cases(only: list[str] | None = None) -> list[Case]:
    """The models curvlab trains, at the configs' sizes and at a CIFAR-like size."""
    torch.manual_seed(0)
    digits = (torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    cifar = (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    cifar_32 = (cifar[0][:32], cifar[1][:32])  # halves the slowest case
    vit_small = dict(patch_size=4, embed_dim=192, depth=6, num_heads=3, attention="math")
    all_cases = [
        Case("mlp 64-128-64-10 (conf/model/mlp), B=64", MLP((1, 8, 8), 10), digits),
        Case("mlp 3072-512-256-10, B=64", MLP((3, 32, 32), 10, hidden=[512, 256]), cifar),
        Case(
            "vit D64 L4 h4 P2 (conf/model/vit), B=64", ViT((1, 8, 8), 10, attention="math"), digits
        ),
        Case("vit D192 L6 h3 P4 on 32x32, B=32", ViT((3, 32, 32), 10, **vit_small), cifar_32),
        Case("vit D192 L6 h3 P4 on 32x32, B=64", ViT((3, 32, 32), 10, **vit_small), cifar),
    ]
    return [c for c in all_cases if not only or any(word in c.name for word in only)]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _candidates(case: Case, loss_fn: nn.Module) -> dict[str, Callable[[], object]]:
    model, batch = case.model, case.batch
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    with measurement_mode(model):
        operator = HessianOperator(model, loss_fn, batch, method="reverse")
    candidates = {
        "gradient": lambda: torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params),
        "hvp reverse": lambda: hvp(model, loss_fn, batch, v, method="reverse"),
        "hvp forward": lambda: hvp(model, loss_fn, batch, v, method="forward"),
    }
    closed = closed_form(model, loss_fn, params, as_batches(batch, params[0].device))
    if closed is not None:
        candidates["hvp rop"] = lambda: hvp(model, loss_fn, batch, v, method="rop")
    candidates["hvp auto"] = lambda: hvp(model, loss_fn, batch, v, method="auto")
    candidates["further product (reverse)"] = lambda: operator.matvec(v)
    if closed is not None:
        with measurement_mode(model):
            kept = HessianOperator(model, loss_fn, batch, method="rop")
        candidates["further product (rop)"] = lambda: kept.matvec(v)
    return candidates


def hvp_vs_gradient(args: argparse.Namespace) -> list[Row]:
    """Time of one HVP (forward, backward, second backward) over one gradient (forward,
    backward), both through ``torch.autograd.grad``.

    Also the cost of a further product at the same theta (Lanczos, CG, Hutchinson): the double
    backward reuses the graph of g and so needs only the second backward pass; the R-operator
    keeps the gradient's forward and backward pass and needs only their R-images. Candidates run
    interleaved; the best of ``--repeats`` rounds is the compute cost (other tenants of a
    shared machine only add time), the median is shown beside it.
    """
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for case in cases(args.models):
        candidates = _candidates(case, loss_fn)
        for fn in candidates.values():
            fn()  # warm-up; "auto" also times both methods here, once per model
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, fn in candidates.items():
                times[name].append(_timed(fn))

        best, median = min(times["gradient"]), statistics.median(times["gradient"])
        for name, samples in times.items():
            rows.append(
                Row(
                    case.name,
                    name,
                    1e3 * min(samples),
                    min(samples) / best,
                    statistics.median(samples) / median,
                )
            )
    return rows


# The callback's hooks: time spent in them is the time the callback adds to a run.
_HOOKS = (
    "setup",
    "on_train_start",
    "on_train_batch_start",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_train_end",
)


def _instrument(target: object, spent: dict[str, float]) -> None:
    """Time the callback's hooks (``hooks``), and within them its measurements with their
    logging (``measure``) and the end-of-run plot with its upload (``plot``).

    ``target`` is a :class:`CurvatureCallback` or the class itself (every instance).
    """

    def timing(fn: Callable[..., object], key: str) -> Callable[..., object]:
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return timed

    for hook in _HOOKS:
        setattr(target, hook, timing(getattr(target, hook), "hooks"))
    target._measure = timing(target._measure, "measure")
    target._log_plot = timing(target._log_plot, "plot")


def _new_spent() -> dict[str, float]:
    return {"hooks": 0.0, "measure": 0.0, "plot": 0.0}


def _timed_fit(overrides: list[str], workdir: Path) -> tuple[float, dict[str, float]]:
    """Fit the default run with ``callbacks=curvature`` and ``overrides``, logging to MLflow
    through curvlab's logger, as ``curvlab-train`` does.

    Returns:
        Seconds of the whole fit, and of it inside the callback (see :func:`_instrument`).
    """
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "callbacks=curvature",
                *overrides,
                f"paths.output_dir={workdir}",
                f"logger.tracking_uri=sqlite:///{workdir}/mlflow.db",
                "trainer.enable_progress_bar=false",
            ],
        )
    pl.seed_everything(cfg.seed)
    parts = build_parts(cfg, "ce")
    logger = make_logger(cfg.logger)
    logger.run_id  # noqa: B018  (the store and run exist before fitting, as in curvlab-train)
    trainer = build_trainer(cfg, logger)
    (callback,) = [c for c in trainer.callbacks if isinstance(c, CurvatureCallback)]
    spent = _new_spent()
    _instrument(callback, spent)
    total = _timed(lambda: trainer.fit(parts.module, datamodule=parts.datamodule))
    logger.finalize()
    return total, spent


def _fit_rows(epochs: int, samples: list[tuple[float, dict[str, float]]]) -> list[Row]:
    bare = [total - spent["hooks"] for total, spent in samples]
    parts = {
        "callback, all hooks": [spent["hooks"] for _, spent in samples],
        "of it measurements (with logging)": [spent["measure"] for _, spent in samples],
        "of it end-of-run plot": [spent["plot"] for _, spent in samples],
        "of it per-step bookkeeping": [
            spent["hooks"] - spent["measure"] - spent["plot"] for _, spent in samples
        ],
    }
    model = f"fit of the default run, {epochs} epochs = {20 * epochs} steps"
    rows = [Row(model, "fit without the callback", 1e3 * min(bare), 1.0, 1.0)]
    for name, spent in parts.items():
        ratios = [1 + t / b for t, b in zip(spent, bare, strict=True)]
        ms = 1e3 * statistics.median(spent)
        rows.append(Row(model, name, ms, min(ratios), statistics.median(ratios)))
    return rows


# Runs ``curvlab-train`` with the callback's hooks timed and writes their seconds to a file.
_CHILD = "_timed-command"


def _command_child(out: str, overrides: list[str]) -> None:
    from curvlab.cli.train import main as train_main

    spent = _new_spent()
    _instrument(CurvatureCallback, spent)
    atexit.register(lambda: Path(out).write_text(json.dumps(spent)))
    sys.argv = ["curvlab-train", *overrides]
    train_main()


def _timed_command(
    callbacks: str, workdir: Path, threads: int | None
) -> tuple[float, dict[str, float]]:
    """Wall time of a whole ``curvlab-train callbacks=...`` process (fresh working directory,
    embedded MLflow store there), and the time inside the curvature callback."""
    out = workdir / "spent.json"
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        _CHILD,
        str(out),
        f"callbacks={callbacks}",
        "trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    return time.perf_counter() - start, json.loads(out.read_text())


def _command_rows(args: argparse.Namespace) -> list[Row]:
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"default": [], "curvature": []}
    for _ in range(args.repeats):
        for callbacks, samples in runs.items():  # alternated: load changes hit both
            with tempfile.TemporaryDirectory() as tmp:
                samples.append(_timed_command(callbacks, Path(tmp), args.threads))
    model = "the default run's whole command (curvlab-train, as make train runs it)"
    without = [wall for wall, _ in runs["default"]]
    with_cb = [wall for wall, _ in runs["curvature"]]
    inside = [spent["hooks"] for _, spent in runs["curvature"]]
    shares = [1 + t / (wall - t) for wall, t in zip(with_cb, inside, strict=True)]
    return [
        Row(model, "callbacks=default, wall time", 1e3 * min(without), 1.0, 1.0),
        Row(
            model,
            "callbacks=curvature, wall time",
            1e3 * min(with_cb),
            min(with_cb) / min(without),
            statistics.median(with_cb) / statistics.median(without),
        ),
        Row(
            model,
            "of it inside the callback",
            1e3 * statistics.median(inside),
            min(shares),
            statistics.median(shares),
        ),
    ]


def callback_overhead(args: argparse.Namespace) -> list[Row]:
    """What the curvature callback at its default schedule (``callbacks=curvature``) adds to
    the default run (MLP on digits, 20 steps per epoch, MLflow logging).

    Two views. ``trainer.fit`` at the run's own 20 epochs and at 200, with the time spent
    inside the callback's hooks taken out of each run's own fit time, so load from other
    tenants slows both alike: the ratio is fit time over fit time without the callback's
    share. And the whole ``curvlab-train`` command, the wall time a user waits for: an A/B of
    ``callbacks=default`` against ``callbacks=curvature`` (alternated, noisy on a shared
    machine) and, within the curvature runs, the callback's own share. Best and median of
    ``--repeats``; ``--models`` is not used.
    """
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    rows = []
    for epochs in (20, 200):
        samples = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                samples.append(_timed_fit([f"trainer.max_epochs={epochs}"], Path(tmp)))
        rows += _fit_rows(epochs, samples)
    return rows + _command_rows(args)


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "hvp_ratio": hvp_vs_gradient,
    "callback_overhead": callback_overhead,
}

# What each measurement's ratio columns divide by.
BASELINES = {"hvp_ratio": "gradient", "callback_overhead": "callback off"}
# Decimals of the ratios: the callback's few percent need the third.
DIGITS = {"callback_overhead": 3}


def main() -> None:
    if sys.argv[1:2] == [_CHILD]:
        _command_child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(MEASUREMENTS)}; default all")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--models", nargs="*", help="keep cases whose name has one of these")
    args = parser.parse_args()
    unknown = set(args.names) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s) {sorted(unknown)}; known: {list(MEASUREMENTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}, repeats {args.repeats}\n"
    )
    for name in args.names or MEASUREMENTS:
        base = BASELINES[name]
        header = f"| model | quantity | best ms | x {base} (best) | x {base} (median) |"
        print(f"## {name}\n\n{header}\n| --- | --- | --- | --- | --- |")
        for row in MEASUREMENTS[name](args):
            digits = DIGITS.get(name, 2)
            print(
                f"| {row.model} | {row.quantity} | {row.ms:.1f} | {row.ratio:.{digits}f} "
                f"| {row.median_ratio:.{digits}f} |"
            )
        print()


if __name__ == "__main__":
    main()
