"""Stability thresholds per optimizer, checked on quadratics, and LAMB's replayed trust ratios."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from curvature_helpers import tiny_problem
from torch import nn

from curvlab.callbacks import lamb_trust_ratios, stability_rule
from curvlab.curvature import adam_preconditioner
from curvlab.optim import Lamb, Momentum, build_optimizer


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def final_distance(
    make: Callable[[list[nn.Parameter]], torch.optim.Optimizer], lam: float
) -> float:
    """|theta| after 2,000 steps on f = lam * theta^2 / 2 from theta = 1."""
    theta = nn.Parameter(torch.ones(1, dtype=torch.float64))
    optimizer = make([theta])
    for _ in range(2000):
        optimizer.zero_grad()
        (0.5 * lam * theta**2).sum().backward()
        optimizer.step()
        if not torch.isfinite(theta).all() or theta.abs() > 1e6:
            break
    return float(theta.detach().abs().nan_to_num(1e30))


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "heavy_ball": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "heavy_ball_damped": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.5),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "momentum_average": lambda p: Momentum(p, lr=0.1, beta=0.9),
    "nesterov_average": lambda p: Momentum(p, lr=0.1, beta=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_threshold_separates_convergence_from_divergence_on_a_quadratic(name: str) -> None:
    make = OPTIMIZERS[name]
    params = [nn.Parameter(torch.ones(1, dtype=torch.float64))]
    rule = stability_rule(make(params), params)
    assert rule is not None and rule.preconditioner is None

    assert final_distance(make, 0.97 * rule.threshold) < 1e-3
    assert final_distance(make, 1.03 * rule.threshold) > 1e3
    if name == "sgd":
        assert rule.threshold == pytest.approx(2 / 0.1, rel=1e-12)


def test_group_learning_rates_enter_the_preconditioner() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1)

    rule = stability_rule(optimizer, [a, b])

    # A rate eta * s is eta with P = 1 / s: here s = 1 for a and 0.5 for b.
    assert rule.threshold == pytest.approx(20.0)
    assert torch.equal(rule.preconditioner[0], torch.ones(3))
    assert torch.equal(rule.preconditioner[1], torch.full((2,), 2.0))


def _steps(model: nn.Module, loss_fn: nn.Module, batch, optimizer, n: int) -> None:
    for _ in range(n):
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()


def test_rmsprop_and_adagrad_preconditioners_read_their_state() -> None:
    model, loss_fn, batch = tiny_problem()
    params = list(model.parameters())
    rms = torch.optim.RMSprop(params, lr=0.01, momentum=0.5, eps=1e-8)
    _steps(model, loss_fn, batch, rms, 2)
    rule = stability_rule(rms, params)
    assert rule.threshold == pytest.approx((2 + 2 * 0.5) / 0.01)
    expected = rms.state[params[0]]["square_avg"].sqrt() + 1e-8
    torch.testing.assert_close(rule.preconditioner[0], expected, rtol=1e-12, atol=0)

    adagrad = torch.optim.Adagrad(params, lr=0.1, lr_decay=0.01, eps=1e-10)
    _steps(model, loss_fn, batch, adagrad, 3)
    rule = stability_rule(adagrad, params)
    assert rule.threshold == pytest.approx(2 / 0.1)
    expected = (adagrad.state[params[0]]["sum"].sqrt() + 1e-10) * (1 + 3 * 0.01)
    torch.testing.assert_close(rule.preconditioner[0], expected, rtol=1e-12, atol=0)


def test_adaptive_rule_waits_for_state_and_unknown_optimizers_have_none() -> None:
    model, _, _ = tiny_problem()
    params = list(model.parameters())
    assert stability_rule(torch.optim.Adam(params), params) is None  # no v_t before a step
    assert stability_rule(torch.optim.LBFGS(params), params) is None


@pytest.mark.parametrize(("trust_clip", "max_grad_norm"), [(False, None), (True, 0.05)])
def test_lamb_trust_ratios_are_those_the_step_applies(trust_clip, max_grad_norm) -> None:
    model, loss_fn, batch = tiny_problem()
    factory = functools.partial(
        Lamb, lr=0.01, weight_decay=0.01, trust_clip=trust_clip, max_grad_norm=max_grad_norm
    )
    optimizer = build_optimizer(model, factory)
    _steps(model, loss_fn, batch, optimizer, 3)
    optimizer.zero_grad()
    loss_fn(model(batch[0]), batch[1]).backward()

    ratios = lamb_trust_ratios(optimizer)

    # The same step without layer adaptation moves by eta * u; with it, by eta * ratio * u.
    plain_model = copy.deepcopy(model)
    plain_opt = build_optimizer(plain_model, factory)
    plain_opt.load_state_dict(optimizer.state_dict())
    for group in plain_opt.param_groups:
        group["layer_adaptation"] = False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for m, opt in ((model, optimizer), (plain_model, plain_opt)):
        opt.zero_grad()
        loss_fn(m(batch[0]), batch[1]).backward()
        opt.step()
    adapted = {n: p.detach() for n, p in model.named_parameters()}
    plain = {n: p.detach() for n, p in plain_model.named_parameters()}

    assert set(ratios) == set(before)
    for name, x_t in before.items():
        step_norm = float((adapted[name] - x_t).norm())
        plain_norm = float((plain[name] - x_t).norm())
        assert ratios[name] == pytest.approx(step_norm / plain_norm, rel=1e-6), name
    assert ratios["layers.2.linear.bias"] == 1.0  # biases skip layer adaptation
    assert any(abs(r - 1.0) > 0.1 for r in ratios.values())
    if trust_clip:
        assert max(ratios.values()) <= 1.0


def test_lamb_rule_divides_p_by_the_trust_ratio() -> None:
    model, loss_fn, batch = tiny_problem()
    optimizer = build_optimizer(model, functools.partial(Lamb, lr=0.01))
    _steps(model, loss_fn, batch, optimizer, 2)
    params = list(model.parameters())
    ratios = {name: 0.5 for name, _ in model.named_parameters()}

    rule = stability_rule(optimizer, params, trust_ratios=ratios)

    assert rule.optimizer == "lamb"
    assert rule.threshold == pytest.approx((2 + 2 * 0.9) / (0.1 * 0.01))
    adam = adam_preconditioner(optimizer, params)
    for p_rule, p_adam in zip(rule.preconditioner, adam, strict=True):
        torch.testing.assert_close(p_rule, p_adam / 0.5, rtol=1e-12, atol=0)
