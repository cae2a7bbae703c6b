"""The guide's ViT cost model (chapter 4, eqs. 4.1-4.9), made exact for curvlab's timm ViT.

Closed forms for the token count, head dim, attention entries, MLP width, parameter count,
forward FLOPs and the activation memory autograd keeps for training. FLOPs count a
multiply-add as 2, as ``torch.utils.flop_counter`` does, and include only matrix products
(the patch-embedding convolution, the linear layers and the two attention products); norms,
softmax, GELU and residual adds are left out, as the counter leaves them out.

Dimension letters: B batch, C channels, H x W image, P patch, N tokens, D embedding, h heads,
d_h = D / h head dim, L depth, r MLP ratio, D_MLP = r * D MLP width, K classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from timm.layers import Attention
from torch import nn

from curvlab.models.vit import ATTENTION_IMPLS, ViT, check_vit_shape

log = logging.getLogger(__name__)

# Bytes per saved element for each Lightning precision setting (trainer.precision).
_PRECISION_BYTES = {
    "64": 8,
    "64-true": 8,
    "32": 4,
    "32-true": 4,
    "16": 2,
    "16-mixed": 2,
    "16-true": 2,
    "bf16": 2,
    "bf16-mixed": 2,
    "bf16-true": 2,
}

# Per token and layer, the LayerNorm pair keeps a mean and a reciprocal std for each of its two
# norms: 4 floats.
_NORM_STATS_PER_TOKEN = 4


def bytes_per_element(precision: str | int) -> int:
    """Bytes of one saved activation under a Lightning precision setting.

    Args:
        precision: ``trainer.precision``, e.g. ``32-true``, ``bf16-mixed`` or ``16-mixed``.

    Returns:
        8 for 64-bit, 4 for 32-bit, 2 for the 16-bit settings (mixed or true).

    Raises:
        ValueError: for a setting the cost model does not know (e.g. transformer-engine).
    """
    key = str(precision)
    if key not in _PRECISION_BYTES:
        raise ValueError(
            f"trainer.precision={key} is not one the cost model knows; choose one of "
            f"{', '.join(_PRECISION_BYTES)}."
        )
    return _PRECISION_BYTES[key]


@dataclass(frozen=True)
class ViTCost:
    """The guide's ViT figures for one configuration; FLOPs and activations are per image.

    Attributes:
        patch_tokens: N_patch = (H / P) * (W / P), eq. 4.1.
        tokens: N = N_patch + 1 with a class token, eq. 4.2 (N_patch without one).
        attention_modules: L, one per layer, eq. 4.3.
        head_dim: d_h = D / h, eq. 4.4.
        attention_entries_per_layer: h * N^2, the N x N matrix of eq. 4.6 for each head.
        attention_entries: L * h * N^2, over the whole depth.
        mlp_width: D_MLP = r * D, eq. 4.8 (floored to an integer, as timm builds it).
        params: exact parameter count of timm's ``VisionTransformer`` with these settings.
        flops_attention: Q K^T and attention-times-V, 4 * N^2 * D per layer (eq. 4.7).
        flops_projections: patch embedding, qkv and output projections, and the head.
        flops_mlp: the two MLP linear layers, 4 * N * D * D_MLP per layer (eq. 4.9).
        flops_forward: the sum of the three above.
        activation_elements: elements autograd saves for backward, per image.
        batch_size: B used for ``activation_bytes``.
        bytes_per_element: 4 for 32-bit, 2 for 16-bit precisions.
        activation_bytes: B * activation_elements * bytes_per_element.
    """

    patch_tokens: int
    tokens: int
    attention_modules: int
    head_dim: int
    attention_entries_per_layer: int
    attention_entries: int
    mlp_width: int
    params: int
    flops_attention: int
    flops_projections: int
    flops_mlp: int
    flops_forward: int
    activation_elements: int
    batch_size: int
    bytes_per_element: int
    activation_bytes: int


def _parameter_count(C: int, P: int, N: int, D: int, L: int, D_mlp: int, K: int, cls: bool) -> int:
    # Patch embedding is a P x P convolution with bias; positions cover all N tokens because
    # timm embeds the class token's position too.
    embedding = C * P * P * D + D + (D if cls else 0) + N * D

    # Per layer: two LayerNorms (2D each), qkv (3D^2 + 3D), output projection (D^2 + D),
    # fc1 (D * D_MLP + D_MLP) and fc2 (D_MLP * D + D).
    layer = 4 * D * D + 2 * D * D_mlp + 9 * D + D_mlp

    # The final LayerNorm, then a linear head (timm uses no head for K = 0).
    head = 2 * D + (D * K + K if K > 0 else 0)
    return embedding + L * layer + head


def _activation_elements(
    C: int,
    H: int,
    W: int,
    N: int,
    D: int,
    h: int,
    L: int,
    D_mlp: int,
    K: int,
    cls: bool,
    attn: str,
) -> int:
    # Per token and layer the block keeps 8 width-D tensors: the block input and the first
    # norm's output, q, k, v (math) or the qkv output (sdpa, 3D), the attention output
    # (math: its reshaped copy for the projection; sdpa: the kernel output), the residual
    # sum and the second norm's output; plus fc1's output and GELU's output (D_MLP each).
    per_token = 8 * D + 2 * D_mlp + _NORM_STATS_PER_TOKEN

    # math keeps the softmax of eq. 4.6 (h * N^2); a fused kernel keeps h log-sum-exps per token.
    attention = h * N * N if attn == "math" else h * N
    layer = N * per_token + attention

    # The final norm keeps its input and statistics; the head keeps the pooled token, which
    # with a class token is a view that holds the whole normed (N, D) tensor alive.
    normed = N if cls else 1
    head = normed * (D + 2) + (normed * D if K > 0 else 0)

    # The patch-embedding convolution keeps the image for its weight gradient.
    return C * H * W + L * layer + head


def vit_cost(
    *,
    height: int,
    width: int,
    channels: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    num_classes: int,
    class_token: bool = True,
    attention: str = "math",
    batch_size: int = 1,
    precision: str | int = "32-true",
) -> ViTCost:
    """The guide's ViT cost model (chapter 4, eqs. 4.1-4.9) for curvlab's timm ViT.

    Activation memory is a closed-form count of what autograd saves during a training forward
    pass, under these assumptions: dropout is off (``drop_rate=0``; a positive rate adds one
    mask per dropout site), every saved tensor is stored at ``bytes_per_element`` of the
    precision, and parameters, gradients, optimizer state and the loss are not included. For
    ``attention="math"`` it matches, byte for byte on CPU, what the model saves; for ``sdpa``
    it follows PyTorch's CPU flash kernel (q, k, v, its output and h log-sum-exps per token),
    and the GPU kernels, which save much the same, have not been measured. Under mixed
    precision autocast keeps the residual stream and norm statistics (and on GPU the softmax)
    in float32 and saves 16-bit copies of the weights, so there the figure is a lower bound.

    Args:
        height: H, image height in pixels.
        width: W, image width in pixels.
        channels: C, image channels.
        patch_size: P; must divide H and W.
        embed_dim: D; must be divisible by ``num_heads``.
        depth: L, the number of layers (attention modules).
        num_heads: h.
        mlp_ratio: r, so the MLP width is r * D.
        num_classes: K, the width of the head (0: no head, as in timm).
        class_token: prepend a [CLS] token (eq. 4.2) and classify from it; else average tokens.
        attention: ``math`` (the explicit N x N matrix) or ``sdpa`` (a fused kernel).
        batch_size: B for the activation memory.
        precision: Lightning's ``trainer.precision``, e.g. ``32-true`` or ``bf16-mixed``.

    Returns:
        The figures as a frozen :class:`ViTCost`.

    Raises:
        ValueError: if P does not divide the image, h does not divide D, or an argument is
            out of range; the message names the config key.
    """
    for side in {height, width}:
        check_vit_shape(side, patch_size, embed_dim, num_heads)
    if attention not in ATTENTION_IMPLS:
        raise ValueError(
            f"model.attention={attention!r} is not valid; choose one of "
            f"{', '.join(ATTENTION_IMPLS)}."
        )
    if depth < 0 or num_classes < 0 or channels < 1 or mlp_ratio <= 0 or batch_size < 1:
        raise ValueError(
            f"the ViT needs model.depth >= 0 (got {depth}), classes >= 0 (got {num_classes}), "
            f"channels >= 1 (got {channels}), model.mlp_ratio > 0 (got {mlp_ratio}) and a "
            f"batch size >= 1 (got {batch_size})."
        )
    C, H, W, P, K = channels, height, width, patch_size, num_classes
    D, L, h = embed_dim, depth, num_heads

    # Eqs. 4.1-4.4 and 4.8: token count, head dim and MLP width.
    N_patch = (H // P) * (W // P)
    N = N_patch + 1 if class_token else N_patch
    d_h = D // h
    D_mlp = int(mlp_ratio * D)

    # Eq. 4.7: Q K^T and attention-times-V are each h products of (N x d_h)(d_h x N) size.
    flops_attention = L * 2 * (2 * h * N * N * d_h)

    # Eq. 4.9: fc1 (D -> D_MLP) and fc2 (D_MLP -> D) on every token.
    flops_mlp = L * 2 * (2 * N * D * D_mlp)

    # The patch embedding sees only patch tokens and the head only the pooled token.
    flops_patch = 2 * N_patch * (C * P * P) * D
    flops_qkv_proj = L * (2 * N * D * 3 * D + 2 * N * D * D)
    flops_projections = flops_patch + flops_qkv_proj + 2 * D * K

    # TODO(mixed-precision): count autocast's float32 tensors and weight copies; until then
    # 16-mixed and bf16-mixed activation bytes are a lower bound (1.2x-2x low on CPU).
    elements = _activation_elements(C, H, W, N, D, h, L, D_mlp, K, class_token, attention)
    nbytes = bytes_per_element(precision)
    return ViTCost(
        patch_tokens=N_patch,
        tokens=N,
        attention_modules=L,
        head_dim=d_h,
        attention_entries_per_layer=h * N * N,
        attention_entries=L * h * N * N,
        mlp_width=D_mlp,
        params=_parameter_count(C, P, N, D, L, D_mlp, K, class_token),
        flops_attention=flops_attention,
        flops_projections=flops_projections,
        flops_mlp=flops_mlp,
        flops_forward=flops_attention + flops_projections + flops_mlp,
        activation_elements=elements,
        batch_size=batch_size,
        bytes_per_element=nbytes,
        activation_bytes=batch_size * elements * nbytes,
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a built model (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def attention_impl(model: nn.Module) -> str:
    """``sdpa`` if the model's timm attention blocks use the fused kernel, else ``math``."""
    fused = [m.fused_attn for m in model.modules() if isinstance(m, Attention)]
    return "sdpa" if fused and all(fused) else "math"


