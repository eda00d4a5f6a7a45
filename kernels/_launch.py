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


class TunedLaunch:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.autotune`` kernel that remembers the config chosen for each
    key, so that later launches go straight to the kernel.

    Triton's ``Autotuner.run`` rebuilds its key from every argument on every call (a dict of ~50 arguments and a
    ``hasattr`` each): ~60 us of Python per launch on the H200's host (cProfile, gpu_report's host section,
    2026-11-30), the largest item of an attention forward + backward's 0.79 ms of host time there, against
    0.26 ms for SDPA's. This key is cheaper and at least as fine as the autotuner's: the dtypes of the leading
    pointer arguments (``*_ptr``), the first one's device (the pruner's budget depends on the GPU), the
    positional arguments named in ``key_args`` and every keyword argument (the launch's constexpr flags).
    """

    def __init__(self, tuner: Any, key_args: Sequence[str]) -> None:
        self.tuner = tuner
        names = list(tuner.arg_names)
        self._n_ptr = next(i for i, name in enumerate(names) if not name.endswith("_ptr"))
        if self._n_ptr == 0:  # the key would miss the tensors' dtypes, which select the compiled kernel
            raise ValueError(f"TunedLaunch: {names[0]!r} is not a *_ptr parameter; the kernel's leading "
                             "parameters must be its tensors, named *_ptr")
        self._positions = [names.index(name) for name in key_args]
        self._chosen: dict[tuple, dict[str, Any]] = {}

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            key = (args[0].device, *(a.dtype for a in args[: self._n_ptr]), *(args[i] for i in self._positions),
                   *kwargs.items())  # fmt: skip
            chosen = self._chosen.get(key)
            if chosen is None:  # the autotuner times its configs (or takes its only one) and launches the best
                self.tuner[grid](*args, **kwargs)
                self._chosen[key] = self.tuner.best_config.all_kwargs()
            else:
                self.tuner.fn[grid](*args, **kwargs, **chosen)

        return launch

    def __getattr__(self, name: str) -> Any:
        """The autotuner's own state (``cache``, ``configs_timings``, ``fn``), for reports and tests."""
        if name == "tuner":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.tuner, name)
