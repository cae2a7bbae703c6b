"""LAMB's compiled CPU kernel: its thread shards and its fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from curvlab.optim import Lamb, lamb_cpu

# Tensors of very different sizes, large enough in total for two shards of work.
SHAPES = [(512, 384), (384,), (256, 256), (64, 64), (1000,), (3, 7)]


def stepped(foreach: bool | None, threads: int, steps: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    opt = Lamb(params, lr=0.01, weight_decay=0.01, phi_max=5.0, foreach=foreach)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return [p.detach() for p in params]


def test_shards_cover_every_tensor_once_and_balance_the_work() -> None:
    numels = [100, 5, 60, 40, 1, 50]
    shards = lamb_cpu._shards(numels, 2)
    assert sorted(i for shard in shards for i in shard) == list(range(len(numels)))
    # Largest first, each onto the lighter shard: 100 | 60, 50 | 40 onto 100 | 5, 1.
    assert shards == [[0, 3], [2, 5, 1, 4]]
    assert [sum(numels[i] for i in shard) for shard in shards] == [140, 116]
    assert lamb_cpu._shards([7], 4) == [[0]]


def test_two_threads_give_the_single_threaded_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lamb_cpu.load() is not None, "the CPU kernel did not build (is a C compiler on PATH?)"
    pools: list[int] = []
    real_pool = lamb_cpu._pool
    monkeypatch.setattr(lamb_cpu, "_pool", lambda n: pools.append(n) or real_pool(n))

    threaded = stepped(foreach=None, threads=2)
    assert pools and set(pools) == {2}, "the step did not split the tensors over two threads"
    single = stepped(foreach=None, threads=1)
    reference = stepped(foreach=False, threads=1)
    for a, b, ref in zip(threaded, single, reference, strict=True):
        assert torch.equal(a, b)  # the same arithmetic per tensor, whichever thread runs it
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-7)


def test_without_the_kernel_the_multi_tensor_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lamb_cpu, "load", lambda: None)
    called: list[int] = []
    monkeypatch.setattr(lamb_cpu, "step", lambda *a, **k: called.append(1))
    fallback = stepped(foreach=None, threads=1)
    assert called == []
    for a, ref in zip(fallback, stepped(foreach=True, threads=1), strict=True):
        assert torch.equal(a, ref)


def test_a_failed_build_is_reported_and_not_fatal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CURVLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    lamb_cpu.load.cache_clear()
    try:
        assert lamb_cpu.load() is None
        assert "did not build" in caplog.text
    finally:
        lamb_cpu.load.cache_clear()


def test_the_switch_turns_the_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURVLAB_LAMB_KERNEL", "0")
    lamb_cpu.load.cache_clear()
    try:
        assert lamb_cpu.load() is None
    finally:
        lamb_cpu.load.cache_clear()