def cost_of(model: ViT, batch_size: int = 1, precision: str | int = "32-true") -> ViTCost:
    """The cost model for a built :class:`~curvlab.models.ViT`, read from its settings.

    Args:
        model: the ViT; its attention blocks decide between ``math`` and ``sdpa``.
        batch_size: B for the activation memory.
        precision: Lightning's ``trainer.precision``.

    Returns:
        The closed-form figures; compare ``params`` with :func:`count_parameters`.
    """
    C, H, W = model.input_shape
    return vit_cost(
        height=H,
        width=W,
        channels=C,
        patch_size=model.patch_size,
        embed_dim=model.embed_dim,
        depth=model.depth,
        num_heads=model.num_heads,
        mlp_ratio=model.mlp_ratio,
        num_classes=model.num_outputs,
        class_token=model.class_token,
        attention=attention_impl(model),
        batch_size=batch_size,
        precision=precision,
    )


def vit_cost_params(model: ViT, batch_size: int, precision: str) -> dict[str, int | float]:
    """The cost model's figures as flat MLflow params (``cost/...``) for a built ViT.

    The parameter count is counted from the model; a disagreement with the closed form is
    logged as a warning (it means timm built something the cost model does not describe).

    Args:
        model: the ViT that trains.
        batch_size: B, the global batch of one optimizer step.
        precision: Lightning's ``trainer.precision``.

    Returns:
        ``cost/<figure>`` to value; FLOPs are forward FLOPs per image.
    """
    cost = cost_of(model, batch_size, precision)
    params = count_parameters(model)
    if params != cost.params:
        log.warning(
            "the ViT has %d parameters but the cost model predicts %d; cost/params logs the "
            "counted value",
            params,
            cost.params,
        )

    # TODO(dropout): the activation estimate leaves out dropout masks; a positive drop_rate
    # makes cost/activation_bytes an underestimate.
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        log.warning("cost/activation_bytes leaves out dropout masks (drop_rate > 0)")

    figures = {
        "patch_tokens": cost.patch_tokens,
        "tokens": cost.tokens,
        "head_dim": cost.head_dim,
        "attention_entries_per_layer": cost.attention_entries_per_layer,
        "attention_entries": cost.attention_entries,
        "mlp_width": cost.mlp_width,
        "params": params,
        "flops_forward": cost.flops_forward,
        "flops_attention": cost.flops_attention,
        "flops_projections": cost.flops_projections,
        "flops_mlp": cost.flops_mlp,
        "activation_bytes": cost.activation_bytes,
        "batch_size": cost.batch_size,
        "bytes_per_element": cost.bytes_per_element,
    }
    return {f"cost/{name}": value for name, value in figures.items()}
