"""Newton-CG under Lightning's automatic optimisation and under two-process DDP (gloo)."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from curvlab.curvature import ddp_mean_reduce, hvp, top_eigenvalues
from curvlab.optim.newton_cg import NewtonCG


def make_problem() -> tuple[nn.Module, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    return net, x, y


def manual_steps(net: nn.Module, batch: tuple[Tensor, Tensor], steps: int) -> NewtonCG:
    loss_fn = nn.CrossEntropyLoss()
    opt = NewtonCG(net.parameters(), model=net, loss_fn=loss_fn, reduce=None)
    for _ in range(steps):

        def closure() -> Tensor:
            opt.zero_grad()
            loss = loss_fn(net(batch[0]), batch[1])
            loss.backward()
            return loss

        opt.set_batch(batch)
        opt.step(closure)
    return opt


def test_lightning_automatic_optimisation_matches_a_plain_loop() -> None:
    """The wiring the training module needs: set_batch in on_train_batch_start."""
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.loss_fn = nn.CrossEntropyLoss()

        def on_train_batch_start(self, batch, batch_idx: int) -> None:
            self.trainer.optimizers[0].set_batch(batch)

        def training_step(self, batch, batch_idx: int) -> Tensor:
            return self.loss_fn(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> NewtonCG:
            return NewtonCG(self.net.parameters(), model=self.net, loss_fn=self.loss_fn)

    net, x, y = make_problem()
    reference = manual_steps(copy.deepcopy(net), (x, y), steps=3)
    module = Module(net)
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )

    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=40))

    lightning_opt = trainer.optimizers[0]
    assert lightning_opt.state[next(net.parameters())]["step"] == 3
    for a, b in zip(net.parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    net, x, y = make_problem()
    shard = (x[rank::world], y[rank::world])  # 20 examples each
    loss_fn = nn.CrossEntropyLoss()
    v = [torch.ones_like(p) for p in net.parameters()]

    # Measurements on the unwrapped module, averaged by one all-reduce per product.
    hv = hvp(net, loss_fn, shard, v, method="reverse", reduce=ddp_mean_reduce())
    eig = top_eigenvalues(net, loss_fn, shard, k=2, reduce=ddp_mean_reduce())

    # Training: gradients synchronised by DDP's backward, products by reduce="auto".
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = NewtonCG(net.parameters(), model=net, loss_fn=loss_fn)
    for _ in range(3):

        def closure() -> Tensor:
            opt.zero_grad()
            loss = loss_fn(ddp(shard[0]), shard[1])
            loss.backward()
            return loss

        opt.set_batch(shard)
        opt.step(closure)

    result = {"hv": hv, "eig": eig.eigenvalues, "params": [p.detach() for p in net.parameters()]}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow  # two spawned interpreters: 15-25 s on two shared cores
def test_ddp_two_ranks_match_one_process_on_the_union(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    net, x, y = make_problem()
    loss_fn = nn.CrossEntropyLoss()
    v = [torch.ones_like(p) for p in net.parameters()]
    hv = hvp(net, loss_fn, (x, y), v, method="reverse")
    eig = top_eigenvalues(net, loss_fn, (x, y), k=2)
    opt = manual_steps(net, (x, y), steps=3)

    for got in ranks:
        for a, b in zip(got["hv"], hv, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got["eig"], eig.eigenvalues, rtol=1e-6, atol=0)
        for a, b in zip(got["params"], opt.model.parameters(), strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-12)
    # Every rank took the same step, bit for bit.
    assert all(torch.equal(a, b) for a, b in zip(*(r["params"] for r in ranks), strict=True))
