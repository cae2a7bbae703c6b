"""The closed-form R-operator (:mod:`curvlab.curvature.rop.mlp`) for curvlab's timm ViT.

The same idea as for the MLP: the gradient's forward and backward passes written out, each
step beside its directional derivative R{.} along v, so that the backward pass ends in
R{g} = H v without an autograd graph. The steps of a ViT (guide chapter 3) are patch
embedding, class token and position embedding, per block LayerNorm, multi-head attention,
LayerNorm and a GELU MLP with residual connections, a final LayerNorm, pooling and the head.
A linear layer takes 8 matrix products where the double backward takes 9 (the gradient 3),
an attention product 9 (gradient 3), and the elementwise steps (LayerNorm, GELU, softmax)
use their closed-form derivatives instead of autograd's generic second-order formulas.

Only the configuration :class:`curvlab.models.ViT` builds qualifies (:func:`vit_plan`);
anything else timm can do (register tokens, layer scale, QK norm, gated or pooled attention,
dynamic image sizes) takes the double backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers import Mlp, PatchEmbed
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from curvlab.curvature.rop.losses import has_hooks, loss_derivatives
from curvlab.models.vit import ViT

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

_layer_norm = torch.ops.aten.native_layer_norm  # (xhat, mean, 1 / std) without an affine map
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward


@dataclass
class _Linear:
    """A linear map of the last dimension; caches its input and the input's R-image."""

    weight: Tensor
    bias: Tensor
    vw: Tensor
    vb: Tensor
    x: Tensor | None = None
    rx: Tensor | None = None
    shape: tuple[int, ...] = ()

    def forward(self, x: Tensor, rx: Tensor | None) -> tuple[Tensor, Tensor]:
        self.shape = x.shape
        self.x = x.reshape(-1, x.shape[-1])
        self.rx = None if rx is None else rx.reshape(self.x.shape)
        y = torch.addmm(self.bias, self.x, self.weight.t())
        ry = torch.addmm(self.vb, self.x, self.vw.t())
        if self.rx is not None:
            ry.addmm_(self.rx, self.weight.t())
        shape = (*x.shape[:-1], self.weight.shape[0])
        return y.view(shape), ry.view(shape)

    def backward(
        self, dy: Tensor, rdy: Tensor, need_input: bool = True
    ) -> tuple[tuple[Tensor, Tensor], Tensor | None, Tensor | None]:
        """(H v for weight, bias) and dL/dx with its R-image (None when not needed)."""
        dy, rdy = dy.reshape(-1, dy.shape[-1]), rdy.reshape(-1, rdy.shape[-1])
        hw = rdy.t() @ self.x
        if self.rx is not None:
            hw.addmm_(dy.t(), self.rx)
        hb = rdy.sum(0)
        if not need_input:
            return (hw, hb), None, None
        dx = dy @ self.weight
        rdx = (dy @ self.vw).addmm_(rdy, self.weight)
        return (hw, hb), dx.view(self.shape), rdx.view(self.shape)


