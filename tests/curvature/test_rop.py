"""The closed-form R-operator against dense float64 Hessians, and where it must not run."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from curvlab.curvature import HessianOperator, hvp, top_eigenvalues
from curvlab.curvature.rop import SUPPORTED_ACTIVATIONS
from curvlab.curvature.rop.mlp import mlp_chain
from curvlab.models import MLP


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def make_mlp(activations, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP((2, 3), 4, hidden=[5, 4], activations=activations, negative_slope=0.3).double()


def make_batch(n: int = 12, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 3, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    return x, y


class SmoothedCrossEntropy(nn.Module):
    """Not a stock loss, so its derivatives in the outputs come from autograd."""

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(z, y, label_smoothing=0.1) + 0.05 * (z**3).mean()


HIDDEN = [a for a in SUPPORTED_ACTIVATIONS if a != "identity"]


@pytest.mark.parametrize("activation", HIDDEN)
def test_every_activation_matches_dense_hessian(activation: str, dense) -> None:
    """Each activation's sigma' and sigma'' (softmax: its Jacobian) enter H v correctly."""
    model, batch, loss_fn = make_mlp(activation), make_batch(), nn.CrossEntropyLoss()
    v = dense.randn(model, 2)

    hv = dense.flat(hvp(model, loss_fn, batch, v, method="rop"))

    assert rel_err(hv, dense.hessian(model, loss_fn, batch) @ dense.flat(v)) < 1e-10


@pytest.mark.parametrize(
    "activations",
    [["tanh", "gelu", "sigmoid"], ["relu", "leaky_relu", "softmax"], ["gelu", "tanh", "tanh"]],
)
def test_mixed_layers_and_output_activation(activations: list[str], dense) -> None:
    """A last layer with an activation: the loss sees sigma(z_L), the chain rule goes on."""
    model, batch, loss_fn = make_mlp(activations), make_batch(), nn.CrossEntropyLoss()
    v = dense.randn(model, 3)

    hv = dense.flat(hvp(model, loss_fn, batch, v, method="rop"))

    assert rel_err(hv, dense.hessian(model, loss_fn, batch) @ dense.flat(v)) < 1e-10


@pytest.mark.parametrize("loss", ["mse", "smoothed", "ce_ignore"])
def test_other_losses(loss: str, dense) -> None:
    """MSE in closed form; any other loss (and ignored targets) through autograd."""
    model, (x, y) = make_mlp("tanh"), make_batch()
    if loss == "mse":
        loss_fn, y = nn.MSELoss(), torch.randn(len(x), 4, dtype=torch.float64)
    elif loss == "smoothed":
        loss_fn = SmoothedCrossEntropy()
    else:
        loss_fn, y = nn.CrossEntropyLoss(ignore_index=2), y.clone()
        y[:3] = 2
    v = dense.randn(model, 4)

    hv = dense.flat(hvp(model, loss_fn, (x, y), v, method="rop"))

    assert rel_err(hv, dense.hessian(model, loss_fn, (x, y)) @ dense.flat(v)) < 1e-10


def test_list_of_batches_and_agreement_with_double_backward(dense) -> None:
    model, (x, y), loss_fn = make_mlp("gelu"), make_batch(20), nn.CrossEntropyLoss()
    v = dense.randn(model, 5)
    pieces = [(x[:13], y[:13]), (x[13:], y[13:])]

    split = dense.flat(hvp(model, loss_fn, pieces, v, method="rop"))
    reverse = dense.flat(hvp(model, loss_fn, (x, y), v, method="reverse"))

    assert rel_err(split, reverse) < 1e-12


def test_float32_digits_mlp_agrees_with_double_backward() -> None:
    """The default model at its default size and precision (what the callback measures)."""
    torch.manual_seed(0)
    model, loss_fn = MLP((1, 8, 8), 10), nn.CrossEntropyLoss()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    v = [torch.randn_like(p) for p in model.parameters()]

    fast = torch.cat([t.reshape(-1) for t in hvp(model, loss_fn, (x, y), v, method="rop")])
    slow = torch.cat([t.reshape(-1) for t in hvp(model, loss_fn, (x, y), v, method="reverse")])

    assert rel_err(fast, slow) < 1e-5


def test_auto_takes_rop_for_the_mlp_and_iterative_methods_agree(dense) -> None:
    model, batch, loss_fn = make_mlp("tanh"), make_batch(), nn.CrossEntropyLoss()
    expected = torch.linalg.eigvalsh(dense.hessian(model, loss_fn, batch))
    top = expected[expected.abs().argmax()]

    assert HessianOperator(model, loss_fn, batch, method="auto").method == "rop"
    result = top_eigenvalues(model, loss_fn, batch, k=1, method="rop", max_iter=200, tol=1e-10)
    assert abs(result.eigenvalues[0] - float(top)) < 1e-6 * abs(float(top))


@pytest.mark.parametrize("loss", ["ce", "smoothed"])
def test_an_operator_keeps_one_pass_for_all_its_products(loss: str, dense) -> None:
    """The forward and backward pass is computed once and reused: every product on it must
    still be exact (nothing a product writes may leak into the next), also where the loss's
    second derivative is a kept autograd graph."""
    model, batch = make_mlp(["gelu", "softmax", "tanh"]), make_batch()
    loss_fn = nn.CrossEntropyLoss() if loss == "ce" else SmoothedCrossEntropy()
    hessian = dense.hessian(model, loss_fn, batch)
    op = HessianOperator(model, loss_fn, batch, method="rop")

    for seed in (6, 7, 6):
        v = dense.randn(model, seed)
        assert rel_err(dense.flat(op.matvec(v)), hessian @ dense.flat(v)) < 1e-10


def test_leaves_model_and_rng_untouched() -> None:
    model, batch, loss_fn = make_mlp("relu"), make_batch(), nn.CrossEntropyLoss()
    model.train()
    model.layers[1].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()

    hvp(model, SmoothedCrossEntropy(), batch, [torch.ones_like(p) for p in model.parameters()])
    hvp(model, loss_fn, batch, [torch.ones_like(p) for p in model.parameters()])

    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())
    assert model.training and model.layers[0].training and not model.layers[1].training
    assert torch.equal(torch.get_rng_state(), rng)


def test_works_under_inference_mode(dense) -> None:
    model, batch, loss_fn = make_mlp("sigmoid"), make_batch(), nn.CrossEntropyLoss()
    v = dense.randn(model, 6)
    expected = dense.flat(hvp(model, loss_fn, batch, v, method="reverse"))

    with torch.inference_mode():
        hv = hvp(model, loss_fn, batch, v)

    assert not any(t.is_inference() for t in hv)
    assert rel_err(dense.flat(hv), expected) < 1e-12


class ScaledMLP(MLP):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


def frozen_bias() -> MLP:
    model = make_mlp("relu")
    model.layers[0].linear.bias.requires_grad_(False)
    return model


def hooked() -> MLP:
    model = make_mlp("relu")
    model.layers[1].register_forward_hook(lambda module, inputs, output: 2 * output)
    return model


def approximate_gelu() -> MLP:
    model = make_mlp("gelu")
    for layer in model.layers[:-1]:
        layer.activation.approximate = "tanh"
    return model


@pytest.mark.parametrize(
    "build",
    [
        lambda: ScaledMLP((2, 3), 4, hidden=[5]).double(),
        frozen_bias,
        hooked,
        approximate_gelu,
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double(),
    ],
    ids=["subclass", "frozen", "hook", "tanh-gelu", "sequential"],
)
def test_models_it_cannot_run_fall_back_to_double_backward(build, dense) -> None:
    """auto gives the exact product by another method; rop itself refuses, naming the fix."""
    model, batch, loss_fn = build(), make_batch(), nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    assert mlp_chain(model, params) is None
    v = [torch.randn_like(p) for p in params]
    expected = dense.flat(hvp(model, loss_fn, batch, v, method="reverse"))

    assert rel_err(dense.flat(hvp(model, loss_fn, batch, v)), expected) < 1e-12
    with pytest.raises(ValueError, match=r"method='rop' runs curvlab\.models\.MLP .*'reverse'"):
        hvp(model, loss_fn, batch, v, method="rop")


def test_wrong_number_of_vectors_is_a_clear_error() -> None:
    model, batch = make_mlp("relu"), make_batch()
    v = [torch.ones_like(p) for p in model.parameters()][:-1]

    with pytest.raises(ValueError, match="v has 5 tensors; the MLP has 6 trainable parameters"):
        hvp(model, nn.CrossEntropyLoss(), batch, v)
