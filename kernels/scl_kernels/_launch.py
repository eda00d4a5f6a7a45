"""Host-side helpers of the kernel launches, shared by the kernel modules.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions (callable inside kernels too); from the host
each call goes through their wrapper, 3-4 us apiece with triton 3.6 and 3.9 on this repository's CPU, and one
attention forward + backward made eleven of them. Short sequences are bound by this host time on a GPU, so the
launch paths use these plain-int versions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import triton
from triton.runtime import JITFunction, driver


def autotune_enabled() -> bool:
    """False under ``SCL_KERNELS_AUTOTUNE=0``: each autotuned kernel keeps its first fitting config and times
    nothing, so a test run over many shapes compiles one kernel per shape instead of one per config."""
    return os.environ.get("SCL_KERNELS_AUTOTUNE", "1") != "0"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b: the number of b-sized blocks covering a."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def dot_block(n: int) -> int:
    """A block dimension covering n: a power of two and at least 16, ``tl.dot``'s minimum on the GPU."""
    return max(16, next_pow2(n))


DIRECT_LAUNCHES: bool = (3, 6) <= tuple(int(part) for part in triton.__version__.split(".")[:2]) <= (3, 9)
"""Whether ``TunedLaunch`` calls compiled kernels' launchers itself: for the Triton versions whose launch call it
was checked against (3.6 on the GPU image, 3.9 here); any other version launches through ``JITFunction.run``."""
if DIRECT_LAUNCHES:  # internal API of those versions (older ones have no knobs module)
    from triton import knobs
    from triton.compiler import CompiledKernel


