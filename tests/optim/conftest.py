"""Optimizer tests run single-threaded: their tensors are tiny, and on a shared machine idle
OpenMP workers waiting for a busy core made steps of a few hundred values take milliseconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
