"""Time one optimizer step: curvlab's LAMB against torch's AdamW and timm's Lamb.

The parameters have the shapes of a small timm ViT (D=224, 8 blocks: about 4.9M parameters in
104 tensors, from 224x224 matrices down to 224-element norm weights). Every optimizer gets its
own copy of the parameters and the same fixed gradients; the variants are timed in interleaved
rounds so that a load change on a shared machine hits them all alike, and the median step time
of each is printed with its ratio to AdamW.

Memory floor: AdamW reads x, g, m, v and writes x, m, v (28 bytes per float32 parameter). LAMB
moves the same tensors but cannot write x before it has the norm of each tensor's update, so a
second pass reads x, m, v again (or a stored update): at least about 40 bytes per parameter, so
a LAMB step costs at least 40 / 28 = 1.43x a memory-bound fused AdamW step.

Usage:
    python benchmarks/optimizers.py [--device cpu] [--rounds 15] [--steps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable

import torch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import Lamb as TimmLamb

from curvlab.optim.lamb import Lamb

log = logging.getLogger("benchmarks.optimizers")

ADAMW_BYTES = 28  # read x, g, m, v; write x, m, v (float32)
LAMB_BYTES = 40  # as AdamW, plus a second read of x, m, v after the norms


def model_shapes() -> list[torch.Size]:
    """Parameter shapes of a ViT with about 5M parameters over about 100 tensors."""
    vit = VisionTransformer(
        img_size=32, patch_size=4, embed_dim=224, depth=8, num_heads=4, num_classes=10
    )
    return [p.shape for p in vit.parameters()]


def variants(fused_ok: bool) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    """Optimizer factories by label; every one decays all tensors with lambda = 0.01."""
    out: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "torch AdamW foreach=False": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=False),
        "torch AdamW foreach=True": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
    }
    if fused_ok:
        out["torch AdamW fused=True"] = lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)
    out |= {
        "curvlab Lamb foreach=False": lambda p: Lamb(p, lr=1e-3, foreach=False),
        "curvlab Lamb foreach=True": lambda p: Lamb(p, lr=1e-3, foreach=True),
        # foreach=None: the compiled CPU kernel on the CPU, the multi-tensor path on CUDA.
        "curvlab Lamb (default)": lambda p: Lamb(p, lr=1e-3),
        # timm clips the global gradient norm at 1.0 by default; curvlab's clipping is off.
        "timm Lamb": lambda p: TimmLamb(p, lr=1e-3, max_grad_norm=None),
        "timm Lamb foreach=True": lambda p: TimmLamb(p, lr=1e-3, max_grad_norm=None, foreach=True),
    }
    return out


def time_steps(opt: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Mean seconds per ``opt.step()`` over ``steps`` consecutive steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    shapes = model_shapes()
    numel = sum(s.numel() for s in shapes)
    grads = [torch.randn(s, device=device) for s in shapes]
    init = [torch.randn(s, device=device) * 0.02 for s in shapes]
    fused_ok = device.type in ("cpu", "cuda")

    # Warm up each optimizer (state allocation, first-step paths) before any timing.
    opts: dict[str, torch.optim.Optimizer] = {}
    for name, make in variants(fused_ok).items():
        params = [torch.nn.Parameter(x.clone()) for x in init]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opts[name] = make(params)
        time_steps(opts[name], 3, device)

    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(args.rounds):
        for name, opt in opts.items():
            times[name].append(time_steps(opt, args.steps, device))

    median = {name: statistics.median(ts) for name, ts in times.items()}
    adamw = median["torch AdamW foreach=False"]
    fused = median.get("torch AdamW fused=True")
    log.info(
        "%d tensors, %.2fM parameters, device %s, %d threads, %d rounds x %d steps, "
        "load average %.1f over the last minute",
        len(shapes),
        numel / 1e6,
        device,
        torch.get_num_threads(),
        args.rounds,
        args.steps,
        os.getloadavg()[0],
    )
    log.info("%-30s %9s %11s %10s", "optimizer", "ms/step", "x AdamW", "x fused")
    for name, t in median.items():
        vs_fused = f"{t / fused:10.2f}" if fused else f"{'-':>10}"
        log.info("%-30s %9.2f %11.2f %s", name, t * 1e3, t / adamw, vs_fused)

    log.info(
        "memory floor: LAMB moves >= %d bytes/parameter, AdamW %d: floor ratio %.2f",
        LAMB_BYTES,
        ADAMW_BYTES,
        LAMB_BYTES / ADAMW_BYTES,
    )
    if fused:
        log.info(
            "fused AdamW moves %.1f GB/s; at that rate a LAMB step needs >= %.2f ms",
            ADAMW_BYTES * numel / fused / 1e9,
            fused * LAMB_BYTES / ADAMW_BYTES * 1e3,
        )


if __name__ == "__main__":
    main()
