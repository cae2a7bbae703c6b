"""Under DDP each rank measures its shard, and every rank ends with the whole batch's figures.

Two gloo processes on CPU hold shards of unequal size (17 and 16 of 33 examples); their
all-reduced figures must equal one process measuring the union (1e-5 relative), and the two
ranks must agree bit for bit, or their Lanczos iterations (and collectives) would diverge.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from curvature_helpers import tiny_problem
from torch import nn

from curvlab.callbacks import CurvatureProbe, stability_rule
from curvlab.callbacks.measure import shard, shard_sum_reduce
from curvlab.curvature import check_second_order

WORLD_SIZE = 2
EXAMPLES = 33


def setup_problem() -> tuple[nn.Module, nn.Module, tuple, torch.optim.Optimizer]:
    """The tiny MLP after two Adam steps on the whole batch (the same in every process)."""
    model, loss_fn, batch = tiny_problem(EXAMPLES)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()
    optimizer.zero_grad()
    return model, loss_fn, batch, optimizer


def two_measurements(model, loss_fn, batch, optimizer, reduce) -> list[dict[str, float]]:
    """Two measurements of every figure, the second warm-started, with Adam's rule."""
    probe = CurvatureProbe(top_k=2, max_iter=40, tol=1e-6, trace_probes=8)
    rule = stability_rule(optimizer, list(model.parameters()))
    return [probe.measure(model, loss_fn, batch, reduce, rule) for _ in range(2)]


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model, loss_fn, batch, optimizer = setup_problem()
        wrapped = nn.parallel.DistributedDataParallel(model)
        local = shard(batch, rank, WORLD_SIZE)

        # The wrapper is refused; the callback measures wrapped.module.
        try:
            check_second_order(wrapped)
            refused = False
        except ValueError:
            refused = True
        reduce = shard_sum_reduce(len(local[0]) / EXAMPLES)
        figures = two_measurements(wrapped.module, loss_fn, local, optimizer, reduce)
        out = {"figures": figures, "refused": refused, "rows": len(local[0])}
        torch.save(out, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_two_ranks_measure_what_one_process_measures_on_the_union(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD_SIZE)]

    model, loss_fn, batch, optimizer = setup_problem()
    single = two_measurements(model, loss_fn, batch, optimizer, reduce=None)

    assert [r["rows"] for r in ranks] == [17, 16]
    assert all(r["refused"] for r in ranks)
    assert ranks[0]["figures"] == ranks[1]["figures"]  # bit-identical on every rank
    for distributed, reference in zip(ranks[0]["figures"], single, strict=True):
        assert set(distributed) == set(reference)
        for key in ("curvature/lambda_max", "curvature/lambda_2", "curvature/trace"):
            assert distributed[key] == pytest.approx(reference[key], rel=1e-5), key
        for key in ("curvature/gradient_curvature", "curvature/preconditioned_sharpness"):
            assert distributed[key] == pytest.approx(reference[key], rel=1e-5), key
        assert distributed["curvature/stability_ratio"] == pytest.approx(
            reference["curvature/stability_ratio"], rel=1e-5
        )
