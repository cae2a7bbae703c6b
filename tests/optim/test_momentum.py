"""The guide's averaging momentum (section 1.3.2) and how it differs from PyTorch's SGD."""

from __future__ import annotations

import pytest
import torch

from curvlab.optim import Momentum


def trajectory(
    opt_cls: type[torch.optim.Optimizer], grads: list[float], **kwargs: object
) -> list[float]:
    theta = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = opt_cls([theta], **kwargs)
    out = []
    for g in grads:
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(float(theta.detach()))
    return out


@pytest.mark.parametrize("foreach", [True, False])
def test_plain_momentum_follows_the_guide_by_hand(foreach: bool) -> None:
    # v1 = 0.1 * 1 = 0.1, v2 = 0.9 * 0.1 + 0.1 * 1 = 0.19, v3 = 0.9 * 0.19 + 0.1 * (-2) = -0.029
    thetas = trajectory(Momentum, [1.0, 1.0, -2.0], lr=0.5, beta=0.9, foreach=foreach)

    assert thetas == pytest.approx([-0.05, -0.05 - 0.095, -0.145 + 0.0145], abs=1e-15)


@pytest.mark.parametrize("foreach", [True, False])
def test_nesterov_steps_along_the_look_ahead_average(foreach: bool) -> None:
    # step_t = 0.9 * v_t + 0.1 * g_t: 0.9 * 0.1 + 0.1 = 0.19, then 0.9 * 0.19 + 0.1 = 0.271
    thetas = trajectory(Momentum, [1.0, 1.0], lr=0.5, beta=0.9, nesterov=True, foreach=foreach)

    assert thetas == pytest.approx([-0.095, -0.095 - 0.1355], abs=1e-15)


def test_weight_decay_is_folded_into_the_gradient() -> None:
    theta = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    theta.grad = torch.tensor([1.0], dtype=torch.float64)
    Momentum([theta], lr=0.5, beta=0.9, weight_decay=0.1).step()

    # g = 1 + 0.1 * 2 = 1.2, v = 0.12, theta = 2 - 0.06
    assert float(theta.detach()) == pytest.approx(1.94, abs=1e-15)


def test_it_is_sgd_with_a_rescaled_rate_but_not_sgd_with_dampening() -> None:
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(50, generator=gen, dtype=torch.float64).tolist()
    ours = trajectory(Momentum, grads, lr=0.1, beta=0.9)

    # v_t = (1 - beta) * (heavy-ball sum), so eta * v_t = SGD(lr = eta * (1 - beta)).
    rescaled = trajectory(torch.optim.SGD, grads, lr=0.1 * 0.1, momentum=0.9)
    assert ours == pytest.approx(rescaled, rel=1e-12, abs=1e-15)

    # SGD(momentum=beta, dampening=beta) starts its buffer at g, not (1 - beta) * g.
    damped = trajectory(torch.optim.SGD, grads, lr=0.1, momentum=0.9, dampening=0.9)
    assert damped[0] == pytest.approx(-0.1 * grads[0])
    assert ours[0] == pytest.approx(-0.1 * 0.1 * grads[0])


def test_buffer_uses_sgds_state_key() -> None:
    theta = torch.nn.Parameter(torch.ones(3))
    theta.grad = torch.ones(3)
    opt = Momentum([theta], beta=0.5)
    opt.step()

    assert set(opt.state[theta]) == {"momentum_buffer"}
    assert opt.state[theta]["momentum_buffer"].tolist() == [0.5, 0.5, 0.5]
