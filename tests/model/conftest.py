"""Fixtures of every model test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import torch_threads


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run each model test on one intra-op thread: at these sizes every op is microseconds of work, and on a
    loaded 2-core machine OpenMP's barrier costs ~15 ms per op (measured: 0.3 ms vs 39 ms per linear+norm)."""
    with torch_threads(1):
        yield
