"""Task heads that turn a backbone's output into a per-pixel prediction.

The ViT head follows the guide's chapter 4.8 use of a ViT as a segmentation backbone: the
encoder's patch tokens already describe their P x P patch, so a light decoder maps each token
to the logits of its own patch and puts the patches back in place.

Dimension letters: B batch, K mask channels, H x W image, P patch, N tokens (N_patch patch
tokens after any prefix such as [CLS]), D embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.models.vit import ViT


class PatchMaskDecoder(nn.Module):
    """Patch tokens ``(B, N, D)`` to mask logits ``(B, K, H, W)``.

    Drops the prefix tokens, maps every patch token with one linear layer to the ``K P P``
    logits of its patch, lays the tokens out on their ``(H/P, W/P)`` grid and pixel-shuffles each
    token's ``K P P`` channels into a ``P x P`` block of K channels.

    Args:
        embed_dim: D.
        patch_size: P.
        grid_size: ``(H/P, W/P)``, the patch grid of the backbone.
        num_classes: K.
        num_prefix_tokens: tokens before the patch tokens (1 for [CLS], 0 without).
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        grid_size: Sequence[int],
        num_classes: int,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = tuple(grid_size)
        self.num_classes = num_classes
        self.num_prefix_tokens = num_prefix_tokens
        self.proj = nn.Linear(embed_dim, num_classes * patch_size * patch_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        gh, gw = self.grid_size
        z = tokens[:, self.num_prefix_tokens :]  # (B, N_patch, D)
        z = self.proj(z)  # (B, N_patch, K P P)
        z = z.transpose(1, 2).reshape(B, -1, gh, gw)  # (B, K P P, H/P, W/P)
        return F.pixel_shuffle(z, self.patch_size)  # (B, K, H, W)


class ViTSegmenter(nn.Module):
    """A curvlab :class:`~curvlab.models.ViT` backbone with a :class:`PatchMaskDecoder`.

    The backbone's classification head is removed (it would be an unused parameter, which DDP
    refuses); its encoder and final norm are kept.

    Args:
        backbone: the ViT; its image size and patch size fix the decoder's grid.
        num_classes: K, mask channels predicted per pixel.
    """

    def __init__(self, backbone: ViT, num_classes: int) -> None:
        super().__init__()
        # TODO(segmentation-cost): the wrapper is not a ViT, so training does not log the ViT
        # cost model's cost/... parameters for segmentation runs.
        backbone.net.reset_classifier(0)
        backbone.num_outputs = 0  # the class head is gone
        self.backbone = backbone
        self.decoder = PatchMaskDecoder(
            embed_dim=backbone.embed_dim,
            patch_size=backbone.patch_size,
            grid_size=backbone.net.patch_embed.grid_size,
            num_classes=num_classes,
            num_prefix_tokens=backbone.net.num_prefix_tokens,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone.forward_tokens(x))  # (B, K, H, W)


class Unflatten(nn.Module):
    """Reshape a network's flat ``(B, prod(shape))`` output to ``(B, *shape)``.

    Lets a flat network such as the MLP predict an image or a mask: its last layer has one
    output per pixel and channel.

    Args:
        model: the network with flat outputs.
        shape: the per-example shape, e.g. ``(K, H, W)``.
    """

    def __init__(self, model: nn.Module, shape: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unflatten(1, self.shape)  # (B, *shape)
