"""Hessian-vector products by Pearlmutter's R-operator, written out for curvlab's models.

H v = R{g}, the directional derivative of the gradient along v (guide 2.11). For the models
curvlab builds, the gradient's forward and backward passes are written out here together with
their R-images, so a product takes no autograd graph and no double backward. The passes
themselves do not depend on v: an operator that takes many products at one batch (Lanczos,
Hutchinson) runs them once and keeps them, and every further product costs the R-images
alone. :func:`closed_form` says whether a model qualifies (:mod:`.mlp`, :mod:`.vit`); every
other model takes the autograd methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torch import Tensor, nn

from curvlab.curvature.rop import mlp, vit
from curvlab.curvature.rop.mlp import SUPPORTED_ACTIVATIONS


class _Pass(Protocol):
    def hvp(self, v: Sequence[Tensor]) -> list[Tensor]: ...


class ClosedForm:
    """v -> H v for one model, loss and set of batches, by the R-operator.

    Args:
        kind: ``mlp`` or ``vit``.
        at: builds the gradient's pass at one ``(inputs, targets, weight)`` batch.
        batches: the batches H is summed over.
        n_params: how many tensors a v has.
        keep: keep each batch's pass for the next product (memory for a forward and backward
            pass per batch); else it is rebuilt for every product.
    """

    def __init__(
        self,
        kind: str,
        at: Callable[[Tensor, Tensor, float], _Pass],
        batches: Sequence[tuple[Tensor, Tensor, float]],
        n_params: int,
        keep: bool,
    ) -> None:
        self.kind = kind
        self._at = at
        self._batches = list(batches)
        self._n_params = n_params
        self._kept: list[_Pass] | None = None
        self.keep = keep

    def product(self, v: Sequence[Tensor]) -> list[Tensor]:
        """H v, for ``v`` in the order of the trainable parameters."""
        if len(v) != self._n_params:
            name = "MLP" if self.kind == "mlp" else "ViT"
            raise ValueError(
                f"v has {len(v)} tensors; the {name} has {self._n_params} trainable "
                "parameters (one tensor each, in model.parameters() order)."
            )
        if self.keep and self._kept is None:
            self._kept = [self._at(x, y, w) for x, y, w in self._batches]
        passes = self._kept or (self._at(x, y, w) for x, y, w in self._batches)
        total: list[Tensor] | None = None
        for point in passes:
            piece = point.hvp(v)
            if total is None:
                total = piece
            else:
                total = [t.add_(p) for t, p in zip(total, piece, strict=True)]
        assert total is not None
        return total


def closed_form(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    params: Sequence[Tensor],
    batches: Sequence[tuple[Tensor, Tensor, float]],
    keep: bool = False,
) -> ClosedForm | None:
    """The R-operator for ``model`` if it is one whose passes are written out here, else None.

    Args:
        model: the network; ``params`` must be all of its parameters.
        loss_fn: the loss of the outputs.
        params: the trainable parameters, in ``model.parameters()`` order.
        batches: ``(inputs, targets, weight)`` triples with batched inputs.
        keep: keep the gradient's passes between products (see :class:`ClosedForm`).
    """
    if not batches or any(x.dim() < 2 for x, _, _ in batches):
        return None
    n = len(params)
    chain = mlp.mlp_chain(model, params)
    if chain is not None:
        return ClosedForm(
            "mlp", lambda x, y, w: mlp.MlpPass(chain, loss_fn, x, y, w), batches, n, keep
        )
    plan = vit.vit_plan(model, params)
    if plan is not None and all(tuple(x.shape[1:]) == model.input_shape for x, _, _ in batches):
        return ClosedForm(
            "vit", lambda x, y, w: vit.VitPass(plan, loss_fn, x, y, w, params), batches, n, keep
        )
    return None


__all__ = ["SUPPORTED_ACTIVATIONS", "ClosedForm", "closed_form"]