@dataclass
class _LayerNorm:
    """LayerNorm over the last dimension, y = xhat gamma + beta, xhat = (x - mean) s.

    With s = 1 / sqrt(var + eps), the Jacobian of xhat in x is the symmetric
    J = s (I - 1/n - xhat xhat^T / n), so R{xhat} = J R{x} and dL/dx = J (gamma dL/dy) are
    both what torch's fused LayerNorm backward computes; only R{J} is written out.
    """

    gamma: Tensor
    beta: Tensor
    vg: Tensor
    vb: Tensor
    eps: float
    x: Tensor | None = None
    xhat: Tensor | None = None
    rxhat: Tensor | None = None
    mean: Tensor | None = None
    s: Tensor | None = None
    m1: Tensor | None = None

    def _jacobian_times(self, t: Tensor) -> Tensor:
        width = (self.x.shape[-1],)
        mask = [True, False, False]
        return _layer_norm_backward(t, self.x, width, self.mean, self.s, None, None, mask)[0]

    def forward(self, x: Tensor, rx: Tensor) -> tuple[Tensor, Tensor]:
        width = (x.shape[-1],)
        self.x = x
        self.xhat, self.mean, self.s = _layer_norm(x, width, None, None, self.eps)
        self.rxhat = self._jacobian_times(rx)
        self.m1 = (self.xhat * rx).mean(-1, keepdim=True)  # R{s} = -s^2 m1
        y = torch.addcmul(self.beta, self.xhat, self.gamma)
        ry = torch.addcmul(self.vb, self.rxhat, self.gamma).addcmul_(self.xhat, self.vg)
        return y, ry

    def backward(self, dy: Tensor, rdy: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor, Tensor]:
        xhat, rxhat, s = self.xhat, self.rxhat, self.s
        dims = tuple(range(dy.dim() - 1))
        hg = (rdy * xhat).addcmul_(dy, rxhat).sum(dims)
        hb = rdy.sum(dims)
        g = dy * self.gamma
        rg = (rdy * self.gamma).addcmul_(dy, self.vg)
        dx = self._jacobian_times(g)
        # R{dx} = J R{g} + R{J} g, R{J} g = R{s}/s dx - s (R{xhat} <g, xhat> + xhat <g, R{xhat}>)
        gx = (g * xhat).mean(-1, keepdim=True)
        g_rx = (g * rxhat).mean(-1, keepdim=True)
        rj_g = (rxhat * gx).addcmul_(xhat, g_rx)
        rdx = self._jacobian_times(rg).addcmul_(dx, s * self.m1, value=-1.0)
        return (hg, hb), dx, rdx.addcmul_(rj_g, s, value=-1.0)


@dataclass
class _Gelu:
    """Exact GELU, a = z Phi(z): sigma' = Phi + z phi, sigma'' = phi (2 - z^2).

    One erf and one exp give all three; torch's fused ``gelu_backward`` would recompute
    sigma' (an erf and an exp) for each of the three products with it.
    """

    rz: Tensor | None = None
    d1: Tensor | None = None
    d2: Tensor | None = None

    def forward(self, z: Tensor, rz: Tensor) -> tuple[Tensor, Tensor]:
        cdf = torch.erf(z * _INV_SQRT_2).add_(1).mul_(0.5)
        z2 = z * z
        pdf = torch.exp(z2 * -0.5).mul_(_INV_SQRT_2PI)
        self.rz = rz
        self.d1 = torch.addcmul(cdf, z, pdf)
        self.d2 = pdf.mul_(z2.neg_().add_(2))
        return cdf.mul_(z), self.d1 * rz

    def backward(self, da: Tensor, rda: Tensor) -> tuple[Tensor, Tensor]:
        rdz = (self.d1 * rda).addcmul_(self.d2 * self.rz, da)
        return self.d1 * da, rdz


