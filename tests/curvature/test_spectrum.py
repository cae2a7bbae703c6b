"""Eigenvalues, trace and spectral density against dense float64 eigendecompositions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from curvlab.curvature import (
    adam_preconditioner,
    hessian_trace,
    spectral_density,
    top_eigenvalues,
)


def by_magnitude(eigenvalues: Tensor, k: int) -> Tensor:
    return eigenvalues[eigenvalues.abs().argsort(descending=True)[:k]]


@pytest.mark.parametrize("problem_name", ["mlp_problem", "vit_problem"])
def test_top_eigenvalues_match_eigvalsh(problem_name: str, request, dense) -> None:
    problem = request.getfixturevalue(problem_name)
    model, loss_fn, batch = problem
    expected = by_magnitude(torch.linalg.eigvalsh(problem.hessian), 3)

    result = top_eigenvalues(model, loss_fn, batch, k=3)

    assert result.converged
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-4, atol=0)
    for theta, vector in zip(result.eigenvalues, result.eigenvectors, strict=True):
        y = dense.flat(vector)
        assert float(y.norm()) == pytest.approx(1.0, abs=1e-10)
        assert float((problem.hessian @ y - theta * y).norm()) < 1e-3 * abs(float(theta))


def test_guide_2_11_1_eigenvalues() -> None:
    """H = [[2, 3], [3, 4]] has eigenvalues 3 +- sqrt(10); two Lanczos steps are exact."""
    w = nn.Parameter(torch.tensor([0.2, 0.4], dtype=torch.float64))
    model = nn.Module()
    model.w = w
    model.forward = lambda x: (w[0] ** 2 + 3 * w[0] * w[1] + 2 * w[1] ** 2).expand(len(x))

    result = top_eigenvalues(
        model, lambda out, _: out.mean(), (torch.zeros(1), torch.zeros(1)), k=2
    )

    expected = torch.tensor([3 + math.sqrt(10), 3 - math.sqrt(10)], dtype=torch.float64)
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-12, atol=1e-12)
    assert result.iterations == 2


def test_warm_start_converges_in_fewer_steps(mlp_problem) -> None:
    model, loss_fn, batch = mlp_problem
    cold = top_eigenvalues(model, loss_fn, batch, k=1, tol=1e-6, seed=0)

    warm = top_eigenvalues(model, loss_fn, batch, k=1, tol=1e-6, seed=1, init=cold.eigenvectors)

    assert warm.iterations < cold.iterations
    assert warm.n_hvp == warm.iterations
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, rtol=1e-8, atol=0)


def test_preconditioned_eigenvalues(mlp_problem, dense) -> None:
    """With diagonal P the iteration runs on P^{-1/2} H P^{-1/2} (the spectrum of P^{-1} H)."""
    model, loss_fn, batch = mlp_problem
    gen = torch.Generator().manual_seed(7)
    p_diag = [torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.1 for p in model.parameters()]
    s = dense.flat(p_diag).rsqrt()
    expected = by_magnitude(torch.linalg.eigvalsh(s[:, None] * mlp_problem.hessian * s), 2)

    result = top_eigenvalues(model, loss_fn, batch, k=2, preconditioner=p_diag)

    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-4, atol=0)


def test_adam_preconditioner_reads_bias_corrected_second_moment() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99), eps=1e-6)
    grads_sq = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3, dtype=torch.float64)).pow(2).mean().backward()
        for acc, p in zip(grads_sq, model.parameters(), strict=True):
            acc.mul_(0.99).add_(0.01 * p.grad**2)
        opt.step()

    p_diag = adam_preconditioner(opt, list(model.parameters()))

    for acc, got in zip(grads_sq, p_diag, strict=True):
        torch.testing.assert_close(got, (acc / (1 - 0.99**3)).sqrt() + 1e-6)


def test_ggn_eigenvalues(mlp_problem) -> None:
    model, loss_fn, batch = mlp_problem
    expected = by_magnitude(torch.linalg.eigvalsh(mlp_problem.ggn), 2)

    result = top_eigenvalues(model, loss_fn, batch, k=2, curvature="ggn")

    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("problem_name", ["mlp_problem", "vit_problem"])
def test_hutchinson_covers_the_trace(problem_name: str, request) -> None:
    problem = request.getfixturevalue(problem_name)
    model, loss_fn, batch = problem
    true_trace = float(problem.hessian.trace())

    result = hessian_trace(model, loss_fn, batch, max_probes=60, rtol=0.0, seed=0)

    assert result.num_probes == 60 and len(result.samples) == 60
    assert result.stderr == pytest.approx(float(result.samples.std()) / math.sqrt(60))
    assert abs(result.trace - true_trace) <= 3 * result.stderr


def test_hutchinson_stops_at_the_relative_error() -> None:
    """A Hessian proportional to I gives z^T H z = c n for every probe: zero spread."""
    w = nn.Parameter(torch.ones(5, dtype=torch.float64))
    model = nn.Module()
    model.w = w
    model.forward = lambda x: (1.5 * w.pow(2).sum()).expand(len(x))

    result = hessian_trace(
        model, lambda out, _: out.mean(), (torch.zeros(1), torch.zeros(1)), rtol=0.01
    )

    assert result.num_probes == 10  # min_probes
    assert result.trace == pytest.approx(15.0) and result.stderr == pytest.approx(0.0)


def test_slq_nodes_moments_and_density(mlp_problem) -> None:
    """Full-length Lanczos recovers the spectrum; short runs keep the low moments exactly."""
    model, loss_fn, batch = mlp_problem
    n = sum(p.numel() for p in model.parameters())
    eigenvalues = torch.linalg.eigvalsh(mlp_problem.hessian)
    scale = float(eigenvalues.abs().max())

    full = spectral_density(model, loss_fn, batch, num_probes=2, num_steps=n, seed=5)
    short = spectral_density(model, loss_fn, batch, num_probes=2, num_steps=6, seed=5)

    for theta, tau in zip(full.nodes, full.weights, strict=True):
        torch.testing.assert_close(theta, eigenvalues, rtol=0, atol=1e-8 * scale)
        assert float(tau.sum()) == pytest.approx(1.0, abs=1e-12)
    # Gauss quadrature with m nodes integrates polynomials of degree < 2m exactly.
    for p in range(2 * 6):
        assert short.moment(p) == pytest.approx(full.moment(p), rel=1e-7, abs=1e-12 * scale**p)
    grid = torch.linspace(-2 * scale, 2 * scale, 4001)
    mass = float(torch.trapezoid(full.density(grid, sigma=scale / 50), grid))
    assert mass == pytest.approx(1.0, abs=1e-3)
    assert short.n_hvp == 12
