"""The ViT's closed-form R-operator against dense float64 Hessians and the double backward."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerScale
from torch import Tensor, nn

from curvlab.curvature import HessianOperator, hvp, top_eigenvalues
from curvlab.curvature._support import as_batches
from curvlab.curvature.rop import closed_form
from curvlab.models import ViT


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tiny_vit(class_token: bool = True, drop_rate: float = 0.0) -> ViT:
    """Two blocks, D = 4, h = 2, on 4x4 images: 5 tokens with the class token."""
    torch.manual_seed(0)
    return ViT(
        (1, 4, 4),
        3,
        patch_size=2,
        embed_dim=4,
        depth=2,
        num_heads=2,
        mlp_ratio=1.5,
        class_token=class_token,
        attention="math",
        drop_rate=drop_rate,
    ).double()


def images(n: int = 6, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, dtype=torch.float64, generator=gen)
    return x, torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize("class_token", [True, False], ids=["cls-token", "avg-pool"])
def test_matches_dense_hessian(class_token: bool, dense) -> None:
    """Both poolings: the class token, or the mean of the tokens with timm's fc_norm."""
    model, batch, loss_fn = tiny_vit(class_token), images(), nn.CrossEntropyLoss()
    v = dense.randn(model, 7)

    hv = dense.flat(hvp(model, loss_fn, batch, v, method="rop"))

    assert rel_err(hv, dense.hessian(model, loss_fn, batch) @ dense.flat(v)) < 1e-10


@pytest.mark.parametrize("class_token", [True, False], ids=["cls-token", "avg-pool"])
def test_an_operator_keeps_one_pass_for_all_its_products(class_token: bool, dense) -> None:
    """Products reuse one forward and backward pass: each must still be exact."""
    model, batch = tiny_vit(class_token), images()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2)  # not closed-form: autograd's H_out
    hessian = dense.hessian(model, loss_fn, batch)
    op = HessianOperator(model, loss_fn, batch, method="rop")

    for seed in (9, 10, 9):
        v = dense.randn(model, seed)
        assert rel_err(dense.flat(op.matvec(v)), hessian @ dense.flat(v)) < 1e-10


def test_the_shared_vit_problem(vit_problem, dense) -> None:
    model, loss_fn, batch = vit_problem
    v = dense.randn(model, 2)

    hv = dense.flat(hvp(model, loss_fn, batch, v, method="rop"))

    assert rel_err(hv, vit_problem.hessian @ dense.flat(v)) < 1e-10


def test_mse_on_outputs_and_list_of_batches(dense) -> None:
    model, (x, _) = tiny_vit(), images(9)
    y = torch.randn(9, 3, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    v = dense.randn(model, 8)
    pieces = [(x[:5], y[:5]), (x[5:], y[5:])]

    split = dense.flat(hvp(model, loss_fn, pieces, v, method="rop"))

    assert rel_err(split, dense.hessian(model, loss_fn, (x, y)) @ dense.flat(v)) < 1e-10


def test_default_vit_float32_agrees_with_double_backward() -> None:
    """conf/model/vit at its size and precision, dropout on in the config and in train mode:
    the product is the eval-mode one, as for every curvature method."""
    torch.manual_seed(0)
    model = ViT((1, 8, 8), 10, attention="math", drop_rate=0.1).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    v = [torch.randn_like(p) for p in model.parameters()]
    loss_fn = nn.CrossEntropyLoss()

    fast = torch.cat([t.reshape(-1) for t in hvp(model, loss_fn, (x, y), v, method="rop")])
    slow = torch.cat([t.reshape(-1) for t in hvp(model, loss_fn, (x, y), v, method="reverse")])

    assert rel_err(fast, slow) < 1e-5
    assert model.training


def test_auto_takes_it_and_lanczos_agrees(dense) -> None:
    """Single products and repeated ones (whose passes it keeps) both go to the R-operator."""
    model, batch, loss_fn = tiny_vit(), images(), nn.CrossEntropyLoss()
    eigenvalues = torch.linalg.eigvalsh(dense.hessian(model, loss_fn, batch))

    single = HessianOperator(model, loss_fn, batch, method="auto", usage="single")
    repeated = HessianOperator(model, loss_fn, batch, method="auto")
    result = top_eigenvalues(
        model, loss_fn, batch, k=1, method="auto", max_iter=200, tol=1e-10, which="largest"
    )

    assert single.method == repeated.method == "rop"
    assert abs(result.eigenvalues[0] - float(eigenvalues[-1])) < 1e-6 * float(eigenvalues[-1])


def test_fused_attention_is_still_refused() -> None:
    """The closed form would not need a second derivative, but the API promises the error."""
    batch = images()
    model = ViT((1, 4, 4), 3, patch_size=2, embed_dim=4, depth=1, num_heads=2).double()
    v = [torch.ones_like(p) for p in model.parameters()]

    with pytest.raises(ValueError, match=r"model\.attention=math"):
        hvp(model, nn.CrossEntropyLoss(), batch, v)


def frozen() -> ViT:
    model = tiny_vit()
    model.net.pos_embed.requires_grad_(False)
    return model


def hooked() -> ViT:
    model = tiny_vit()
    model.net.blocks[0].mlp.register_forward_hook(lambda module, inputs, output: 2 * output)
    return model


def layer_scale() -> ViT:
    model = tiny_vit()
    model.net.blocks[1].ls1 = LayerScale(4, init_values=0.5).double()
    return model


@pytest.mark.parametrize("build", [frozen, hooked, layer_scale])
def test_models_it_cannot_run_take_the_double_backward(build, dense) -> None:
    model, batch, loss_fn = build(), images(), nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]

    assert closed_form(model, loss_fn, params, as_batches(batch, params[0].device)) is None
    expected = dense.flat(hvp(model, loss_fn, batch, v, method="reverse"))
    assert rel_err(dense.flat(hvp(model, loss_fn, batch, v)), expected) < 1e-12
    with pytest.raises(ValueError, match="method='rop' runs"):
        hvp(model, loss_fn, batch, v, method="rop")


def test_inputs_of_another_shape_take_the_double_backward() -> None:
    model, loss_fn = tiny_vit(), nn.CrossEntropyLoss()
    params = list(model.parameters())
    flat_inputs = [(torch.zeros(2, 16, dtype=torch.float64), torch.zeros(2).long(), 1.0)]

    assert closed_form(model, loss_fn, params, flat_inputs) is None
