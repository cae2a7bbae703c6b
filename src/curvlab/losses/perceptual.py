"""Perceptual loss: distances between hidden activations of a frozen network (Johnson et al. 2016).

The guide's loss table lists it for super-resolution and style transfer; its feature network
``phi`` here is any ``nn.Module``, usually a curvlab model restored from a training checkpoint
with :func:`load_feature_network`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F

from curvlab.models import MLP, ViT

logger = logging.getLogger(__name__)

CRITERIA = {"mse": F.mse_loss, "l1": F.l1_loss}


def load_feature_network(
    path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True
) -> nn.Module:
    """Rebuild a curvlab model from a Lightning checkpoint, frozen and in eval mode.

    The checkpoint holds the resolved Hydra config under ``["curvlab"]["config"]``, the
    model's ``input_shape`` and ``num_outputs`` under ``["curvlab"]``, and the weights in
    ``["state_dict"]`` with keys prefixed ``model.``.

    Args:
        path: the ``.ckpt`` file.
        map_location: where to load the tensors.
        weights_only: unpickle tensors and plain containers only; set False for a trusted
            checkpoint that stores other objects (e.g. an OmegaConf config).

    Returns:
        The model with the checkpoint's weights and ``requires_grad`` off.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError by version
        if not weights_only:
            raise
        raise RuntimeError(
            f"could not load {path} with weights_only=True ({error}); if you trust the file, "
            "set loss.weights_only=false."
        ) from error

    try:
        meta = checkpoint["curvlab"]
        model_config = meta["config"]["model"]
        input_shape, num_outputs = tuple(meta["input_shape"]), int(meta["num_outputs"])
        state_dict = checkpoint["state_dict"]
    except KeyError as error:
        raise KeyError(
            f"{path} is not a curvlab checkpoint: missing {error}; expected 'state_dict' and "
            "'curvlab' with 'config' (holding 'model'), 'input_shape' and 'num_outputs'."
        ) from error

    model = instantiate(model_config, input_shape=input_shape, num_outputs=num_outputs)

    # the LightningModule keeps the network as `self.model`; its other keys (loss...) are skipped
    prefix = "model."
    model.load_state_dict(
        {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    )

    logger.info("loaded feature network %s from %s", type(model).__name__, path)
    return model.eval().requires_grad_(False)


def default_feature_layers(network: nn.Module) -> list[str]:
    """Names of the submodules whose outputs serve as features, for curvlab's models.

    MLP: every hidden layer's activation ``a_l`` (not the output logits). ViT: the token
    sequence after every attention module.
    """
    if isinstance(network, MLP):
        names = [f"layers.{i}" for i in range(len(network.layers) - 1)]
    elif isinstance(network, ViT):
        names = [f"net.blocks.{i}" for i in range(len(network.net.blocks))]
    else:
        raise ValueError(
            f"no default feature layers for {type(network).__name__}; name them with "
            "loss.layers (submodule names as in network.named_modules())."
        )
    if not names:
        raise ValueError("the feature network has no hidden layers to take features from.")
    return names


def _store(
    captured: dict[str, torch.Tensor], name: str, module: nn.Module, args: Any, out: Any
) -> None:
    captured[name] = out


class PerceptualLoss(nn.Module):
    """Weighted distance between hidden features of a frozen network ``phi``.

    ``L(x_hat, x) = sum_l w_l * 1/N_l ||phi_l(x_hat) - phi_l(x)||^2`` (or the mean absolute
    difference with ``criterion="l1"``), where ``phi_l`` is the output of feature layer ``l``
    and ``N_l`` its number of elements. Called ``loss(prediction_images, target_images)`` with
    inputs ``phi`` accepts. ``phi`` stays frozen and in eval mode, even when its owner is put
    in training mode; gradients flow to the prediction only.

    Args:
        feature_network: ``phi`` itself; give this or ``checkpoint_path``.
        checkpoint_path: a curvlab checkpoint, loaded with :func:`load_feature_network`.
        layers: submodule names whose outputs are features; by default every hidden layer of a
            curvlab MLP or every block of a curvlab ViT.
        layer_weights: ``w_l``, one per layer; by default ``1 / len(layers)`` each.
        criterion: ``mse`` or ``l1``.
        weights_only: passed to :func:`load_feature_network`.
    """

    def __init__(
        self,
        feature_network: nn.Module | None = None,
        checkpoint_path: str | Path | None = None,
        layers: Sequence[str] | None = None,
        layer_weights: Sequence[float] | None = None,
        criterion: str = "mse",
        weights_only: bool = True,
    ) -> None:
        super().__init__()
        if (feature_network is None) == (checkpoint_path is None):
            raise ValueError(
                "the perceptual loss needs exactly one of feature_network (an nn.Module) and "
                "checkpoint_path (a curvlab checkpoint, e.g. loss.checkpoint_path=PATH)."
            )
        if criterion not in CRITERIA:
            raise ValueError(f"loss.criterion={criterion!r}; choose one of {', '.join(CRITERIA)}.")
        if feature_network is None:
            feature_network = load_feature_network(checkpoint_path, weights_only=weights_only)

        self.feature_network = feature_network.eval().requires_grad_(False)
        self.layers = (
            list(layers) if layers is not None else default_feature_layers(feature_network)
        )
        for name in self.layers:
            feature_network.get_submodule(name)  # fail now, not at the first batch
        if layer_weights is None:
            layer_weights = [1 / len(self.layers)] * len(self.layers)
        if len(layer_weights) != len(self.layers):
            raise ValueError(
                f"loss.layer_weights has {len(layer_weights)} entries for {len(self.layers)} "
                f"feature layers {self.layers}."
            )
        self.layer_weights = [float(w) for w in layer_weights]
        self.criterion = criterion

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Switch the loss's mode but keep ``phi`` in eval mode (no dropout, fixed norms)."""
        super().train(mode)
        self.feature_network.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[phi_l(images) for l in layers]``, read by forward hooks during one forward pass."""
        captured: dict[str, torch.Tensor] = {}
        handles = [
            self.feature_network.get_submodule(name).register_forward_hook(
                partial(_store, captured, name)
            )
            for name in self.layers
        ]
        try:
            self.feature_network(images)
        finally:
            for handle in handles:
                handle.remove()
        return [captured[name] for name in self.layers]

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Perceptual distance between predicted and target images."""
        distance = CRITERIA[self.criterion]
        phi_hat = self.features(prediction)

        # the target's features are constants; skipping their graph saves memory
        with torch.no_grad():
            phi = self.features(target)

        return sum(
            w * distance(f_hat, f)
            for w, f_hat, f in zip(self.layer_weights, phi_hat, phi, strict=True)
        )