class TunedLaunch:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.autotune`` kernel, with two memories that take Triton's
    Python out of the repeated launch.

    Short sequences on a GPU are bound by host time: on the H200 (gpu_report's host section, 2026-11-30) an
    attention forward + backward took 0.79 ms of it against SDPA's 0.26 ms, most of it in Triton's launch path.
    On this repository's CPU one launch costs ~74 us through ``Autotuner.run``, ~47 us through
    ``JITFunction.run`` and ~20 us launched directly as below (the forward's added host time, minimum, under the
    offline driver: ``pytest benchmarks/bench_attention.py -k host_path --benchmark-only``).

    1. The config chosen per key. ``Autotuner.run`` rebuilds its key from every argument on every call; this key
       is cheaper and at least as fine: the dtypes of the leading pointer arguments (``*_ptr``), the first one's
       device (the pruner's budget depends on the GPU), the positional arguments named in ``key_args`` and every
       keyword argument (the launch's constexpr flags).
    2. The compiled kernel per specialisation. ``JITFunction.run`` binds the arguments, specialises each one
       (pointer alignment, integers equal to 1 or divisible by 16) and hashes that into its cache key on every
       call. Here the first launch of a specialisation goes through it and returns the ``CompiledKernel``; later
       launches with the same key call that kernel's launcher with the arguments ``JITFunction.run`` passes
       (triton 3.6 and 3.9 alike; ``tests/kernels/test_launch.py`` compares the two under the offline driver,
       checks that Triton tells pointers apart by their 16-byte alignment and nothing finer, and fails on a Triton
       version outside the checked ones, which would silently lose the direct launches).
       The key holds every scalar argument's exact value and type and every pointer's 16-byte alignment, so it
       is finer than Triton's specialisation: a new sequence length makes a new entry that Triton's own cache
       resolves, never a wrong kernel. Arguments marked ``do_not_specialize`` enter the key by their integer
       width only, as in Triton (no kernel of the package has one since dropout's seed became a device tensor).
       A callable grid gets the launch's keyword arguments and the chosen config (its constexprs), not the
       positional arguments. Skipped: Triton's check that the
       kernel's global constants did not change since it compiled (module constants here), and Triton knobs
       changed after a specialisation's first launch (``TRITON_DEBUG`` at run time) do not reach it. Every
       launch of a kernel with pre-run hooks goes through ``JITFunction.run``.
    """

    _MAX_COMPILED = 512  # specialisations kept per kernel; past it the memory restarts (a shape-varying workload)

    def __init__(self, tuner: Any, key_args: Sequence[str]) -> None:
        self.tuner = tuner
        names = list(tuner.arg_names)
        self._n_ptr = next(i for i, name in enumerate(names) if not name.endswith("_ptr"))
        if self._n_ptr == 0:  # the key would miss the tensors' dtypes, which select the compiled kernel
            raise ValueError(f"TunedLaunch: {names[0]!r} is not a *_ptr parameter; the kernel's leading "
                             "parameters must be its tensors, named *_ptr")
        self._names = names
        self._positions = [names.index(name) for name in key_args]
        # whether remembered kernels are launched directly: off for the interpreter's functions (and test doubles),
        # which have no launcher to call; benchmarks switch it off to time the launch through JITFunction.run
        self.direct = DIRECT_LAUNCHES and isinstance(tuner.fn, JITFunction)
        # scalar positions (after the pointers) of the arguments Triton does not specialise on by value
        self._free = [p.num - self._n_ptr for p in getattr(tuner.fn, "params", ())
                      if p.do_not_specialize and p.num >= self._n_ptr]  # fmt: skip
        self._chosen: dict[tuple, dict[str, Any]] = {}
        self._compiled: dict[tuple, tuple[Any, tuple, dict[str, Any]]] = {}

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            key = (args[0].device, *(a.dtype for a in args[: self._n_ptr]), *(args[i] for i in self._positions),
                   *kwargs.items())  # fmt: skip
            chosen = self._chosen.get(key)
            if chosen is None:  # the autotuner times its configs (or takes its only one) and launches the best
                self.tuner[grid](*args, **kwargs)
                self._chosen[key] = self.tuner.best_config.all_kwargs()
            elif not self.direct:
                self.tuner.fn[grid](*args, **kwargs, **chosen)
            else:
                self._launch_compiled(key, grid, args, kwargs, chosen)

        return launch

    def _launch_compiled(self, key: tuple, grid: Any, args: tuple, kwargs: dict[str, Any],
                         chosen: dict[str, Any]) -> None:
        """Launch the kernel this specialisation compiled, or go through ``JITFunction.run`` and keep what it
        returns with the values of the parameters after the positional ones (constexprs, in signature order)."""
        scalars = list(args[self._n_ptr :])
        for i in self._free:
            scalars[i] = isinstance(scalars[i], int) and -(2**31) <= scalars[i] < 2**31
        device = driver.active.get_current_device()
        spec = (key, device, tuple([a.data_ptr() % 16 == 0 for a in args[: self._n_ptr]]), tuple(scalars),
                tuple(map(type, scalars)))  # fmt: skip
        compiled = self._compiled.get(spec)
        if compiled is None or self.tuner.fn.pre_run_hooks:
            kernel = self.tuner.fn[grid](*args, **kwargs, **chosen)
            given = {**kwargs, **chosen}
            tail = self._names[len(args) :]
            if isinstance(kernel, CompiledKernel) and all(name in given for name in tail):
                if len(self._compiled) >= self._MAX_COMPILED:
                    self._compiled.clear()
                self._compiled[spec] = (kernel, tuple(given[name] for name in tail), given)
            return
        kernel, constants, meta = compiled
        if callable(grid):
            grid = grid(meta)
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        stream = driver.active.get_current_stream(device)
        enter_hook = knobs.runtime.launch_enter_hook
        # the dict the enter hooks get (a profiler's; triton 3.6 and 3.9 keep them in a HookChain, empty by
        # default, which the launcher calls with whatever it is given): built only when some hook reads it
        metadata = None
        if enter_hook is not None and getattr(enter_hook, "calls", True):
            metadata = kernel.launch_metadata(grid, stream, *args, *constants)
        kernel.run(grid[0], grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, metadata, enter_hook,
                   knobs.runtime.launch_exit_hook, *args, *constants)  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        """The autotuner's own state (``cache``, ``configs_timings``, ``fn``), for reports and tests."""
        if name == "tuner":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.tuner, name)
