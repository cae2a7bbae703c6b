"""LAMB's CPU kernel: ``lamb_cpu.c`` built with the system C compiler, called through ctypes.

On the CPU, PyTorch's multi-tensor ops dispatch once per operation per tensor, and a LAMB step
needs several of them (moments, norms, the write); the kernel does the whole step for every
tensor of a group in one call, in two passes over each tensor (see ``lamb_cpu.c``). It is built
once per source and compiler into ``$CURVLAB_CACHE_DIR`` (default ``~/.cache/curvlab``, else the
temporary directory) and loaded from there afterwards. Where no compiler is found, the build
fails or ``CURVLAB_LAMB_KERNEL=0`` is set, :func:`load` returns None and
:class:`~curvlab.optim.Lamb` uses its multi-tensor path instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lamb_cpu.c")
# -fno-math-errno lets sqrt vectorise; -fopenmp-simd honours the reduction pragma without
# linking an OpenMP runtime (PyTorch brings its own).
CFLAGS = ("-O3", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared")

# Tensors of a group are split over threads only when there is this much work per thread.
_MIN_NUMEL_PER_THREAD = 1 << 17

_SYMBOLS = {torch.float32: "curvlab_lamb_step_f32", torch.float64: "curvlab_lamb_step_f64"}


class LambArgs(ctypes.Structure):
    """Mirror of ``lamb_args`` in ``lamb_cpu.c``."""

    _fields_ = [
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("lr", ctypes.c_double),
        ("phi_min", ctypes.c_double),
        ("phi_max", ctypes.c_double),
        ("trust_clip", ctypes.c_int32),
    ]


def _cache_dir() -> Path:
    configured = os.environ.get("CURVLAB_CACHE_DIR")
    if configured:
        return Path(configured)
    try:
        home = Path.home() / ".cache" / "curvlab"
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except (OSError, RuntimeError):  # RuntimeError: no home directory can be found
        pass
    # A read-only home (a locked-down container) still has a writable temporary directory.
    return Path(tempfile.gettempdir()) / f"curvlab-{os.getuid()}"


def _build(compiler: str) -> Path:
    """Compile the kernel unless a build of this source by this compiler exists; its path."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), " ".join(CFLAGS).encode()):
        key.update(part)
    key.update(platform.machine().encode())
    target = _cache_dir() / f"lamb_cpu-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target

    # Build beside the target and rename: ranks of one job may build at the same time.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *CFLAGS, str(SOURCE), "-o", partial, "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None where it cannot be had (reason logged)."""
    if os.environ.get("CURVLAB_LAMB_KERNEL", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: LAMB uses its multi-tensor path on the CPU")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        log.warning("LAMB's CPU kernel did not build (%s); using the multi-tensor path", detail)
        return None
    for symbol in _SYMBOLS.values():
        fn = getattr(lib, symbol)
        fn.restype = None
        fn.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 9]
    return lib


def supports(params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]]) -> bool:
    """Whether the kernel can step these tensors: dense, contiguous, on the CPU, one dtype."""
    dtype = params[0].dtype
    if dtype not in _SYMBOLS:
        return False
    return all(
        t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() and not t.is_sparse
        for tensors in (params, grads, *states)
        for t in tensors
    )


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curvlab-lamb")


def _shards(numels: list[int], workers: int) -> list[list[int]]:
    """Tensor indices split into at most ``workers`` shards of about equal size (largest first)."""
    shards: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for i in sorted(range(len(numels)), key=numels.__getitem__, reverse=True):
        lightest = loads.index(min(loads))
        shards[lightest].append(i)
        loads[lightest] += numels[i]
    return [shard for shard in shards if shard]


def step(
    lib: ctypes.CDLL,
    tensors: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]],
    group: dict[str, Any],
    grad_scale: Tensor | None,
    scratch: dict[torch.dtype, list[Tensor]],
) -> None:
    """One LAMB step of a group, in place.

    Args:
        lib: from :func:`load`.
        tensors: params, grads, exp_avgs, exp_avg_sqs and steps (float32 scalars), as
            :func:`supports` accepts them.
        group: the parameter group's hyperparameters.
        grad_scale: global clipping factor, a scalar tensor, or None.
        scratch: the optimizer's reusable buffers, one per thread, grown as needed.
    """
    params, grads, exp_avgs, exp_avg_sqs, steps = tensors
    dtype = params[0].dtype
    beta1, beta2 = group["betas"]
    args = LambArgs(
        beta1=beta1,
        beta2=beta2,
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        lr=group["lr"],
        phi_min=-float("inf") if group["phi_min"] is None else group["phi_min"],
        phi_max=float("inf") if group["phi_max"] is None else group["phi_max"],
        trust_clip=int(group["trust_clip"]),
    )
    scale = None if grad_scale is None else grad_scale.to(dtype)

    numels = [p.numel() for p in params]
    workers = max(1, min(torch.get_num_threads(), sum(numels) // _MIN_NUMEL_PER_THREAD))
    shards = _shards(numels, workers)
    buffers = scratch.setdefault(dtype, [])
    for k, shard in enumerate(shards):
        need = max(numels[i] for i in shard)
        if k == len(buffers):
            buffers.append(torch.empty(0, dtype=dtype))
        if buffers[k].numel() < need:
            buffers[k] = torch.empty(need, dtype=dtype)

    def pointers(items: list[Tensor], shard: list[int]) -> ctypes.Array:
        return (ctypes.c_void_p * len(shard))(*[items[i].data_ptr() for i in shard])

    def run(k: int) -> None:
        shard = shards[k]
        getattr(lib, _SYMBOLS[dtype])(
            len(shard),
            pointers(params, shard),
            pointers(grads, shard),
            pointers(exp_avgs, shard),
            pointers(exp_avg_sqs, shard),
            pointers(steps, shard),
            (ctypes.c_int64 * len(shard))(*[numels[i] for i in shard]),
            buffers[k].data_ptr(),
            ctypes.addressof(args),
            None if scale is None else scale.data_ptr(),
        )

    # ctypes releases the GIL during the call, so shards run in parallel on threads.
    if len(shards) == 1:
        run(0)
    else:
        list(_pool(len(shards)).map(run, range(len(shards))))
