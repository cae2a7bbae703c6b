"""The guide's MLP: widths and one activation per layer, all from config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from curvlab.models import MLP
from curvlab_testing import compose_train


def test_guide_three_layer_network_is_expressible_by_config() -> None:
    cfg = compose_train(["model=guide_mlp"])
    model = instantiate(cfg.model, input_shape=(1,), num_outputs=1).double()

    kinds = [type(layer.activation) for layer in model.layers]
    assert kinds == [nn.ReLU, nn.Tanh, nn.Sigmoid]
    assert [tuple(layer.linear.weight.shape) for layer in model.layers] == [(1, 1)] * 3

    # Section 2.8's weights give Table 2.4's output y_hat = 0.786003.
    values = [(1.5, -1.0), (0.5, 0.1), (2.0, -0.3)]
    with torch.no_grad():
        for layer, (w, b) in zip(model.layers, values, strict=True):
            layer.linear.weight.fill_(w)
            layer.linear.bias.fill_(b)
    y_hat = model(torch.tensor([[2.0]], dtype=torch.float64))
    assert float(y_hat.detach()) == pytest.approx(0.786003, abs=1e-6)


def test_single_activation_name_applies_to_hidden_layers_and_output_gives_logits() -> None:
    model = MLP((1, 8, 8), 10, hidden=[32, 16], activations="tanh")

    assert [type(layer.activation) for layer in model.layers] == [nn.Tanh, nn.Tanh, nn.Identity]
    assert model.layers[0].linear.in_features == 64
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_leaky_relu_uses_the_configured_slope() -> None:
    model = MLP((2,), 2, hidden=[], activations=["leaky_relu"], negative_slope=0.2)
    with torch.no_grad():
        model.layers[0].linear.weight.copy_(torch.eye(2))
        model.layers[0].linear.bias.zero_()

    out = model(torch.tensor([[-1.0, 3.0]]))

    assert out.tolist() == [[pytest.approx(-0.2), 3.0]]


def test_every_guide_activation_is_available() -> None:
    x = torch.tensor([[-1.0, 0.5]])
    expected = {
        "sigmoid": torch.sigmoid(x),
        "tanh": torch.tanh(x),
        "relu": torch.relu(x),
        "gelu": torch.nn.functional.gelu(x),
        "softmax": torch.softmax(x, dim=-1),
        "identity": x,
    }
    for name, value in expected.items():
        model = MLP((2,), 2, hidden=[], activations=[name])
        with torch.no_grad():
            model.layers[0].linear.weight.copy_(torch.eye(2))
            model.layers[0].linear.bias.zero_()
        assert torch.allclose(model(x), value), name


def test_wrong_number_of_activations_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.activations has 2 entries but the network has 3"):
        MLP((4,), 2, hidden=[3, 3], activations=["relu", "relu"])
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; valid choices are sigmoid"):
        MLP((4,), 2, hidden=[3], activations="swish")
