"""Momentum in the guide's averaging form (section 1.3.2).

    v_t = beta * v_{t-1} + (1 - beta) * g_t,   v_0 = 0
    theta_{t+1} = theta_t - eta * v_t

With ``nesterov=True`` the step looks one average ahead: theta_{t+1} = theta_t - eta *
(beta * v_t + (1 - beta) * g_t). PyTorch's SGD keeps the heavy-ball sum v = mu * v + g instead
and starts it at g, so SGD(momentum=beta, dampening=beta) differs from the first step on; the
guide's form equals SGD(lr=eta * (1 - beta), momentum=beta) for a fixed beta, but then the
configured rate is no longer the guide's eta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class Momentum(torch.optim.Optimizer):
    """Exponentially averaged gradient steps (guide 1.3.2), plain or Nesterov.

    The buffer v_t is stored under SGD's key ``momentum_buffer``.

    Args:
        params: parameters or parameter groups.
        lr: eta.
        beta: averaging coefficient of v_t.
        nesterov: step along beta * v_t + (1 - beta) * g_t instead of v_t.
        weight_decay: L2 penalty folded into the gradient, g_t + weight_decay * theta_t.
        foreach: update all tensors of a group with ``torch._foreach_*`` ops; None picks it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        beta: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr, beta=beta, nesterov=nesterov, weight_decay=weight_decay, foreach=foreach
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step for every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # v_0 = 0, so the first step moves by (1 - beta) * g, as the guide's recurrence does.
            v = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v.append(state["momentum_buffer"])
            g = [p.grad for p in params]
            if group["weight_decay"] != 0.0:
                g = torch._foreach_add(g, params, alpha=group["weight_decay"])

            if group["foreach"] is False:
                for theta, g_t, v_t in zip(params, g, v, strict=True):
                    _single_tensor_update(theta, g_t, v_t, group)
            else:
                _multi_tensor_update(params, g, v, group)

        return loss


def _multi_tensor_update(
    theta: list[Tensor], g: list[Tensor], v: list[Tensor], group: dict[str, Any]
) -> None:
    beta = group["beta"]

    # v_t = beta * v_{t-1} + (1 - beta) * g_t
    torch._foreach_lerp_(v, g, 1 - beta)

    # Nesterov: the look-ahead average beta * v_t + (1 - beta) * g_t
    step = torch._foreach_lerp(v, g, 1 - beta) if group["nesterov"] else v

    # theta_{t+1} = theta_t - eta * step
    torch._foreach_add_(theta, step, alpha=-group["lr"])


def _single_tensor_update(theta: Tensor, g: Tensor, v: Tensor, group: dict[str, Any]) -> None:
    beta = group["beta"]
    v.lerp_(g, 1 - beta)
    step = torch.lerp(v, g, 1 - beta) if group["nesterov"] else v
    theta.add_(step, alpha=-group["lr"])
