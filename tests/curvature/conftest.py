"""Dense float64 references for the curvature tests: Hessians and Gauss-Newton matrices."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from curvlab.models import MLP, ViT


def _flat_fn(model: nn.Module, fn):
    """Wrap ``fn(outputs_of(theta))`` as a function of the flat trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def of_theta(theta: Tensor):
        pieces = theta.split([p.numel() for _, p in named])
        params = {n: t.view_as(p) for (n, p), t in zip(named, pieces, strict=True)}
        return fn(lambda x: functional_call(model, params, (x,)))

    return of_theta, theta0


def dense_hessian(model: nn.Module, loss_fn, batch) -> Tensor:
    """The full Hessian of ``loss_fn(model(x), y)`` in the flat trainable parameters."""
    x, y = batch
    f, theta0 = _flat_fn(model, lambda forward: loss_fn(forward(x), y))
    return torch.autograd.functional.hessian(f, theta0, vectorize=True)


def dense_ggn(model: nn.Module, loss_fn, batch) -> Tensor:
    """J^T H_z J built from the dense output Jacobian and the loss Hessian in z."""
    x, y = batch
    f, theta0 = _flat_fn(model, lambda forward: forward(x).reshape(-1))
    jac = torch.autograd.functional.jacobian(f, theta0, vectorize=True)  # (B*C, n)
    z = model(x).detach()
    h_z = torch.autograd.functional.hessian(
        lambda z_flat: loss_fn(z_flat.view_as(z), y), z.reshape(-1)
    )
    return jac.T @ h_z @ jac


def flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def random_like_params(model: nn.Module, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()]


@pytest.fixture
def dense() -> SimpleNamespace:
    """Reference helpers: ``hessian``, ``ggn``, ``flat``, ``randn``."""
    return SimpleNamespace(
        hessian=dense_hessian, ggn=dense_ggn, flat=flat, randn=random_like_params
    )


@dataclass
class Problem:
    """A model, its loss and a batch, with the dense references computed once per session.

    The tests share it, which also checks that nothing under test changes the model.
    """

    model: nn.Module
    loss_fn: nn.Module
    batch: tuple[Tensor, Tensor]

    @cached_property
    def hessian(self) -> Tensor:
        return dense_hessian(self.model, self.loss_fn, self.batch)

    @cached_property
    def ggn(self) -> Tensor:
        return dense_ggn(self.model, self.loss_fn, self.batch)

    def __iter__(self):
        return iter((self.model, self.loss_fn, self.batch))


@pytest.fixture(scope="session")
def mlp_problem() -> Problem:
    """A float64 tanh MLP (4 -> 6 -> 5 -> 3, 83 parameters), cross entropy, 32 examples."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MLP((4,), 3, hidden=[6, 5], activations="tanh").double()
    x = torch.randn(32, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    return Problem(model, nn.CrossEntropyLoss(), (x, y))


@pytest.fixture(scope="session")
def vit_problem() -> Problem:
    """A float64 one-block ViT (203 parameters) with plain-math attention, 8 4x4 images."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = ViT(
        (1, 4, 4),
        3,
        patch_size=2,
        embed_dim=4,
        depth=1,
        num_heads=2,
        mlp_ratio=1.0,
        attention="math",
    ).double()
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (8,), generator=gen)
    return Problem(model, nn.CrossEntropyLoss(), (x, y))
