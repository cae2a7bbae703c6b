"""Perceptual loss on a tiny curvlab MLP and ViT, and its checkpoint loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.losses import PerceptualLoss, load_feature_network
from curvlab.models import MLP, ViT

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
INPUT_SHAPE = (1, 3, 3)
MODEL_CONFIG = {"_target_": "curvlab.models.MLP", "hidden": [5, 4], "activations": "tanh"}


def tiny_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return instantiate(MODEL_CONFIG, input_shape=INPUT_SHAPE, num_outputs=2).double()


def hidden_activations(net: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """a_l = tanh(W_l a_{l-1} + b_l) for the hidden layers, by explicit float64 algebra."""
    a, out = x.reshape(len(x), -1).double(), []
    for layer in list(net.layers)[:-1]:
        W, b = layer.linear.weight.double(), layer.linear.bias.double()
        a = torch.tanh(a @ W.T + b)
        out.append(a)
    return out


def image_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, *INPUT_SHAPE, generator=g, dtype=torch.float64) for _ in range(2))


def save_checkpoint(net: MLP, path: Path) -> Path:
    """A hand-made stand-in for a curvlab Lightning checkpoint."""
    state_dict = {f"model.{k}": v for k, v in net.state_dict().items()}
    state_dict["loss_fn.unrelated"] = torch.ones(1)  # other LightningModule keys are skipped
    checkpoint = {
        "state_dict": state_dict,
        "curvlab": {
            "config": {"model": MODEL_CONFIG, "loss": {"_target_": "torch.nn.MSELoss"}},
            "input_shape": list(INPUT_SHAPE),
            "num_outputs": 2,
        },
    }
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("layers", "weights", "criterion"),
    [(None, None, "mse"), (["layers.1"], None, "mse"), (None, [0.2, 3.0], "l1")],
)
def test_matches_features_computed_by_hand(layers, weights, criterion: str) -> None:
    net = tiny_mlp()
    x_hat, x = image_pair(0)

    value = PerceptualLoss(net, layers=layers, layer_weights=weights, criterion=criterion)(
        x_hat, x
    )

    phi_hat, phi = hidden_activations(net, x_hat), hidden_activations(net, x)
    chosen = [0, 1] if layers is None else [1]
    w = weights or [1 / len(chosen)] * len(chosen)
    power = 2 if criterion == "mse" else 1
    expected = sum(
        w_l * ((phi_hat[i] - phi[i]).abs() ** power).mean().item()
        for w_l, i in zip(w, chosen, strict=True)
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_identical_images_cost_nothing_and_phi_stays_frozen() -> None:
    net = tiny_mlp()
    x_hat, _ = image_pair(1)
    loss = PerceptualLoss(net)

    loss.train()

    assert loss(x_hat, x_hat.clone()).item() == 0.0
    assert not loss.feature_network.training
    assert not any(p.requires_grad for p in net.parameters())


def test_gradients_reach_the_prediction_and_match_finite_differences() -> None:
    loss = PerceptualLoss(tiny_mlp(), layer_weights=[0.5, 2.0])
    x_hat, x = image_pair(2)
    x_hat.requires_grad_(True)

    assert torch.autograd.gradcheck(lambda y: loss(y, x), (x_hat,))


def test_checkpoint_path_rebuilds_the_same_network(tmp_path: Path) -> None:
    net = tiny_mlp(seed=3)
    path = save_checkpoint(net, tmp_path / "epoch=0.ckpt")
    x_hat, x = image_pair(3)

    loaded = load_feature_network(path)
    from_path = PerceptualLoss(checkpoint_path=path)
    from_config = instantiate(OmegaConf.load(CONF / "perceptual.yaml"), checkpoint_path=str(path))

    assert isinstance(loaded, MLP) and not loaded.training
    for (name, p), q in zip(net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # the loaded float32 copy against the float64 original
    expected = PerceptualLoss(net)(x_hat, x).item()
    for loss in (from_path, from_config):
        assert loss(x_hat.float(), x.float()).item() == pytest.approx(expected, rel=1e-5)


def test_not_a_curvlab_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, path)

    with pytest.raises(KeyError, match="'curvlab'"):
        load_feature_network(path)


def test_needs_exactly_one_source_of_phi(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PerceptualLoss()
    with pytest.raises(ValueError, match="exactly one"):
        PerceptualLoss(tiny_mlp(), checkpoint_path=tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="layer_weights"):
        PerceptualLoss(tiny_mlp(), layer_weights=[1.0])


def test_vit_features_are_the_blocks_outputs() -> None:
    torch.manual_seed(4)
    vit = ViT((1, 4, 4), 3, patch_size=2, embed_dim=8, depth=2, num_heads=2, drop_rate=0.5)
    loss = PerceptualLoss(vit).train()
    x = torch.randn(2, 1, 4, 4)

    features = loss.features(x)

    assert loss.layers == ["net.blocks.0", "net.blocks.1"]
    # the encoder output is the final norm of the last block's tokens; dropout stays off
    torch.testing.assert_close(vit.net.norm(features[-1]), vit.forward_tokens(x))
    torch.testing.assert_close(loss.features(x)[0], features[0], rtol=0, atol=0)
