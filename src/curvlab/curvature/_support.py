"""Plumbing shared by the curvature tools: batches, parameter vectors, model state, DDP."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
"""One ``(inputs, targets)`` pair; the loss is ``loss_fn(model(inputs), targets)``."""

BatchLike = Batch | Sequence[Batch]
"""A single pair or a list of pairs, weighted by their number of examples."""

LossFn = Callable[[Tensor, Tensor], Tensor]

Reduce = Callable[[list[Tensor]], list[Tensor]]
"""Combines per-process tensors (e.g. an all-reduce mean) so that all ranks agree."""

ATTENTION_FIX = "model.attention=math"


def trainable_params(model: nn.Module) -> list[Tensor]:
    """The parameters the curvature is taken over: ``model.parameters()`` that need grad."""
    return [p for p in model.parameters() if p.requires_grad]


def as_batches(batch: BatchLike, device: torch.device) -> list[tuple[Tensor, Tensor, float]]:
    """Normalise ``batch`` into ``(inputs, targets, weight)`` triples whose weights sum to 1.

    Weights are each pair's share of the examples, so that with mean-reduced losses the
    total is the mean loss over all examples of all pairs.
    """
    is_pair = isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor)
    pairs = [batch] if is_pair else list(batch)
    if not pairs:
        raise ValueError("batch is empty: give an (inputs, targets) pair or a list of them.")

    sizes = [len(inputs) for inputs, _ in pairs]
    total = sum(sizes)
    out = []
    for (inputs, targets), size in zip(pairs, sizes, strict=True):
        # Tensors made under inference_mode (e.g. in a validation hook) cannot enter autograd.
        inputs, targets = (_usable(t, device) for t in (inputs, targets))
        out.append((inputs, targets, size / total))
    return out


def _usable(t: Tensor, device: torch.device) -> Tensor:
    t = t.to(device, non_blocking=True)
    return t.clone() if t.is_inference() else t


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate parameter-shaped tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped like ``like``."""
    pieces = flat.split([t.numel() for t in like])
    return [piece.view_as(t) for piece, t in zip(pieces, like, strict=True)]


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two parameter-shaped vectors, as a 0-d tensor."""
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def check_second_order(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> None:
    """Refuse models whose forward cannot be differentiated twice.

    Args:
        model: the network.
        modules: ``list(model.modules())`` when the caller has it already.

    Raises:
        ValueError: the model is DDP-wrapped or compiled, or has a fused attention kernel
            (timm's ``fused_attn``), which has no double backward on CPU.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError(
            "curvature tools need the unwrapped module (ddp_model.module): DDP does not "
            "synchronise torch.autograd.grad; pass reduce=ddp_mean_reduce() to average the "
            "products across ranks instead."
        )
    if hasattr(model, "_orig_mod"):
        raise ValueError(
            "torch.compile'd modules do not support double backward; pass model._orig_mod."
        )

    modules = list(model.modules()) if modules is None else modules
    fused = [m for m in modules if getattr(m, "fused_attn", False)]
    if fused:
        names = {id(m): name for name, m in model.named_modules()}
        raise ValueError(
            f"{len(fused)} attention module(s) (first: {names[id(fused[0])] or '<root>'}) use "
            "the fused scaled-dot-product kernel, which has no second derivative; curvature "
            f"needs plain-math attention: set {ATTENTION_FIX} (or call "
            "curvlab.models.vit.set_attention_impl(model, 'math'))."
        )


def raise_if_no_double_backward(error: RuntimeError) -> None:
    """Turn autograd's missing-derivative error from a fused attention kernel into advice."""
    message = str(error)
    if "scaled_dot_product" in message or "_flash_attention" in message:
        raise ValueError(
            f"the model's attention kernel has no second derivative ({message.splitlines()[0]}); "
            f"set {ATTENTION_FIX} or run under sdpa_kernel(SDPBackend.MATH)."
        ) from error


@contextmanager
def measurement_mode(model: nn.Module) -> Iterator[None]:
    """Measure curvature without leaving a trace on ``model`` or the global RNG.

    Inside, every module is in eval mode (dropout off, batch norm on running statistics) and
    autograd is on even under ``no_grad``/``inference_mode``. On exit, each module's train flag,
    every buffer and the CPU/CUDA RNG states are restored. Parameters and ``.grad`` are never
    written by the curvature code (it uses ``torch.autograd.grad``), so they need no copy.
    """
    # One list of the modules serves the check and the flags: a single product on a small
    # model costs a few hundred microseconds, and each ``modules()`` or ``train()`` walk of a
    # module tree adds tens of them.
    modules = list(model.modules())
    check_second_order(model, modules)
    modes = [m.training for m in modules]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = {p.device.index or 0 for p in model.parameters() if p.is_cuda}

    with (
        torch.random.fork_rng(devices=sorted(cuda)),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        _set_training(modules, [False] * len(modules))
        try:
            yield
        finally:
            _set_training(modules, modes)
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)


def _set_training(modules: Sequence[nn.Module], flags: Sequence[bool]) -> None:
    """What ``Module.train(flag)`` does to each module, without its recursion.

    ``training`` is a plain instance attribute; setting it through ``object.__setattr__``
    skips ``nn.Module.__setattr__``'s parameter and submodule checks. Modules that override
    ``train`` (to do more than set the flag) get their own method called; as parents come
    before children in ``modules``, a child's own flag is set after its parent's call.
    """
    for module, flag in zip(modules, flags, strict=True):
        if type(module).train is not nn.Module.train:
            module.train(flag)
        elif module.training != flag:
            object.__setattr__(module, "training", flag)


def ddp_mean_reduce(group: dist.ProcessGroup | None = None) -> Reduce:
    """An all-reduce that averages a list of tensors over ``group`` in one collective.

    Pass it as ``reduce=`` so that every Hessian-vector product (one all-reduce each) and every
    gradient is the mean over ranks, i.e. the product for the union of the ranks' batches when
    they hold equally many examples.
    """

    def reduce(tensors: list[Tensor]) -> list[Tensor]:
        flat = flatten(tensors)
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        return unflatten(flat, tensors)

    return reduce


def resolve_reduce(reduce: Reduce | str | None) -> Reduce | None:
    """``"auto"`` becomes :func:`ddp_mean_reduce` when a multi-process group is up."""
    if reduce != "auto":
        return reduce  # type: ignore[return-value]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return ddp_mean_reduce()
    return None


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private RNG for probe vectors: the same seed gives the same probes on every rank."""
    return torch.Generator(device=device).manual_seed(seed)
