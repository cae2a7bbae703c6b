"""Curvature operators at a fixed theta: v -> H v (exact Hessian) and v -> G v (Gauss-Newton).

Guide sections 2.11 and 3.7: H v = grad_theta(g^T v) with g = grad_theta f, so a product costs
one more backward pass through the graph of g and no Hessian is ever formed. An operator is
built once per theta and reused by every product of an iterative method (Lanczos, Hutchinson,
conjugate gradient): for a single batch it keeps the graph of g, so each further product costs
one backward pass instead of a forward and two backward passes.

Build operators inside :func:`curvlab.curvature.measurement_mode`.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from curvlab.curvature import rop
from curvlab.curvature._support import (
    BatchLike,
    LossFn,
    Reduce,
    as_batches,
    flatten,
    make_generator,
    raise_if_no_double_backward,
    trainable_params,
    unflatten,
)

log = logging.getLogger(__name__)

Method = Literal["auto", "reverse", "forward", "rop"]
METHODS = ("auto", "reverse", "forward", "rop")

# The fastest HVP method measured per model and usage ("single" product or "repeated" ones).
_FASTEST: weakref.WeakKeyDictionary[nn.Module, dict[str, str]] = weakref.WeakKeyDictionary()
_MARGIN = 0.9  # forward-over-reverse is chosen only if at least 10% faster than reverse


class CurvatureOperator:
    """A symmetric curvature matrix of the loss, applied to parameter-shaped vectors.

    Args:
        model: the network; products are taken over its trainable parameters, in order.
        loss_fn: ``loss_fn(model(inputs), targets)`` gives a mean-reduced scalar.
        batch: an ``(inputs, targets)`` pair or a list of them (weighted by size).
        reduce: applied to every product (e.g. an all-reduce mean across DDP ranks).
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, batch: BatchLike, reduce: Reduce | None = None
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.params = trainable_params(model)
        if not self.params:
            raise ValueError("the model has no parameters that require grad.")
        self.batches = as_batches(batch, self.params[0].device)
        self.reduce = reduce
        self.n_products = 0

    def matvec(self, v: Sequence[Tensor]) -> list[Tensor]:
        """The product with ``v`` (parameter-shaped tensors), reduced if ``reduce`` is set."""
        try:
            out = self._matvec(list(v))
        except RuntimeError as error:
            raise_if_no_double_backward(error)
            raise
        self.n_products += 1
        return self.reduce(out) if self.reduce is not None else out

    def matvec_flat(self, v: Tensor) -> Tensor:
        """The product with a flat vector of ``sum(p.numel())`` entries."""
        return flatten(self.matvec(unflatten(v, self.params)))

    def loss(self) -> Tensor:
        """The local (unreduced) loss f at this theta, detached."""
        with torch.no_grad():
            return sum(w * self.loss_fn(self.model(x), y) for x, y, w in self.batches)

    def loss_and_gradient(self) -> tuple[Tensor, list[Tensor]]:
        """The local (unreduced) loss f and gradient g at this theta, detached."""
        loss, g = torch.zeros((), device=self.params[0].device), None
        for x, y, w in self.batches:
            f_i = w * self.loss_fn(self.model(x), y)
            g_i = torch.autograd.grad(f_i, self.params, materialize_grads=True)
            loss = loss + f_i.detach()
            g = list(g_i) if g is None else [a + b for a, b in zip(g, g_i, strict=True)]
        return loss, g

    def _matvec(self, v: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def _accumulate(self, per_batch: Callable[..., list[Tensor]], v: list[Tensor]) -> list[Tensor]:
        (x, y, w), *rest = self.batches
        total = list(per_batch(x, y, w, v))
        for x, y, w in rest:
            total = [t + piece for t, piece in zip(total, per_batch(x, y, w, v), strict=True)]
        return total


def _backward(outputs: list[Tensor], inputs: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """Vector-Jacobian product that tolerates outputs with no graph (their part is zero)."""
    live = [i for i, o in enumerate(outputs) if o is not None and o.requires_grad]
    if not live:
        return [torch.zeros_like(t) for t in inputs]
    return list(
        torch.autograd.grad(
            [outputs[i] for i in live],
            inputs,
            grad_outputs=[grads[i] for i in live],
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
    )


class HessianOperator(CurvatureOperator):
    """Exact Hessian products H v (guide 2.11): double backward, forward-over-reverse or R-op.

    Args:
        method: ``reverse`` backpropagates v through g, ``grad(g^T v)`` (guide 2.11.2);
            ``forward`` pushes v forward through the gradient computation with
            ``torch.func.jvp(torch.func.grad(f))``; ``rop`` (curvlab's MLP and ViT) pushes v
            through the network's forward and backward passes with Pearlmutter's R-operator,
            in closed form (:mod:`curvlab.curvature.rop`); ``auto`` takes ``rop`` where the model
            has it and otherwise the faster of the other two, timed once per model.
        cache_graph: keep the graph of g, or the R-operator's passes, between products
            (default: when there is one batch).
        usage: which cost ``auto`` compares: ``repeated`` products at this theta or a
            ``single`` one.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: BatchLike,
        method: Method = "auto",
        reduce: Reduce | None = None,
        cache_graph: bool | None = None,
        usage: Literal["single", "repeated"] = "repeated",
    ) -> None:
        super().__init__(model, loss_fn, batch, reduce)
        if method not in METHODS:
            raise ValueError(f"method={method!r}; choose one of {', '.join(METHODS)}.")
        self._cache = len(self.batches) == 1 if cache_graph is None else cache_graph
        self._closed = rop.closed_form(model, loss_fn, self.params, self.batches, self._cache)
        if method == "rop" and self._closed is None:
            raise ValueError(
                "method='rop' runs curvlab.models.MLP (activations "
                f"{', '.join(rop.SUPPORTED_ACTIVATIONS)}) and curvlab.models.ViT as curvlab "
                "builds them, with every parameter trainable and batched inputs of the "
                f"model's shape; not this {type(model).__name__}. Use method='reverse', "
                "'forward' or 'auto'."
            )
        self._graph: tuple[Tensor, list[Tensor]] | None = None
        if method == "auto":
            method = self._choose(usage)
        self.method = method
        if method == "reverse" and self._cache and self._graph is None:
            self._graph = self._build_graph()

    def loss(self) -> Tensor:
        return super().loss() if self._graph is None else self._graph[0].detach()

    def loss_and_gradient(self) -> tuple[Tensor, list[Tensor]]:
        if self._graph is None:
            return super().loss_and_gradient()
        loss, g = self._graph
        return loss.detach(), [gi.detach() for gi in g]

    def _build_graph(self) -> tuple[Tensor, list[Tensor]]:
        # One forward and one backward with create_graph: g keeps its dependence on theta.
        x, y, w = self.batches[0]
        loss = w * self.loss_fn(self.model(x), y)
        g = torch.autograd.grad(loss, self.params, create_graph=True, materialize_grads=True)
        return loss, list(g)

    def _matvec(self, v: list[Tensor]) -> list[Tensor]:
        if self.method == "forward":
            return self._accumulate(self._forward_over_reverse, v)
        if self.method == "rop":
            return self._closed.product(v)
        if self._graph is not None:
            # Backpropagating v through g is grad(g^T v) = H v, the guide's identity.
            return _backward(self._graph[1], self.params, v)
        return self._accumulate(self._double_backward, v)

    def _double_backward(self, x: Tensor, y: Tensor, w: float, v: list[Tensor]) -> list[Tensor]:
        loss = w * self.loss_fn(self.model(x), y)
        g = torch.autograd.grad(loss, self.params, create_graph=True, materialize_grads=True)
        return _backward(list(g), self.params, v)

    def _forward_over_reverse(
        self, x: Tensor, y: Tensor, w: float, v: list[Tensor]
    ) -> list[Tensor]:
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        theta = {n: p.detach() for n, p in zip(names, self.params, strict=True)}

        def f(theta: dict[str, Tensor]) -> Tensor:
            return w * self.loss_fn(functional_call(self.model, theta, (x,)), y)

        # The directional derivative of g along v is H v.
        _, hv = jvp(grad(f), (theta,), (dict(zip(names, v, strict=True)),))
        return [hv[n] for n in names]

    def _choose(self, usage: str) -> str:
        """The R-operator where the model has one, else the faster autograd method, timed once.

        The R-operator needs no autograd graph: on one CPU core a single product costs 1.4x to
        2.1x a gradient on the MLP and about 2.7x on the ViT, further products at the same
        batch 0.7x to 1.1x and 1.8x to 1.9x; the double backward takes 2.5x to 3.5x, and 1.1x
        to 2.3x reusing the graph of g. Other models time ``reverse`` and ``forward`` once,
        interleaved, and the choice is remembered for the model.
        """
        if self._closed is not None:
            return "rop"
        known = _FASTEST.get(self.model, {}).get(usage)
        if known is not None:
            return known

        generator = make_generator(0, self.params[0].device)
        v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in self.params]
        v = [t.to(p.device) for t, p in zip(v, self.params, strict=True)]

        def product(candidate: str) -> None:
            self.method = candidate
            if candidate == "reverse" and self._cache and usage == "single":
                self._graph = None  # a single product pays for building the graph
            if candidate == "reverse" and self._cache and self._graph is None:
                self._graph = self._build_graph()
            self._matvec(v)

        timings = _interleaved_best_times(product, ("reverse", "forward"), v[0].device)
        # Noise on a shared machine should not flip the choice: forward must win clearly.
        choice = "forward" if timings["forward"] < _MARGIN * timings["reverse"] else "reverse"
        if choice == "forward":
            self._graph = None

        _FASTEST.setdefault(self.model, {})[usage] = choice
        log.info(
            "HVP method for %s (%s products): %s (%s)",
            type(self.model).__name__,
            usage,
            choice,
            ", ".join(f"{name} {1e3 * t:.2f} ms" for name, t in timings.items()),
        )
        return choice


def _interleaved_best_times(
    run: Callable[[str], None], candidates: Sequence[str], device: torch.device, rounds: int = 3
) -> dict[str, float]:
    """Best wall time of each candidate over ``rounds``, alternating them after a warm-up."""
    try:
        for candidate in candidates:
            run(candidate)  # warm-up: allocator, kernels, graph building
    except RuntimeError as error:
        raise_if_no_double_backward(error)
        raise

    best = dict.fromkeys(candidates, math.inf)
    for _ in range(rounds):
        for candidate in candidates:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            run(candidate)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[candidate] = min(best[candidate], time.perf_counter() - start)
    return best


class GGNOperator(CurvatureOperator):
    """Generalised Gauss-Newton products G v = J^T H_z J v (positive semi-definite).

    J = dz/dtheta is the Jacobian of the model's outputs z and H_z the Hessian of the loss in
    z; G drops the term of H that involves the network's second derivatives, so it is PSD
    whenever the loss is convex in z (cross entropy, squared error). J v is taken in reverse
    mode by differentiating J^T u with respect to a dummy u, so no forward-mode support is
    needed; with one batch the linearisation is kept, and a product costs three backward
    passes through cached graphs and no forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: BatchLike,
        reduce: Reduce | None = None,
        cache_graph: bool | None = None,
    ) -> None:
        super().__init__(model, loss_fn, batch, reduce)
        cache = len(self.batches) == 1 if cache_graph is None else cache_graph
        self._lin = self._linearize(*self.batches[0]) if cache else None

    def loss(self) -> Tensor:
        return super().loss() if self._lin is None else self._lin[0].detach()

    def loss_and_gradient(self) -> tuple[Tensor, list[Tensor]]:
        if self._lin is None:
            return super().loss_and_gradient()
        loss, z, dl_dz = self._lin[:3]
        g = _backward([z], self.params, [dl_dz.detach()])
        return loss.detach(), g

    def _linearize(self, x: Tensor, y: Tensor, w: float) -> tuple:
        z = self.model(x)
        loss = w * self.loss_fn(z, y)
        dl_dz = torch.autograd.grad(loss, z, create_graph=True)[0]

        # J^T u is linear in u; differentiating it in u along v gives J v without jvp support.
        u = torch.zeros_like(z, requires_grad=True)
        jt_u = torch.autograd.grad(z, self.params, u, create_graph=True, allow_unused=True)
        return loss, z, dl_dz, u, list(jt_u)

    def _matvec(self, v: list[Tensor]) -> list[Tensor]:
        if self._lin is not None:
            return self._apply(self._lin, v)
        return self._accumulate(lambda x, y, w, v: self._apply(self._linearize(x, y, w), v), v)

    def _apply(self, lin: tuple, v: list[Tensor]) -> list[Tensor]:
        _, z, dl_dz, u, jt_u = lin
        jv = _backward(jt_u, [u], v)[0]  # J v, shaped like z
        h_jv = _backward([dl_dz], [z], [jv])[0]  # H_z J v
        return _backward([z], self.params, [h_jv])  # J^T H_z J v
