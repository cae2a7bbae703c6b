"""Vision Transformer from the guide's parameters (chapter 4), built with timm.

Dimension letters: B batch, C channels, H x W image, P patch, N tokens, D embedding,
h heads, d_h = D / h head dim, L depth, r MLP ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

ATTENTION_IMPLS = ("sdpa", "math")


def check_vit_shape(img_size: int, patch_size: int, embed_dim: int, num_heads: int) -> None:
    """Refuse a ViT whose patches do not tile the image or whose heads do not split D."""
    if img_size % patch_size != 0:
        raise ValueError(
            f"model.patch_size={patch_size} does not divide the image size {img_size} "
            f"(data image {img_size}x{img_size}): a ViT needs non-overlapping P x P patches "
            f"that tile the image (guide eq. 4.1). Choose a patch size among "
            f"{[p for p in range(1, img_size + 1) if img_size % p == 0]}."
        )
    if embed_dim % num_heads != 0:
        raise ValueError(
            f"model.embed_dim={embed_dim} is not divisible by model.num_heads={num_heads}: "
            f"the head dim d_h = D / h must be a whole number (guide eq. 4.4). Valid head "
            f"counts for D={embed_dim} are {[h for h in range(1, 33) if embed_dim % h == 0]}."
        )


def set_attention_impl(model: nn.Module, impl: str) -> None:
    """Choose fused SDPA or plain-math attention in every timm ``Attention`` block.

    The fused CPU kernels have no double backward, so curvature measurements (Hessian-vector
    products) need ``math``.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"model.attention={impl!r} is not valid; choose one of {', '.join(ATTENTION_IMPLS)} "
            "(math supports second derivatives, sdpa is faster)."
        )
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = impl == "sdpa"


class ViT(nn.Module):
    """A timm ``VisionTransformer`` configured by the guide's symbols.

    Args:
        input_shape: ``(C, H, W)`` of one image; H must equal W.
        num_outputs: number of classes (width of the head).
        patch_size: P.
        embed_dim: D.
        depth: L, the number of attention modules.
        num_heads: h.
        mlp_ratio: r, so the MLP hidden width is r * D.
        class_token: prepend a [CLS] token (N = N_patch + 1) and classify from it; otherwise
            average the patch tokens.
        attention: ``sdpa`` (fused kernel) or ``math`` (supports double backward).
        drop_rate: dropout after the embedding and in the MLPs.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        patch_size: int = 2,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        attention: str = "sdpa",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        if height != width:
            raise ValueError(
                f"data images are {height}x{width}; model=vit needs square images "
                "(resize them in the data config)."
            )
        check_vit_shape(height, patch_size, embed_dim, num_heads)
        self.input_shape = (channels, height, width)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.class_token = class_token
        self.num_outputs = num_outputs
        self.net = VisionTransformer(
            img_size=height,
            patch_size=patch_size,
            in_chans=channels,
            num_classes=num_outputs,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            class_token=class_token,
            global_pool="token" if class_token else "avg",
            drop_rate=drop_rate,
            proj_drop_rate=drop_rate,
        )
        set_attention_impl(self.net, attention)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output before pooling: (B, C, H, W) -> (B, N, D)."""
        return self.net.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_outputs)
