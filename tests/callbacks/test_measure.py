"""The callback's figures against dense float64 references on a tiny MLP."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from curvature_helpers import dense_gradient, dense_hessian, flat, tiny_problem

from curvlab.callbacks import CurvatureProbe, stability_rule


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def largest(eigenvalues: torch.Tensor, k: int) -> torch.Tensor:
    return eigenvalues.sort(descending=True).values[:k]


def test_lambda_max_and_top_k_match_eigvalsh() -> None:
    model, loss_fn, batch = tiny_problem()
    expected = largest(torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batch)), 3)
    probe = CurvatureProbe(["lambda_max"], top_k=3, max_iter=60, tol=1e-6)

    out = probe.measure(model, loss_fn, batch)

    measured = [out["curvature/lambda_max"], out["curvature/lambda_2"], out["curvature/lambda_3"]]
    torch.testing.assert_close(
        torch.tensor(measured, dtype=torch.float64), expected, rtol=1e-6, atol=0
    )
    assert out["curvature/n_hvp"] == out["curvature/lanczos_iterations"]


def test_lambda_max_is_the_largest_eigenvalue_not_the_largest_in_magnitude() -> None:
    """f(w) = (-5 w_1^2 + w_2^2 + 2 w_3^2) / 2 has H = diag(-5, 1, 2): lambda_max = 2."""
    curvatures = torch.tensor([-5.0, 1.0, 2.0], dtype=torch.float64)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    model.forward = lambda x: (0.5 * curvatures * model.w**2).sum().expand(len(x))
    batch = (torch.zeros(1), torch.zeros(1))

    out = CurvatureProbe(["lambda_max"], top_k=2).measure(model, lambda z, _: z.mean(), batch)

    assert out["curvature/lambda_max"] == pytest.approx(2.0, rel=1e-10)
    assert out["curvature/lambda_2"] == pytest.approx(1.0, rel=1e-10)


def test_trace_is_within_its_standard_error_of_the_dense_trace() -> None:
    model, loss_fn, batch = tiny_problem()
    h = dense_hessian(model, loss_fn, batch)
    exact = float(torch.trace(h))
    # Rademacher probes: Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2).
    expected_stderr = float((2 * ((h**2).sum() - (h.diag() ** 2).sum()) / 400).sqrt())
    probe = CurvatureProbe(["trace"], trace_probes=400)

    out = probe.measure(model, loss_fn, batch)

    assert out["curvature/n_hvp"] == 400
    assert out["curvature/trace_stderr"] == pytest.approx(expected_stderr, rel=0.3)
    assert abs(out["curvature/trace"] - exact) < 4 * expected_stderr


def test_gradient_curvature_is_g_h_g_over_g_g() -> None:
    model, loss_fn, batch = tiny_problem()
    h, g = dense_hessian(model, loss_fn, batch), dense_gradient(model, loss_fn, batch)

    out = CurvatureProbe(["gradient_curvature"]).measure(model, loss_fn, batch)

    assert out["curvature/gradient_curvature"] == pytest.approx(
        float(g @ h @ g / (g @ g)), rel=1e-10
    )
    assert out["curvature/grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert out["curvature/n_hvp"] == 1


def test_sgd_stability_ratio_is_lambda_max_times_lr_over_two() -> None:
    model, loss_fn, batch = tiny_problem()
    lambda_max = float(largest(torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batch)), 1)[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    rule = stability_rule(optimizer, list(model.parameters()))

    out = CurvatureProbe(["stability"], max_iter=60, tol=1e-6).measure(
        model, loss_fn, batch, rule=rule
    )

    assert rule is not None and rule.optimizer == "sgd" and rule.preconditioner is None
    assert out["curvature/stability_threshold"] == pytest.approx(2 / 0.3, rel=1e-12)
    assert out["curvature/stability_ratio"] == pytest.approx(lambda_max * 0.3 / 2, rel=1e-6)
    assert out["curvature/lambda_max"] == pytest.approx(lambda_max, rel=1e-6)


def test_adam_preconditioned_sharpness_matches_dense_reference() -> None:
    model, loss_fn, batch = tiny_problem()
    lr, betas, eps = 0.01, (0.9, 0.999), 1e-8
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()

    # P = sqrt(v_t / (1 - beta_2^t)) + eps from the optimizer's state, S = P^{-1/2}.
    states = [optimizer.state[p] for p in model.parameters()]
    p_diag = flat([(s["exp_avg_sq"] / (1 - betas[1] ** 3)).sqrt() + eps for s in states])
    s = p_diag.rsqrt()
    h = dense_hessian(model, loss_fn, batch)
    expected = float(largest(torch.linalg.eigvalsh(s[:, None] * h * s), 1)[0])
    rule = stability_rule(optimizer, list(model.parameters()))

    out = CurvatureProbe(["stability"], max_iter=83, tol=1e-8).measure(
        model, loss_fn, batch, rule=rule
    )

    assert out["curvature/preconditioned_sharpness"] == pytest.approx(expected, rel=1e-6)
    threshold = (2 + 2 * betas[0]) / ((1 - betas[0]) * lr)
    assert out["curvature/stability_threshold"] == pytest.approx(threshold, rel=1e-12)
    assert out["curvature/stability_ratio"] == pytest.approx(expected / threshold, rel=1e-6)
    assert "curvature/lambda_max" not in out  # H itself is not needed for Adam's figure


def test_warm_start_needs_fewer_products_on_the_second_measurement() -> None:
    model, loss_fn, batch = tiny_problem()
    warm = CurvatureProbe(["lambda_max"], max_iter=80, tol=1e-5, warm_start=True)
    cold = CurvatureProbe(["lambda_max"], max_iter=80, tol=1e-5, warm_start=False)
    first = warm.measure(model, loss_fn, batch)
    cold.measure(model, loss_fn, batch)

    # A few small training steps move theta, as between two measurements of a run.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()
    warm_second = warm.measure(model, loss_fn, batch)
    cold_second = cold.measure(model, loss_fn, batch)

    assert warm_second["curvature/n_hvp"] < cold_second["curvature/n_hvp"]
    assert warm_second["curvature/n_hvp"] < first["curvature/n_hvp"]
    assert warm_second["curvature/lambda_max"] == pytest.approx(
        cold_second["curvature/lambda_max"], rel=1e-6
    )


def test_measurement_leaves_model_and_rng_untouched() -> None:
    model, loss_fn, batch = tiny_problem()
    model.train()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()

    CurvatureProbe().measure(model, loss_fn, batch, rule=None)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_unknown_figure_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="lambda_max"):
        CurvatureProbe(["sharpness"])
