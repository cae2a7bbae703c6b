"""Section 2.9's delta recursion against autograd through curvlab's MLP, on other networks."""

from __future__ import annotations

import itertools

import pytest
import torch

from curvlab.guide import NetworkSpec, autograd_trace, build_mlp, delta_rule_trace, walk


def _random_spec(
    widths: list[int], activations: list[str], loss: str, seed: int, lr: float | None = 0.3
) -> NetworkSpec:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    W = tuple(randn(d_out, d_in) for d_in, d_out in itertools.pairwise(widths))
    b = tuple(randn(d) for d in widths[1:])
    y = torch.rand(widths[-1], generator=g, dtype=torch.float64)
    return NetworkSpec(W, b, tuple(activations), randn(widths[0]), y, loss, lr, 0.1)


@pytest.mark.parametrize(
    ("activations", "loss"),
    [
        (["relu", "tanh", "sigmoid"], "half_squared_error"),
        (["leaky_relu", "gelu", "identity"], "half_squared_error"),
        (["gelu", "leaky_relu", "sigmoid"], "binary_cross_entropy"),
        (["tanh", "identity", "tanh"], "half_squared_error"),
    ],
)
def test_delta_formulas_agree_with_autograd(activations: list[str], loss: str) -> None:
    spec = _random_spec([3, 4, 5, 2], activations, loss, seed=len(activations[0]))

    result = walk(spec, input_grad=True)

    diffs = result.diffs()
    # Every derived quantity is compared: per layer z, a, dL/da, act', delta, J, dL/dW, dL/db,
    # W+ and b+; then L and dL/dx.
    assert len(diffs) == 3 * 10 + 2
    assert max(diffs.values()) < 1e-12, diffs


def test_a_wrong_formula_is_caught() -> None:
    # The comparison must notice a broken derivative: perturb one reference entry.
    spec = _random_spec([2, 3, 1], ["tanh", "sigmoid"], "half_squared_error", seed=1)
    result = walk(spec)

    result.reference["act'(z_1)"] = 1.0 - result.values["z_1"] ** 2
    assert result.diffs()["act'(z_1)"] > 1e-3
    result.reference["act'(z_1)"] = result.values["act'(z_1)"].reshape(1, -1)
    assert result.diffs()["act'(z_1)"] == float("inf")


def test_relu_kink_and_leaky_slope_match_pytorch() -> None:
    # At z = 0 both ReLU derivatives are 0; leaky ReLU uses its slope for z <= 0.
    W = (torch.tensor([[1.0], [1.0], [-1.0]], dtype=torch.float64),)
    b = (torch.tensor([-2.0, 0.0, 0.5], dtype=torch.float64),)
    x, y = torch.tensor([2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)

    for act, expected in [("relu", [0.0, 1.0, 0.0]), ("leaky_relu", [0.1, 1.0, 0.1])]:
        spec = NetworkSpec(W, b, (act,), x, y, negative_slope=0.1)

        autograd, formulas = autograd_trace(spec), delta_rule_trace(spec)
        assert autograd["z_1"].tolist() == [0.0, 2.0, -1.5]
        assert autograd["act'(z_1)"].tolist() == expected
        assert formulas["act'(z_1)"].tolist() == expected


def test_trace_follows_the_mlp_forward() -> None:
    spec = _random_spec([3, 4, 1], ["gelu", "sigmoid"], "half_squared_error", seed=3)

    model = build_mlp(spec)
    values = autograd_trace(spec)

    assert torch.equal(model(spec.x), values["yhat"])
    assert model.layers[0].linear.weight.dtype == torch.float64


def test_sgd_step_equals_theta_minus_eta_grad() -> None:
    spec = _random_spec([2, 2, 1], ["relu", "sigmoid"], "half_squared_error", seed=4, lr=0.7)

    values = autograd_trace(spec)

    for k in (1, 2):
        expected_W = spec.W[k - 1] - 0.7 * values[f"dL/dW_{k}"]
        torch.testing.assert_close(values[f"W_{k}+"], expected_W, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": [1.0, 2.0]}, r"example.W\[0\] is 1x1"),
        ({"activations": ["relu", "softmax", "sigmoid"]}, "'softmax' is not supported"),
        ({"loss": "hinge"}, "example.loss"),
        ({"b": [-1.0, [0.1, 0.2], -0.3]}, r"example.b\[1\] has 2 entries"),
        ({"y": [1.0, 0.0]}, "example.y has 2 entries"),
        ({"W": [1.5, 0.5]}, "one entry per layer"),
    ],
)
def test_bad_specs_name_the_config_key(change: dict, message: str, example_config) -> None:
    cfg = example_config("worked_example_3") | change

    with pytest.raises(ValueError, match=message):
        NetworkSpec.from_config(cfg)
