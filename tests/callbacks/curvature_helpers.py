"""Shared pieces of the curvature callback tests: a tiny float64 problem and its references."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn
from torch.func import functional_call

from curvlab.models import MLP


def tiny_problem(n: int = 32, seed: int = 0) -> tuple[nn.Module, nn.Module, tuple[Tensor, Tensor]]:
    """A float64 tanh MLP (4 -> 6 -> 5 -> 3, 83 parameters), cross entropy, ``n`` examples."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP((4,), 3, hidden=[6, 5], activations="tanh").double()
    x = torch.randn(n, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, nn.CrossEntropyLoss(), (x, y)


def dense_hessian(model: nn.Module, loss_fn: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The full Hessian of the batch loss in the flat trainable parameters (float64)."""
    x, y = batch
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of(theta: Tensor) -> Tensor:
        pieces = theta.split([p.numel() for _, p in named])
        params = {n: t.view_as(p) for (n, p), t in zip(named, pieces, strict=True)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, theta0, vectorize=True)


def dense_gradient(model: nn.Module, loss_fn: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The flat gradient g of the batch loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params)
    return torch.cat([t.reshape(-1) for t in g])


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory: ``history[key] = [(step, value), ...]``."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((step, float(value)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass
