"""H v, G v and g^T H g against the guide (2.11.1, 2.11.2) and dense float64 Hessians."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from curvlab.curvature import ggn_vector_product, gradient_curvature, hvp
from curvlab.models import MLP, ViT


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


class GuideQuadratic(nn.Module):
    """Guide 2.11.1: f(w1, w2) = w1^2 + 3 w1 w2 + 2 w2^2, returned for every input row."""

    def __init__(self, w1: float, w2: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w1, w2], dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        w1, w2 = self.w
        return (w1**2 + 3 * w1 * w2 + 2 * w2**2).expand(len(x))


def mean_output(out: Tensor, _: Tensor) -> Tensor:
    return out.mean()


@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_guide_2_11_1_scalar_hvp(method: str) -> None:
    """H = [[2, 3], [3, 4]] at any w, so H (1, -1) = (-1, -1), as the guide computes."""
    model = GuideQuadratic(0.7, -1.3)
    batch = (torch.zeros(1, 1), torch.zeros(1))
    u = [torch.tensor([1.0, -1.0], dtype=torch.float64)]

    (hu,) = hvp(model, mean_output, batch, u, method=method)

    assert torch.equal(hu, torch.tensor([-1.0, -1.0], dtype=torch.float64))


class GuideThreeLayer(nn.Module):
    """Guide 2.11.2: y_hat = w3 (w2 (w1 x + b1) + b2) + b3, theta = (w1, b1, w2, b2, w3, b3)."""

    def __init__(self, theta: list[float]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(1, 1).double() for _ in range(3)))
        with torch.no_grad():
            for p, value in zip(self.parameters(), theta, strict=True):
                p.fill_(value)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def half_squared_error(y_hat: Tensor, y: Tensor) -> Tensor:
    return 0.5 * ((y_hat - y) ** 2).mean()


def test_guide_2_11_2_three_layer_network() -> None:
    """g, H u and G u of the guide's scalar network, against its closed forms."""
    theta = [0.5, 0.1, -0.3, 0.2, 0.8, -0.1]
    x, y = 2.0, 1.0
    u_vals = [0.3, -0.2, 0.5, 0.1, -0.4, 0.7]
    model = GuideThreeLayer(theta)
    batch = (torch.tensor([[x]], dtype=torch.float64), torch.tensor([[y]], dtype=torch.float64))
    u = [
        torch.tensor(value, dtype=torch.float64).reshape(p.shape)
        for p, value in zip(model.parameters(), u_vals, strict=True)
    ]

    # The guide's scalar s(theta) = grad f^T u, written out, differentiated once by autograd.
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    w1, b1, w2, b2, w3, b3 = t
    a1 = w1 * x + b1
    a2 = w2 * a1 + b2
    y_hat = w3 * a2 + b3
    jac = torch.stack([w3 * w2 * x, w3 * w2, w3 * a1, w3, a2, torch.ones_like(w1)])
    s = (y_hat - y) * (jac * torch.tensor(u_vals, dtype=torch.float64)).sum()
    (hu_guide,) = torch.autograd.grad(s, t)

    hu = torch.cat([h.reshape(-1) for h in hvp(model, half_squared_error, batch, u)])
    gu = torch.cat(
        [h.reshape(-1) for h in ggn_vector_product(model, half_squared_error, batch, u)]
    )

    torch.testing.assert_close(hu, hu_guide, rtol=1e-12, atol=1e-14)
    # With dL/dy_hat^2 = 1, the Gauss-Newton matrix is J J^T for the guide's gradient vector J.
    j = jac.detach()
    torch.testing.assert_close(gu, j * (j @ torch.tensor(u_vals, dtype=torch.float64)))


@pytest.mark.parametrize("method", ["reverse", "forward", "auto"])
def test_hvp_matches_dense_hessian_mlp(mlp_problem, dense, method: str) -> None:
    model, loss_fn, batch = mlp_problem
    v = dense.randn(model, 1)

    hv = dense.flat(hvp(model, loss_fn, batch, v, method=method))

    assert rel_err(hv, mlp_problem.hessian @ dense.flat(v)) < 1e-8


