"""Benchmarks of scl_fast: pytest-benchmark suites (``bench_*.py``), shared shapes, the report and GPU report
commands. See ``benchmarks/README.md``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def synchronized(fn: Callable[[], Any], device: torch.device | str) -> Callable[[], Any]:
    """Wrap ``fn`` so it waits for the device: pytest-benchmark times with a host clock, and CUDA launches are
    asynchronous, so an unsynchronised call would time only the launch."""
    import torch  # here, not at module level: `python -m benchmarks.report` should not pay for importing torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return fn

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(dev)
        return out

    return call


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads, then restore the previous count. Small CPU work on a busy
    2-core machine is far steadier on one thread: OpenMP's barrier then costs more than the op (measured: 0.3 ms
    vs 39 ms per linear+norm, 1 vs 120 ms per decoded clip, 15x for whole benchmarks)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
