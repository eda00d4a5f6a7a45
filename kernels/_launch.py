"""Host-side helpers of the kernel launches, shared by the kernel modules.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions (callable inside kernels too); from the host
each call goes through their wrapper, 3-4 us apiece with triton 3.6 and 3.9 on this repository's CPU, and one
attention forward + backward made eleven of them. Short sequences are bound by this host time on a GPU, so the
launch paths use these plain-int versions.
"""

from __future__ import annotations

import os


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