@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_hvp_matches_dense_hessian_vit(vit_problem, dense, method: str) -> None:
    model, loss_fn, batch = vit_problem
    v = dense.randn(model, 2)

    hv = dense.flat(hvp(model, loss_fn, batch, v, method=method))

    assert rel_err(hv, vit_problem.hessian @ dense.flat(v)) < 1e-8


def test_list_of_batches_weights_by_size(mlp_problem, dense) -> None:
    """Pairs of 20 and 12 examples give the Hessian of the 32-example mean loss."""
    model, loss_fn, (x, y) = mlp_problem
    v = dense.randn(model, 3)
    pieces = [(x[:20], y[:20]), (x[20:], y[20:])]

    whole = dense.flat(hvp(model, loss_fn, (x, y), v, method="reverse"))
    for method in ("reverse", "forward"):
        split = dense.flat(hvp(model, loss_fn, pieces, v, method=method))
        assert rel_err(split, whole) < 1e-12


def test_ggn_matches_dense_and_is_psd(mlp_problem, dense) -> None:
    model, loss_fn, batch = mlp_problem
    g_dense = mlp_problem.ggn

    for seed in range(3):
        v = dense.randn(model, seed)
        gv = dense.flat(ggn_vector_product(model, loss_fn, batch, v))
        assert rel_err(gv, g_dense @ dense.flat(v)) < 1e-8
        assert float(dense.flat(v) @ gv) > 0
    assert float(torch.linalg.eigvalsh(g_dense).min()) > -1e-12


def test_ggn_equals_hessian_for_a_linear_model(dense) -> None:
    """Softmax regression is linear in theta, so the dropped term vanishes: G = H."""
    torch.manual_seed(1)
    model = MLP((5,), 4, hidden=[]).double()
    batch = (torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 4, (16,)))
    v = dense.randn(model, 4)
    loss_fn = nn.CrossEntropyLoss()

    gv = dense.flat(ggn_vector_product(model, loss_fn, batch, v))
    hv = dense.flat(hvp(model, loss_fn, batch, v))

    assert rel_err(gv, hv) < 1e-12


def test_gradient_curvature_matches_dense(mlp_problem, dense) -> None:
    model, loss_fn, (x, y) = mlp_problem
    loss = loss_fn(model(x), y)
    g = dense.flat(torch.autograd.grad(loss, list(model.parameters())))
    h = mlp_problem.hessian

    result = gradient_curvature(model, loss_fn, (x, y))

    assert result.curvature == pytest.approx(float(g @ h @ g / (g @ g)), rel=1e-10)
    assert result.grad_norm == pytest.approx(float(g.norm()), rel=1e-12)
    assert result.n_hvp == 1


def test_fused_attention_is_refused_with_the_config_switch() -> None:
    model = ViT((1, 4, 4), 3, patch_size=2, embed_dim=4, depth=1, num_heads=2, attention="sdpa")
    batch = (torch.randn(2, 1, 4, 4), torch.tensor([0, 1]))
    v = [torch.zeros_like(p) for p in model.parameters()]

    with pytest.raises(ValueError, match=r"model\.attention=math"):
        hvp(model, nn.CrossEntropyLoss(), batch, v)


def test_works_under_inference_mode(mlp_problem, dense) -> None:
    """Validation hooks run under inference_mode; the batch there is an inference tensor."""
    model, loss_fn, (x, y) = mlp_problem
    v = dense.randn(model, 5)
    expected = dense.flat(hvp(model, loss_fn, (x, y), v))

    with torch.inference_mode():
        x_inf, y_inf = x.clone(), y.clone()
        got = dense.flat(hvp(model, loss_fn, (x_inf, y_inf), v))

    assert rel_err(got, expected) < 1e-14
