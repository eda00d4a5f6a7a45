"""A Triton driver for a machine without a GPU: ``kernel[grid](...)`` compiles for sm_90 and records the launch.

``JITFunction.run`` (binding, specialisation, cache lookup, the launcher call) is the host cost of every kernel
launch on a GPU, and the interpreter (``TRITON_INTERPRET=1``) replaces it with a function of its own. With this
driver active, in a process without the interpreter, the real path runs: kernels compile with Triton's
``ptxas`` as for a Hopper GPU (``_compile`` does the same, without the launch path) and each launch reaches a
launcher that keeps its arguments instead of calling the CUDA driver. Tests compare what ``TunedLaunch``'s
direct launches pass to the launcher with what ``JITFunction.run`` passes; benchmarks time the host path.

It implements what ``JITFunction.run`` and ``CompiledKernel`` call on ``driver.active`` in triton 3.6 and 3.9.
Tensors stay on the CPU; nothing reads their memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import JITFunction, driver

_HOPPER = GPUTarget("cuda", 90, 32)


class _Utils:
    """The binary loader: every kernel "loads" (placeholder module and function handles) and fits the device."""

    def load_binary(self, name: str, kernel: bytes, shared: int, device: int) -> tuple[object, int, int, int, int]:
        return object(), 1, 0, 0, 1024  # module, function, registers, spills, max threads per block

    def get_device_properties(self, device: int) -> dict[str, int]:
        return {"max_shared_mem": 227 * 1024, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}

    def unload_module(self, module: object) -> None:
        pass


class Launch:
    """What one launch passed to the launcher: which compiled kernel (its name and Triton's hash of the
    specialisation), the grid, the stream, the kernel handle and packed metadata (``handles``) and the kernel's
    arguments in signature order (the hooks are left out: the launcher calls them, ``launch_scenario`` records
    what they saw)."""

    def __init__(self, name: str, kernel_hash: str, args: tuple) -> None:
        self.name = name
        self.kernel_hash = kernel_hash
        self.grid = tuple(args[:3])
        self.stream = args[3]
        self.handles = (args[4], args[5])
        self.kernel_args = tuple(args[9:])


class _Launcher:
    """A compiled kernel's launcher. Triton keeps it with the kernel for the life of the process, so it reports
    each launch to whichever offline driver is active then."""

    def __init__(self, src: Any, metadata: Any) -> None:
        self.name, self.hash = metadata.name, metadata.hash

    def __call__(self, *args: Any) -> None:
        offline = driver.active
        if not isinstance(offline, OfflineDriver):
            raise RuntimeError(f"{self.name}: compiled under the offline driver, launched outside it")
        metadata, enter_hook, exit_hook = args[6:9]
        if enter_hook is not None:  # as Triton's launcher: the hooks around the launch, given the launch metadata
            enter_hook(metadata)
        offline.n_launches += 1
        if offline.record:
            offline.launches.append(Launch(self.name, self.hash, args))
        if exit_hook is not None:
            exit_hook(metadata)


class OfflineDriver:
    """``driver.active`` while active: one device (0) on the default stream (0), a Hopper target. Counts the
    launches, and with ``record`` keeps each one's arguments in ``launches`` (and so its tensors alive)."""

    launcher_cls = _Launcher

    def __init__(self, record: bool = True) -> None:
        self.utils = _Utils()
        self.record = record
        self.launches: list[Launch] = []
        self.n_launches = 0

    def get_current_target(self) -> GPUTarget:
        return _HOPPER

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def is_active(self) -> bool:
        return True

    def get_benchmarker(self) -> Any:
        """The autotuner's timer: each config runs once (its launch is recorded) and times 1 ms, so the
        autotuner keeps the first config that its pruner leaves."""

        def bench(kernel_call: Any, quantiles: Any = None, **kwargs: Any) -> float | list[float]:
            kernel_call()
            return [1.0] * len(quantiles) if quantiles else 1.0

        return bench


@contextlib.contextmanager
def offline_driver(record: bool = True) -> Iterator[OfflineDriver]:
    """Make an ``OfflineDriver`` Triton's active driver for the block. Kernels must be ``JITFunction`` s (a
    process without ``TRITON_INTERPRET=1``)."""
    offline = OfflineDriver(record)
    before = driver._active  # noqa: SLF001 (reset_active() would create the default driver: none without a GPU)
    driver.set_active(offline)
    try:
        yield offline
    finally:
        driver._active = before  # noqa: SLF001


@contextlib.contextmanager
def counting_jit_runs() -> Iterator[list[int]]:
    """Count the calls of ``JITFunction.run`` inside the block into the yielded one-element list: what
    ``TunedLaunch``'s direct launches must not enter (tests and benchmarks check it)."""
    runs = [0]
    plain = JITFunction.run

    def counted(self: JITFunction, *args: Any, **kwargs: Any) -> Any:
        runs[0] += 1
        return plain(self, *args, **kwargs)

    JITFunction.run = counted
    try:
        yield runs
    finally:
        JITFunction.run = plain
