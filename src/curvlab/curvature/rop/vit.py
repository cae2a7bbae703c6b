"""The closed-form R-operator (:mod:`curvlab.curvature.rop.mlp`) for curvlab's timm ViT.

The same idea as for the MLP: the gradient's forward and backward passes written out, each
step beside its directional derivative R{.} along v, so that the backward pass ends in
R{g} = H v without an autograd graph. The steps of a ViT (guide chapter 3) are patch
embedding, class token and position embedding, per block LayerNorm, multi-head attention,
LayerNorm and a GELU MLP with residual connections, a final LayerNorm, pooling and the head.
A linear layer takes 8 matrix products where the double backward takes 9 (the gradient 3),
an attention product 9 (gradient 3), and the elementwise steps (LayerNorm, GELU, softmax)
use their closed-form derivatives instead of autograd's generic second-order formulas. Of
a linear layer's 8, 2 belong to the gradient's own passes, which :class:`VitPass` runs once
per batch and keeps: further products at that batch take the other 6.

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

from curvlab.curvature.rop.losses import LossCurvature, has_hooks
from curvlab.models.vit import ViT

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

_layer_norm = torch.ops.aten.native_layer_norm  # (xhat, mean, 1 / std) without an affine map
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward


class _Linear:
    """A linear map of the last dimension, y = x W^T + b, and its R-images."""

    def __init__(self, module: nn.Linear | nn.Conv2d) -> None:
        self.module = module
        self.width = module.weight.shape[0]
        self.weight = module.weight.reshape(self.width, -1)
        self.shape: tuple[int, ...] = ()
        self.x = self.dy = self.rx = self.vw = None

    def forward(self, x: Tensor) -> Tensor:
        self.shape = x.shape
        self.x = x.reshape(-1, x.shape[-1])
        y = torch.addmm(self.module.bias, self.x, self.weight.t())
        return y.view(*x.shape[:-1], self.width)

    def backward(self, dy: Tensor, need_input: bool = True) -> Tensor | None:
        self.dy = dy.reshape(-1, self.width)
        return (self.dy @ self.weight).view(self.shape) if need_input else None

    def r_forward(self, rx: Tensor | None, directions: dict[int, Tensor]) -> Tensor:
        self.vw = directions[id(self.module.weight)].reshape(self.weight.shape)
        self.rx = None if rx is None else rx.reshape(self.x.shape)
        ry = torch.addmm(directions[id(self.module.bias)], self.x, self.vw.t())
        if self.rx is not None:
            ry.addmm_(self.rx, self.weight.t())
        return ry.view(*self.shape[:-1], self.width)

    def r_backward(
        self, rdy: Tensor, out: dict[int, Tensor], need_input: bool = True
    ) -> Tensor | None:
        """Writes (H v) of the weight and bias into ``out``; returns R{dL/dx}."""
        rdy = rdy.reshape(-1, self.width)
        hw = rdy.t() @ self.x
        if self.rx is not None:
            hw.addmm_(self.dy.t(), self.rx)
        out[id(self.module.weight)] = hw.view_as(self.module.weight)
        out[id(self.module.bias)] = rdy.sum(0)
        if not need_input:
            return None
        return (self.dy @ self.vw).addmm_(rdy, self.weight).view(self.shape)


class _LayerNorm:
    """LayerNorm over the last dimension, y = xhat gamma + beta, xhat = (x - mean) s.

    With s = 1 / sqrt(var + eps), the Jacobian of xhat in x is the symmetric
    J = s (I - 1/n - xhat xhat^T / n), so R{xhat} = J R{x} and dL/dx = J (gamma dL/dy) are
    both what torch's fused LayerNorm backward computes; only R{J} is written out.
    """

    def __init__(self, module: nn.LayerNorm) -> None:
        self.module = module
        self.x = self.xhat = self.mean = self.s = None
        self.dy = self.g = self.gx = self.dx = None
        self.rxhat = self.m1 = self.vg = None

    def _jacobian_times(self, t: Tensor) -> Tensor:
        width = (self.x.shape[-1],)
        mask = [True, False, False]
        return _layer_norm_backward(t, self.x, width, self.mean, self.s, None, None, mask)[0]

    def forward(self, x: Tensor) -> Tensor:
        self.x = x
        self.xhat, self.mean, self.s = _layer_norm(x, (x.shape[-1],), None, None, self.module.eps)
        return torch.addcmul(self.module.bias, self.xhat, self.module.weight)

    def backward(self, dy: Tensor) -> Tensor:
        self.dy, self.g = dy, dy * self.module.weight
        self.gx = (self.g * self.xhat).mean(-1, keepdim=True)
        self.dx = self._jacobian_times(self.g)
        return self.dx

    def r_forward(self, rx: Tensor, directions: dict[int, Tensor]) -> Tensor:
        self.vg = directions[id(self.module.weight)]
        self.rxhat = self._jacobian_times(rx)
        self.m1 = (self.xhat * rx).mean(-1, keepdim=True)  # R{s} = -s^2 m1
        ry = torch.addcmul(directions[id(self.module.bias)], self.rxhat, self.module.weight)
        return ry.addcmul_(self.xhat, self.vg)

    def r_backward(self, rdy: Tensor, out: dict[int, Tensor]) -> Tensor:
        xhat, rxhat, s, dy = self.xhat, self.rxhat, self.s, self.dy
        dims = tuple(range(rdy.dim() - 1))
        out[id(self.module.weight)] = (rdy * xhat).addcmul_(dy, rxhat).sum(dims)
        out[id(self.module.bias)] = rdy.sum(dims)
        rg = (rdy * self.module.weight).addcmul_(dy, self.vg)
        # R{dx} = J R{g} + R{J} g, R{J} g = R{s}/s dx - s (R{xhat} <g, xhat> + xhat <g, R{xhat}>)
        g_rx = (self.g * rxhat).mean(-1, keepdim=True)
        rj_g = (rxhat * self.gx).addcmul_(xhat, g_rx)
        rdx = self._jacobian_times(rg).addcmul_(self.dx, s * self.m1, value=-1.0)
        return rdx.addcmul_(rj_g, s, value=-1.0)


class _Gelu:
    """Exact GELU, a = z Phi(z): sigma' = Phi + z phi, sigma'' = phi (2 - z^2).

    One erf and one exp give all three; torch's fused ``gelu_backward`` would recompute
    sigma' (an erf and an exp) for each product with it.
    """

    def __init__(self) -> None:
        self.d1 = self.d2 = self.curve = self.rz = None

    def forward(self, z: Tensor) -> Tensor:
        cdf = torch.erf(z * _INV_SQRT_2).add_(1).mul_(0.5)
        z2 = z * z
        pdf = torch.exp(z2 * -0.5).mul_(_INV_SQRT_2PI)
        self.d1 = torch.addcmul(cdf, z, pdf)
        self.d2 = pdf.mul_(z2.neg_().add_(2))
        return cdf.mul_(z)

    def backward(self, da: Tensor) -> Tensor:
        self.curve, self.d2 = self.d2.mul_(da), None  # sigma''(z) dL/da
        return self.d1 * da

    def r_forward(self, rz: Tensor) -> Tensor:
        self.rz = rz
        return self.d1 * rz

    def r_backward(self, rda: Tensor) -> Tensor:
        return torch.addcmul(self.curve * self.rz, self.d1, rda)


class _SelfAttention:
    """Multi-head softmax attention between the qkv and output projections."""

    def __init__(self, heads: int, scale: float) -> None:
        self.heads, self.scale = heads, scale
        self.q = self.k = self.v = self.p = None
        self.do = self.dp = self.centred = self.ds = None
        self.rq = self.rk = self.rv = self.rp = None

    def _split(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # One copy each into (B, h, N, hd): every later product then reads them in place.
        b, n, _ = qkv.shape
        heads = qkv.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = heads.contiguous().unbind(0)
        return q * self.scale, k, v

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2).contiguous()

    def forward(self, qkv: Tensor) -> Tensor:
        self.q, self.k, self.v = self._split(qkv)
        self.p = torch.softmax(self.q @ self.k.transpose(-2, -1), dim=-1)
        return _merge(self.p @ self.v)

    def backward(self, d_out: Tensor) -> Tensor:
        q, k, v, p = self.q, self.k, self.v, self.p
        self.do = do = self._heads(d_out)
        self.dp = do @ v.transpose(-2, -1)
        dv = p.transpose(-2, -1) @ do
        # Softmax backward dS = P (dP - <P, dP>).
        self.centred = self.dp - (p * self.dp).sum(-1, keepdim=True)
        self.ds = ds = p * self.centred
        return _join((ds @ k).mul_(self.scale), ds.transpose(-2, -1) @ q, dv)

    def r_forward(self, rqkv: Tensor) -> Tensor:
        q, k, v, p = self.q, self.k, self.v, self.p
        self.rq, self.rk, self.rv = rq, rk, rv = self._split(rqkv)
        rs = (rq @ k.transpose(-2, -1)).add_(q @ rk.transpose(-2, -1))
        self.rp = rp = p * (rs - (p * rs).sum(-1, keepdim=True))
        return _merge((rp @ v).add_(p @ rv))

    def r_backward(self, rd_out: Tensor) -> Tensor:
        q, k, v, p, do, ds = self.q, self.k, self.v, self.p, self.do, self.ds
        rq, rk, rv, rp = self.rq, self.rk, self.rv, self.rp
        rdo = self._heads(rd_out)
        rdp = (rdo @ v.transpose(-2, -1)).add_(do @ rv.transpose(-2, -1))
        rdv = (rp.transpose(-2, -1) @ do).add_(p.transpose(-2, -1) @ rdo)
        r_inner = (rp * self.dp).sum(-1, keepdim=True).add_((p * rdp).sum(-1, keepdim=True))
        rds = (rp * self.centred).add_(p * rdp.sub_(r_inner))
        rdq = (rds @ k).add_(ds @ rk).mul_(self.scale)
        rdk = (rds.transpose(-2, -1) @ q).add_(ds.transpose(-2, -1) @ rq)
        return _join(rdq, rdk, rdv)


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


class VitPass:
    """The gradient's forward and backward pass of the ViT at one batch, kept for products.

    The activations, LayerNorm statistics, attention probabilities, GELU derivatives and
    every dL/d(.) are computed once here; :meth:`hvp` pushes a v through their R-images.
    """

    def __init__(
        self,
        plan: VitPlan,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        w: float,
        params: Sequence[Tensor],
    ) -> None:
        net = self.net = plan.net
        self.params = list(params)
        self.embed = _Linear(net.patch_embed.proj)
        self.blocks = [_BlockPass(block) for block in plan.blocks]
        self.final = _LayerNorm(net.norm) if _affine_norm(net.norm) else None
        self.pool_norm = _LayerNorm(net.fc_norm) if _affine_norm(net.fc_norm) else None
        self.head = _Linear(net.head)
        self.prefix = 1 if net.cls_token is not None else 0
        with torch.no_grad():
            t = self.embed.forward(_patches(x, net.patch_embed.proj.kernel_size[0]))
            if self.prefix:
                t = torch.cat((net.cls_token.expand(len(x), -1, -1), t), dim=1)
            t = t + net.pos_embed
            for block in self.blocks:
                t = block.forward(t)
            if self.final is not None:
                t = self.final.forward(t)
            self.tokens = t.shape
            pooled = t[:, 0] if net.global_pool == "token" else t.mean(1)
            if self.pool_norm is not None:
                pooled = self.pool_norm.forward(pooled)
            self.loss = LossCurvature(loss_fn, self.head.forward(pooled), y, w)

            d = self.head.backward(self.loss.delta)
            if self.pool_norm is not None:
                d = self.pool_norm.backward(d)
            dt = self._unpool(d)
            if self.final is not None:
                dt = self.final.backward(dt)
            for block in reversed(self.blocks):
                dt = block.backward(dt)
            self.embed.backward(dt[:, self.prefix :], need_input=False)

    def _unpool(self, d: Tensor) -> Tensor:
        """dL/d(tokens) from dL/d(pooled)."""
        if self.net.global_pool == "token":
            dt = d.new_zeros(self.tokens)
            dt[:, 0] = d
            return dt
        return (d / self.tokens[1]).unsqueeze(1).expand(self.tokens)

    def hvp(self, v: Sequence[Tensor]) -> list[Tensor]:
        """H v at this batch, for v in the order of ``params``."""
        net = self.net
        directions = {id(p): t for p, t in zip(self.params, v, strict=True)}
        out: dict[int, Tensor] = {}
        with torch.no_grad():
            rt = self.embed.r_forward(None, directions)
            if self.prefix:
                v_cls = directions[id(net.cls_token)].expand(len(rt), -1, -1)
                rt = torch.cat((v_cls, rt), dim=1)
            rt = rt + directions[id(net.pos_embed)]
            for block in self.blocks:
                rt = block.r_forward(rt, directions)
            if self.final is not None:
                rt = self.final.r_forward(rt, directions)
            r_pooled = rt[:, 0] if net.global_pool == "token" else rt.mean(1)
            if self.pool_norm is not None:
                r_pooled = self.pool_norm.r_forward(r_pooled, directions)
            r_logits = self.head.r_forward(r_pooled, directions)

            rd = self.head.r_backward(self.loss.hessian_times(r_logits), out)
            if self.pool_norm is not None:
                rd = self.pool_norm.r_backward(rd, out)
            rdt = self._unpool(rd)
            if self.final is not None:
                rdt = self.final.r_backward(rdt, out)
            for block in reversed(self.blocks):
                rdt = block.r_backward(rdt, out)
            out[id(net.pos_embed)] = rdt.sum(0, keepdim=True)
            if self.prefix:
                out[id(net.cls_token)] = rdt[:, :1].sum(0, keepdim=True)
            self.embed.r_backward(rdt[:, self.prefix :], out, need_input=False)
        return [out[id(p)] for p in self.params]


class _BlockPass:
    """One pre-norm transformer block: t + attn(norm1(t)), then t + mlp(norm2(t))."""

    def __init__(self, block: Block) -> None:
        attn, mlp = block.attn, block.mlp
        self.norm1, self.qkv = _LayerNorm(block.norm1), _Linear(attn.qkv)
        self.attn, self.proj = _SelfAttention(attn.num_heads, attn.scale), _Linear(attn.proj)
        self.norm2, self.fc1 = _LayerNorm(block.norm2), _Linear(mlp.fc1)
        self.act, self.fc2 = _Gelu(), _Linear(mlp.fc2)

    def forward(self, t: Tensor) -> Tensor:
        t = t + self.proj.forward(self.attn.forward(self.qkv.forward(self.norm1.forward(t))))
        return t + self.fc2.forward(self.act.forward(self.fc1.forward(self.norm2.forward(t))))

    def backward(self, dt: Tensor) -> Tensor:
        da = self.fc1.backward(self.act.backward(self.fc2.backward(dt)))
        dt = dt + self.norm2.backward(da)
        da = self.qkv.backward(self.attn.backward(self.proj.backward(dt)))
        return dt + self.norm1.backward(da)

    def r_forward(self, rt: Tensor, directions: dict[int, Tensor]) -> Tensor:
        ra = self.qkv.r_forward(self.norm1.r_forward(rt, directions), directions)
        rt = rt + self.proj.r_forward(self.attn.r_forward(ra), directions)
        ra = self.fc1.r_forward(self.norm2.r_forward(rt, directions), directions)
        return rt + self.fc2.r_forward(self.act.r_forward(ra), directions)

    def r_backward(self, rdt: Tensor, out: dict[int, Tensor]) -> Tensor:
        rda = self.act.r_backward(self.fc2.r_backward(rdt, out))
        rdt = rdt + self.norm2.r_backward(self.fc1.r_backward(rda, out), out)
        rda = self.attn.r_backward(self.proj.r_backward(rdt, out))
        return rdt + self.norm1.r_backward(self.qkv.r_backward(rda, out), out)


def _patches(x: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (B, patches, C size size): with stride = kernel the patch embedding's
    convolution is a linear map of these."""
    b, c, height, width = x.shape
    patches = x.reshape(b, c, height // size, size, width // size, size)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * size * size)
