"""Newton-CG (guide 2.11.5): exact CG on quadratics, fast convergence on a convex problem."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from curvlab.optim.newton_cg import NewtonCG, conjugate_gradient


def closure_for(opt: torch.optim.Optimizer, model: nn.Module, loss_fn, batch):
    """The standard closure: zero the gradients, forward, backward, return the loss."""

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        return loss

    return closure


def test_cg_solves_an_spd_system_in_n_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 12
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(0.5, 20.0, n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)

    result = conjugate_gradient(lambda x: a @ x, b, max_iter=100, tol=1e-10, progress_tol=0.0)

    assert result.iterations <= n and result.reason == "residual"
    torch.testing.assert_close(result.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    assert result.phi == pytest.approx(float(-0.5 * b @ torch.linalg.solve(a, b)), rel=1e-10)


def test_one_undamped_step_solves_a_quadratic_exactly() -> None:
    """Least squares has a constant Hessian 2 X^T X / N, so one Newton step is the optimum."""
    gen = torch.Generator().manual_seed(1)
    n = 8
    x = torch.randn(40, n, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(n, 1, bias=False).double()
    loss_fn = nn.MSELoss()
    opt = NewtonCG(
        model.parameters(),
        model=model,
        loss_fn=loss_fn,
        damping=0.0,
        adapt_damping=False,
        warm_start=0.0,
        max_cg_iter=n,
        cg_tol=1e-12,
        progress_tol=0.0,
    )

    opt.set_batch((x, y))
    opt.step(closure_for(opt, model, loss_fn, (x, y)))

    optimum = torch.linalg.lstsq(x, y).solution.T
    torch.testing.assert_close(model.weight.detach(), optimum, rtol=1e-9, atol=1e-10)
    assert opt.last.cg_iterations <= n
    assert opt.last.rho == pytest.approx(1.0, abs=1e-8)  # the model is the function


def digits() -> tuple[Tensor, Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0), torch.tensor(y)


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_convex_softmax_regression_converges_in_20_steps(curvature: str) -> None:
    """L2-regularised softmax regression on the 1,797 digits: F = CE + mu/2 ||theta||^2.

    F is mu-strongly convex, so F - F* <= ||grad F||^2 / (2 mu): a certificate that needs no
    reference optimum. Gradient descent with the textbook step 1/L is still far away after ten
    times as many iterations.
    """
    mu = 1e-3
    x, y = digits()
    loss_fn = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    model = nn.Linear(64, 10).double()
    start = copy.deepcopy(model)

    def objective_and_gap_bound(m: nn.Module) -> tuple[float, float]:
        f = loss_fn(m(x), y) + 0.5 * mu * sum(p.pow(2).sum() for p in m.parameters())
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(f, list(m.parameters()))])
        return float(f.detach()), float(g @ g) / (2 * mu)

    opt = NewtonCG(model.parameters(), model=model, loss_fn=loss_fn, weight_decay=mu)
    opt.set_batch((x, y))
    closure = closure_for(opt, model, loss_fn, (x, y))
    steps, bound = 0, float("inf")
    while steps < 20 and bound > 1e-4:
        opt.step(closure)
        steps += 1
        f_newton, bound = objective_and_gap_bound(model)
    assert bound <= 1e-4, f"F - F* may exceed 1e-4 after {steps} Newton-CG steps"

    # L bounds the Hessian of F: the softmax block has norm <= 1/2 (cf. sklearn's SAG step).
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    lipschitz = 0.5 * float(torch.linalg.eigvalsh(x1.T @ x1 / len(x)).max()) + mu
    gd = torch.optim.SGD(start.parameters(), lr=1 / lipschitz)
    for _ in range(10 * steps):
        gd.zero_grad()
        f = loss_fn(start(x), y) + 0.5 * mu * sum(p.pow(2).sum() for p in start.parameters())
        f.backward()
        gd.step()
    f_gd, _ = objective_and_gap_bound(start)
    assert f_gd - f_newton > 1e-3  # F* <= f_newton, so GD's gap is larger still


def test_damping_follows_levenberg_marquardt() -> None:
    """rho ~ 1 on a quadratic shrinks lambda by 2/3; a step that raises the loss is undone."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 1).double()
    loss_fn = nn.MSELoss()
    opt = NewtonCG(model.parameters(), model=model, loss_fn=loss_fn, damping=0.5)
    opt.set_batch((x, y))

    opt.step(closure_for(opt, model, loss_fn, (x, y)))
    assert opt.last.rho == pytest.approx(1.0, abs=1e-8)
    assert opt.last.damping == pytest.approx(0.5 * 2 / 3)

    # A step twice as long as the model's minimiser overshoots: rho < 1/4 grows lambda.
    opt.param_groups[0]["lr"] = 4.0
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(closure_for(opt, model, loss_fn, (x, y)))
    assert opt.last.rho < 0.25 and opt.last.damping == pytest.approx(0.5 * 2 / 3 * 1.5)
    if not opt.last.accepted:
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_state_dict_resume_is_bit_exact() -> None:
    torch.manual_seed(3)
    x, y = torch.randn(50, 6, dtype=torch.float64), torch.randint(0, 3, (50,))
    loss_fn = nn.CrossEntropyLoss()
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    opt = NewtonCG(model.parameters(), model=model, loss_fn=loss_fn)
    opt.set_batch((x, y))
    for _ in range(2):
        opt.step(closure_for(opt, model, loss_fn, (x, y)))

    twin = copy.deepcopy(model)
    twin_opt = NewtonCG(twin.parameters(), model=twin, loss_fn=loss_fn)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_opt.set_batch((x, y))
    opt.step(closure_for(opt, model, loss_fn, (x, y)))
    twin_opt.step(closure_for(twin_opt, twin, loss_fn, (x, y)))

    assert twin_opt.last == opt.last
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )


def test_contract_errors() -> None:
    model, other = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(ValueError, match="exactly the trainable parameters"):
        NewtonCG(other.parameters(), model=model, loss_fn=nn.MSELoss())

    opt = NewtonCG(model.parameters(), model=model, loss_fn=nn.MSELoss())
    with pytest.raises(ValueError, match="set_batch"):
        opt.step(lambda: torch.zeros(()))


def test_config_defaults_match_the_class() -> None:
    """conf/optimizer/newton_cg.yaml instantiates NewtonCG and repeats its defaults."""
    instantiate = pytest.importorskip("hydra.utils").instantiate
    omegaconf = pytest.importorskip("omegaconf")
    path = Path(__file__).parents[2] / "conf" / "optimizer" / "newton_cg.yaml"
    cfg = omegaconf.OmegaConf.load(path)
    model = nn.Linear(2, 2)

    opt = instantiate(cfg)(params=model.parameters(), model=model, loss_fn=nn.MSELoss())

    assert isinstance(opt, NewtonCG)
    signature = inspect.signature(NewtonCG).parameters
    for key, value in cfg.items():
        if not key.startswith("_"):
            assert signature[key].default == value, key
