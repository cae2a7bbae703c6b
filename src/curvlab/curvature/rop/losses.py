"""What the R-operator needs of a loss: dL/d(out) and H_out R{out}, and a shared check."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def has_hooks(model: nn.Module) -> bool:
    """Forward hooks could change what a module computes, which the closed forms skip."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def loss_derivatives(
    loss_fn: Callable[[Tensor, Tensor], Tensor], out: Tensor, r_out: Tensor, y: Tensor, w: float
) -> tuple[Tensor, Tensor]:
    """w dL/d(out) and w H_out R{out}: closed forms for plain cross entropy and MSE."""
    if _is_plain(loss_fn, nn.CrossEntropyLoss) and _class_targets(loss_fn, out, y):
        # L = mean_i -log softmax(z_i)[y_i]: dL/dz = (p - onehot(y)) / B and
        # H_z r = p (r - <p, r>) / B, with p = softmax(z).
        scale = w / len(out)
        p = torch.softmax(out, dim=-1)
        delta = p.clone()
        delta[torch.arange(len(out), device=out.device), y] -= 1
        return delta.mul_(scale), (p * (r_out - (p * r_out).sum(-1, keepdim=True))).mul_(scale)
    if _is_plain(loss_fn, nn.MSELoss) and y.shape == out.shape:
        scale = 2 * w / out.numel()
        return (out - y).mul_(scale), r_out * scale
    # Any other loss: its first and second derivative in the outputs, by autograd on a leaf,
    # with the global RNG put back as the measurement context would.
    devices = [out.device.index or 0] if out.is_cuda else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        leaf = out.detach().requires_grad_()
        (delta,) = torch.autograd.grad(w * loss_fn(leaf, y), leaf, create_graph=True)
        if not delta.requires_grad:  # the loss is linear in the outputs
            return delta.detach(), torch.zeros_like(r_out)
        (r_delta,) = torch.autograd.grad(delta, leaf, r_out, materialize_grads=True)
    return delta.detach(), r_delta


def _is_plain(loss_fn: object, kind: type[nn.Module]) -> bool:
    """A stock ``kind`` loss with mean reduction and no weighting or smoothing."""
    return (
        type(loss_fn) is kind
        and loss_fn.reduction == "mean"
        and getattr(loss_fn, "weight", None) is None
        and getattr(loss_fn, "label_smoothing", 0.0) == 0.0
    )


def _class_targets(loss_fn: nn.CrossEntropyLoss, out: Tensor, y: Tensor) -> bool:
    """Logits (B, C) with integer class targets (B,), none of them ``ignore_index``."""
    if out.dim() != 2 or y.shape != out.shape[:1] or y.is_floating_point():
        return False
    return not bool((y == loss_fn.ignore_index).any())
