"""Fixtures of every model test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run each model test on one intra-op thread: at these sizes every op is microseconds of work, and on a
    loaded 2-core machine OpenMP's barrier costs ~15 ms per op (measured: 0.3 ms vs 39 ms per linear+norm)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