@dataclass
class _SelfAttention:
    """Multi-head softmax attention between the qkv and output projections."""

    heads: int
    scale: float
    q: Tensor | None = None
    k: Tensor | None = None
    v: Tensor | None = None
    rq: Tensor | None = None
    rk: Tensor | None = None
    rv: Tensor | None = None
    p: Tensor | None = None
    rp: Tensor | None = None

    def _split(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # One copy each into (B, h, N, hd): every later product then reads them in place.
        b, n, _ = qkv.shape
        heads = qkv.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = heads.contiguous().unbind(0)
        return q, k, v

    def forward(self, qkv: Tensor, rqkv: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = self._split(qkv)
        rq, rk, rv = self._split(rqkv)
        q, rq = q * self.scale, rq * self.scale
        p = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        rs = rq @ k.transpose(-2, -1) + q @ rk.transpose(-2, -1)
        rp = p * (rs - (p * rs).sum(-1, keepdim=True))
        out = p @ v
        r_out = rp @ v + p @ rv
        self.q, self.k, self.v, self.rq, self.rk, self.rv = q, k, v, rq, rk, rv
        self.p, self.rp = p, rp
        return _merge(out), _merge(r_out)

    def backward(self, d_out: Tensor, rd_out: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = d_out.shape
        do = d_out.view(b, n, self.heads, -1).transpose(1, 2).contiguous()
        rdo = rd_out.view(b, n, self.heads, -1).transpose(1, 2).contiguous()
        q, k, v, rq, rk, rv = self.q, self.k, self.v, self.rq, self.rk, self.rv
        p, rp = self.p, self.rp
        dp = do @ v.transpose(-2, -1)
        rdp = rdo @ v.transpose(-2, -1) + do @ rv.transpose(-2, -1)
        dv = p.transpose(-2, -1) @ do
        rdv = rp.transpose(-2, -1) @ do + p.transpose(-2, -1) @ rdo
        # Softmax backward dS = P (dP - <P, dP>) and its R-image.
        centred = dp - (p * dp).sum(-1, keepdim=True)
        r_inner = (rp * dp).sum(-1, keepdim=True) + (p * rdp).sum(-1, keepdim=True)
        ds = p * centred
        rds = rp * centred + p * (rdp - r_inner)
        dq = (ds @ k) * self.scale
        rdq = (rds @ k + ds @ rk) * self.scale
        dk = ds.transpose(-2, -1) @ q
        rdk = rds.transpose(-2, -1) @ q + ds.transpose(-2, -1) @ rq
        return _join(dq, dk, dv), _join(rdq, rdk, rdv)


def _merge(heads: Tensor) -> Tensor:
    """(B, h, N, hd) -> (B, N, h * hd)."""
    b, h, n, hd = heads.shape
    return heads.transpose(1, 2).reshape(b, n, h * hd)


def _join(dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """Gradients of q, k, v (B, h, N, hd) back into the qkv layout (B, N, 3 h hd)."""
    b, h, n, hd = dq.shape
    out = dq.new_empty(b, n, 3, h, hd)
    for i, part in enumerate((dq, dk, dv)):
        out[:, :, i] = part.transpose(1, 2)
    return out.view(b, n, 3 * h * hd)


@dataclass
class VitPlan:
    """The pieces of a curvlab ViT the R-operator walks through."""

    net: VisionTransformer
    blocks: list[Block]


def vit_plan(model: nn.Module, params: Sequence[Tensor]) -> VitPlan | None:
    """``model``'s layout if the R-operator computes its products exactly, else None."""
    if type(model) is not ViT or type(model.net) is not VisionTransformer:
        return None
    net = model.net
    if not _stock_embedding(net) or not _stock_head(net):
        return None
    blocks = list(net.blocks)
    if not all(_stock_block(block) for block in blocks):
        return None
    if has_hooks(model):
        return None
    every = list(model.parameters())
    if len(every) != len(params) or {id(p) for p in every} != {id(p) for p in params}:
        return None  # a frozen parameter: the product is over a subset
    return VitPlan(net, blocks)


def _is(module: nn.Module, kind: type) -> bool:
    return type(module) is kind


def _affine_norm(module: nn.Module) -> bool:
    """torch's or timm's LayerNorm (the same function) with a weight and a bias."""
    kind = type(module) in (nn.LayerNorm, TimmLayerNorm)
    return kind and module.weight is not None and module.bias is not None


def _dropout_or_identity(module: nn.Module) -> bool:
    return type(module) in (nn.Identity, nn.Dropout)  # both the identity in eval mode


def _stock_embedding(net: VisionTransformer) -> bool:
    embed = net.patch_embed
    if not _is(embed, PatchEmbed) or not _is(embed.proj, nn.Conv2d) or not embed.flatten:
        return False
    conv = embed.proj
    square = conv.kernel_size == conv.stride and conv.padding == (0, 0)
    plain = conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None
    if not (square and plain and _is(embed.norm, nn.Identity)):
        return False
    if net.dynamic_img_size or getattr(embed, "dynamic_img_pad", False):
        return False
    tokens = net.reg_token is None and not net.no_embed_class and net.pos_embed is not None
    return tokens and _dropout_or_identity(net.pos_drop) and _is(net.patch_drop, nn.Identity)


def _stock_head(net: VisionTransformer) -> bool:
    pool = (net.global_pool == "token" and net.cls_token is not None) or (
        net.global_pool == "avg" and net.num_prefix_tokens == 0
    )
    norms = all(_is(m, nn.Identity) or _affine_norm(m) for m in (net.norm, net.fc_norm))
    head = _is(net.head, nn.Linear) and net.head.bias is not None
    return (
        pool
        and norms
        and head
        and net.attn_pool is None
        and _is(net.norm_pre, nn.Identity)
        and _dropout_or_identity(net.head_drop)
    )


def _stock_block(block: nn.Module) -> bool:
    if not _is(block, Block) or not (_affine_norm(block.norm1) and _affine_norm(block.norm2)):
        return False
    attn, mlp = block.attn, block.mlp
    if not (_is(attn, Attention) and _is(mlp, Mlp)):
        return False
    identities = (block.ls1, block.ls2, block.drop_path1, block.drop_path2, attn.q_norm)
    identities += (attn.k_norm, attn.norm, mlp.norm)
    linears = (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)
    dropouts = (attn.attn_drop, attn.proj_drop, mlp.drop1, mlp.drop2)
    return (
        all(_is(m, nn.Identity) for m in identities)
        and all(_is(m, nn.Linear) and m.bias is not None for m in linears)
        and all(_dropout_or_identity(m) for m in dropouts)
        and getattr(attn, "gate", None) is None
        and _is(mlp.act, nn.GELU)
        and mlp.act.approximate == "none"
    )


def vit_hvp(
    plan: VitPlan,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Sequence[tuple[Tensor, Tensor, float]],
    v: Sequence[Tensor],
    params: Sequence[Tensor],
) -> list[Tensor]:
    """H v of the weighted sum of ``loss_fn(vit(x), y)`` over ``(x, y, weight)`` batches."""
    if len(v) != len(params):
        raise ValueError(f"v has {len(v)} tensors; the ViT has {len(params)} parameters.")
    directions = {id(p): t for p, t in zip(params, v, strict=True)}
    total: dict[int, Tensor] = {}
    for x, y, w in batches:
        for key, piece in _product(plan, loss_fn, x, y, w, directions).items():
            total[key] = total[key].add_(piece) if key in total else piece
    return [total[id(p)] for p in params]


def _product(
    plan: VitPlan,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    w: float,
    directions: dict[int, Tensor],
) -> dict[int, Tensor]:
    net = plan.net
    out: dict[int, Tensor] = {}

    def linear(module: nn.Linear | nn.Conv2d) -> _Linear:
        weight, vw, vb = module.weight, directions[id(module.weight)], directions[id(module.bias)]
        width = weight.shape[0]
        return _Linear(weight.reshape(width, -1), module.bias, vw.reshape(width, -1), vb)

    def norm(module: nn.LayerNorm) -> _LayerNorm:
        v_g, v_b = directions[id(module.weight)], directions[id(module.bias)]
        return _LayerNorm(module.weight, module.bias, v_g, v_b, module.eps)

    def keep(module: nn.Module, pieces: tuple[Tensor, ...]) -> None:
        for param, piece in zip((module.weight, module.bias), pieces, strict=True):
            out[id(param)] = piece.reshape(param.shape)

    with torch.no_grad():
        # Patch embedding: a convolution with stride = kernel is a linear map of patches.
        conv = net.patch_embed.proj
        b, c, height, width = x.shape
        size = conv.kernel_size[0]
        patches = x.reshape(b, c, height // size, size, width // size, size)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * size * size)
        embed = linear(conv)
        t, rt = embed.forward(patches, None)
        prefix = 0
        if net.cls_token is not None:
            prefix = 1
            v_cls = directions[id(net.cls_token)]
            t = torch.cat((net.cls_token.expand(b, -1, -1), t), dim=1)
            rt = torch.cat((v_cls.expand(b, -1, -1), rt), dim=1)
        t = t + net.pos_embed
        rt = rt + directions[id(net.pos_embed)]

        stages = []
        for block in plan.blocks:
            attn, mlp = block.attn, block.mlp
            parts = (
                norm(block.norm1),
                linear(attn.qkv),
                _SelfAttention(attn.num_heads, attn.scale),
                linear(attn.proj),
                norm(block.norm2),
                linear(mlp.fc1),
                _Gelu(),
                linear(mlp.fc2),
            )
            n1, qkv, att, proj, n2, fc1, act, fc2 = parts
            a, ra = n1.forward(t, rt)
            a, ra = att.forward(*qkv.forward(a, ra))
            a, ra = proj.forward(a, ra)
            t, rt = t + a, rt + ra
            a, ra = n2.forward(t, rt)
            a, ra = fc2.forward(*act.forward(*fc1.forward(a, ra)))
            t, rt = t + a, rt + ra
            stages.append(parts)

        final = norm(net.norm) if _affine_norm(net.norm) else None
        if final is not None:
            t, rt = final.forward(t, rt)
        n_tokens = t.shape[1]
        if net.global_pool == "token":
            pooled, r_pooled = t[:, 0], rt[:, 0]
        else:
            pooled, r_pooled = t.mean(1), rt.mean(1)
        pool_norm = norm(net.fc_norm) if _affine_norm(net.fc_norm) else None
        if pool_norm is not None:
            pooled, r_pooled = pool_norm.forward(pooled, r_pooled)
        head = linear(net.head)
        logits, r_logits = head.forward(pooled, r_pooled)

        d, rd = loss_derivatives(loss_fn, logits, r_logits, y, w)

        pieces, d, rd = head.backward(d, rd)
        keep(net.head, pieces)
        if pool_norm is not None:
            pieces, d, rd = pool_norm.backward(d, rd)
            keep(net.fc_norm, pieces)
        if net.global_pool == "token":
            dt = torch.zeros_like(t)
            rdt = torch.zeros_like(t)
            dt[:, 0], rdt[:, 0] = d, rd
        else:
            dt = (d / n_tokens).unsqueeze(1).expand_as(t)
            rdt = (rd / n_tokens).unsqueeze(1).expand_as(t)
        if final is not None:
            pieces, dt, rdt = final.backward(dt, rdt)
            keep(net.norm, pieces)

        for block, parts in zip(reversed(plan.blocks), reversed(stages), strict=True):
            n1, qkv, att, proj, n2, fc1, act, fc2 = parts
            pieces, da, rda = fc2.backward(dt, rdt)
            keep(block.mlp.fc2, pieces)
            pieces, da, rda = fc1.backward(*act.backward(da, rda))
            keep(block.mlp.fc1, pieces)
            pieces, da, rda = n2.backward(da, rda)
            keep(block.norm2, pieces)
            dt, rdt = dt + da, rdt + rda
            pieces, da, rda = proj.backward(dt, rdt)
            keep(block.attn.proj, pieces)
            da, rda = att.backward(da, rda)
            pieces, da, rda = qkv.backward(da, rda)
            keep(block.attn.qkv, pieces)
            pieces, da, rda = n1.backward(da, rda)
            keep(block.norm1, pieces)
            dt, rdt = dt + da, rdt + rda

        out[id(net.pos_embed)] = rdt.sum(0, keepdim=True)
        if net.cls_token is not None:
            out[id(net.cls_token)] = rdt[:, :1].sum(0, keepdim=True)
        pieces, _, _ = embed.backward(dt[:, prefix:], rdt[:, prefix:], need_input=False)
        keep(conv, pieces)
    return out
