"""LAMB under DistributedDataParallel: two gloo processes on CPU end with identical parameters.

After DDP's all-reduce every rank holds the same averaged gradient, so the per-tensor trust
ratios agree without further communication.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from curvlab.optim import Lamb

WORLD_SIZE = 2
STEPS = 5
GLOBAL_BATCH = 32


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 8, generator=gen), torch.randint(
        0, 4, (GLOBAL_BATCH,), generator=gen
    )


def make_optimizer(model: nn.Module) -> Lamb:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return Lamb(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "layer_adaptation": False}],
        lr=0.05,
        max_grad_norm=1.0,
    )


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file rendezvous: no port to pick, so no race with other tests' processes for one.
    store = Path(out_dir) / "rendezvous"
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        model = nn.parallel.DistributedDataParallel(make_model())
        opt = make_optimizer(model.module)
        inputs, targets = global_batch()
        shard = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[shard]), targets[shard])
            loss.backward()  # DDP averages the gradients over the ranks here
            opt.step()
        torch.save(flat_params(model.module), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_two_ranks_hold_identical_parameters(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    # One process on the whole batch takes the same steps (up to the all-reduce's rounding).
    model = make_model()
    opt = make_optimizer(model)
    inputs, targets = global_batch()
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.step()
    single = flat_params(model)

    assert torch.equal(ranks[0], ranks[1])
    torch.testing.assert_close(ranks[0], single, rtol=1e-5, atol=1e-6)
    assert float((single - flat_params(make_model())).norm()) > 0.1  # the steps moved it
