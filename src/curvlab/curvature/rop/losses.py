"""What the R-operator needs of a loss: dL/d(out), and r -> H_out r at the same outputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def has_hooks(model: nn.Module) -> bool:
    """Forward hooks could change what a module computes, which the closed forms skip."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class LossCurvature:
    """``w`` times the loss's gradient in the outputs and its Hessian there, as products.

    Closed forms for plain cross entropy and MSE; any other loss is differentiated twice by
    autograd on a leaf copy of the outputs, once, and its graph kept for the products (with
    the global RNG put back, as the measurement context would).
    """

    def __init__(
        self, loss_fn: Callable[[Tensor, Tensor], Tensor], out: Tensor, y: Tensor, w: float
    ) -> None:
        self._p: Tensor | None = None
        self._leaf: Tensor | None = None
        self._grad: Tensor | None = None
        if _is_plain(loss_fn, nn.CrossEntropyLoss) and _class_targets(loss_fn, out, y):
            # L = mean_i -log softmax(z_i)[y_i]: dL/dz = (p - onehot(y)) / B and
            # H_z r = p (r - <p, r>) / B, with p = softmax(z).
            self.scale = w / len(out)
            self._p = torch.softmax(out, dim=-1)
            delta = self._p.clone()
            delta[torch.arange(len(out), device=out.device), y] -= 1
            self.delta = delta.mul_(self.scale)
        elif _is_plain(loss_fn, nn.MSELoss) and y.shape == out.shape:
            self.scale = 2 * w / out.numel()
            self.delta = (out - y).mul_(self.scale)
        else:
            self.scale = 0.0
            devices = [out.device.index or 0] if out.is_cuda else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                leaf = out.detach().requires_grad_()
                (grad,) = torch.autograd.grad(w * loss_fn(leaf, y), leaf, create_graph=True)
            self.delta = grad.detach()
            if grad.requires_grad:  # else the loss is linear in the outputs: H_out = 0
                self._leaf, self._grad = leaf, grad

    def hessian_times(self, r: Tensor) -> Tensor:
        """``w`` H_out ``r``: the R-image of :attr:`delta`."""
        if self._p is not None:
            p = self._p
            return (p * (r - (p * r).sum(-1, keepdim=True))).mul_(self.scale)
        if self._grad is not None:
            (product,) = torch.autograd.grad(
                self._grad, self._leaf, r, retain_graph=True, materialize_grads=True
            )
            return product
        return r * self.scale  # MSE, or zero for a loss linear in the outputs


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
