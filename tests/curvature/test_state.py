"""Every curvature function leaves the model, its gradients and the global RNG as found."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from curvlab import curvature


def noisy_model() -> nn.Module:
    """Batch norm and dropout: the two layers whose behaviour depends on train/eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)
    ).double()


def ones(model: nn.Module) -> list[Tensor]:
    return [torch.ones_like(p) for p in model.parameters()]


CALLS: dict[str, Callable] = {
    "hvp": lambda m, f, b: curvature.hvp(m, f, b, ones(m)),
    "hvp_forward": lambda m, f, b: curvature.hvp(m, f, b, ones(m), method="forward"),
    "ggn": lambda m, f, b: curvature.ggn_vector_product(m, f, b, ones(m)),
    "eigen": lambda m, f, b: curvature.top_eigenvalues(m, f, b, k=2, max_iter=8),
    "trace": lambda m, f, b: curvature.hessian_trace(m, f, b, max_probes=4),
    "gradient_curvature": lambda m, f, b: curvature.gradient_curvature(m, f, b),
    "density": lambda m, f, b: curvature.spectral_density(m, f, b, num_probes=2, num_steps=4),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_model_and_rng_are_left_as_found(name: str) -> None:
    model = noisy_model()
    model.train()
    model[3].eval()  # a mixed state must survive too
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, dtype=torch.float64, generator=gen)
    batch = (x, torch.randint(0, 3, (16,), generator=gen))
    model(x).sum().backward()  # running stats move and .grad is set ...
    model[4].bias.grad = None  # ... except on one parameter

    params = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()

    CALLS[name](model, nn.CrossEntropyLoss(), batch)

    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters(), strict=True))
    for saved, p in zip(grads, model.parameters(), strict=True):
        assert (saved is None and p.grad is None) or torch.equal(saved, p.grad)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert modes == [m.training for m in model.modules()]
    assert torch.equal(rng, torch.get_rng_state())


class FrozenStats(nn.Sequential):
    """Overrides ``train`` (keeps its batch norm in eval mode), as fine-tuning code does."""

    def train(self, mode: bool = True) -> FrozenStats:
        super().train(mode)
        self.calls.append(mode)
        self[1].eval()
        return self


def test_modules_that_override_train_are_called_and_restored() -> None:
    """measurement_mode sets flags directly, except where ``train`` does more than that."""
    torch.manual_seed(0)
    inner = FrozenStats(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5)).double()
    inner.calls = []
    model = nn.Sequential(inner, nn.Linear(8, 3)).double()
    model.train()
    modes = [m.training for m in model.modules()]  # the batch norm is in eval mode
    inner.calls.clear()
    seen = []

    with curvature.measurement_mode(model):
        seen = [m.training for m in model.modules()]

    assert inner.calls == [False, True]
    assert seen == [False] * len(seen)
    assert modes == [m.training for m in model.modules()] and not modes[3]


def test_dropout_is_off_during_measurement() -> None:
    """In train mode the product equals the eval-mode one, call after call."""
    model = noisy_model()
    batch = (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,)))
    loss_fn = nn.CrossEntropyLoss()

    model.train()
    first = curvature.hvp(model, loss_fn, batch, ones(model), method="reverse")
    second = curvature.hvp(model, loss_fn, batch, ones(model), method="reverse")
    model.eval()
    evaluated = curvature.hvp(model, loss_fn, batch, ones(model), method="reverse")

    for a, b, c in zip(first, second, evaluated, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_probes_come_from_the_seed_not_the_global_rng(mlp_problem) -> None:
    model, loss_fn, batch = mlp_problem

    torch.manual_seed(1)
    a = curvature.hessian_trace(model, loss_fn, batch, max_probes=6, rtol=0, seed=3)
    torch.manual_seed(2)
    b = curvature.hessian_trace(model, loss_fn, batch, max_probes=6, rtol=0, seed=3)
    c = curvature.hessian_trace(model, loss_fn, batch, max_probes=6, rtol=0, seed=4)

    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)


def test_compiled_modules_are_refused() -> None:
    model = nn.Linear(2, 2)
    wrapped = nn.Module()
    wrapped._orig_mod = model  # what torch.compile's wrapper carries

    with pytest.raises(ValueError, match="_orig_mod"):
        curvature.check_second_order(wrapped)
