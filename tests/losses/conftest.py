"""Shared set-up for the loss tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each loss test on one intra-op thread, then restore the previous count.

    The tensors here are tiny; on a busy 2-core machine OpenMP hand-offs made one softmax take
    ~25 ms instead of microseconds, which turned gradchecks into minutes.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
