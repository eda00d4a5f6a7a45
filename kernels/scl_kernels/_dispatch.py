"""Backend choice for every fused op: one rule, one place.

Each public op (``masked_attention``, ``random_masking``, ...) is a single ``torch.library`` custom op
whose implementation runs one of three backends:

- ``"triton"``: the Triton kernel. The default on CUDA. On CPU tensors it only runs under
  ``TRITON_INTERPRET=1`` (tests force it to check the kernels without a GPU).
- ``"native"``: the C++ CPU kernel from ``scl_kernels._C`` (built by CMakeLists.txt). The default on
  CPU for ops that have one, when the extension is built.
- ``"reference"``: the plain PyTorch version in ``reference.py``. The fallback everywhere.
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (cuDNN / flash) with the op's semantics, for the
  op that has a PyTorch peer (``masked_attention``). An op may make ``"auto"``'s choice itself, per call (``auto``
  argument of ``resolve``): attention on CUDA takes it where a measured table says it is faster.

The backend is resolved *outside* the custom op (argument > ``use_backend`` context > device default) and
passed into it as a string, so ``torch.compile`` sees the choice as a constant and tests can force any
backend on the same inputs. ``calls`` counts which backend actually ran, so a test can prove that the
C++ kernel (not the reference) served a CPU call.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Literal

import torch

Backend = Literal["auto", "triton", "native", "reference", "sdpa"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "native", "reference", "sdpa")

_forced: ContextVar[str] = ContextVar("scl_kernels_backend", default="auto")

calls: Counter[tuple[str, str]] = Counter()
"""(op, backend) -> number of calls that ran there. Cheap enough to keep on in production."""


def _load_native() -> bool:
    """Import the C++ extension once; its static initialisers register the ``scl::*_native`` ops."""
    try:
        from . import _C  # noqa: F401
    except ImportError:
        return False
    return True


HAS_NATIVE: bool = _load_native()


def interpreting() -> bool:
    """True when Triton kernels run through the NumPy interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.assume_constant_result
def _forced_backend() -> str:
    """The ``use_backend`` choice. Dynamo cannot trace ``ContextVar.get``: it reads this once per compilation
    as a constant (so ``torch.compile(fullgraph=True)`` has no graph break; the choice is baked into the graph)."""
    return _forced.get()


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Force every op called inside the block onto ``backend`` (``"auto"`` restores the default)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    token = _forced.set(backend)
    try:
        yield
    finally:
        _forced.reset(token)


def resolve(
    op: str,
    device: torch.device,
    backend: Backend | None = None,
    *,
    has_native: bool = False,
    has_sdpa: bool = False,
    auto: Callable[[], str] | None = None,
) -> str:
    """Pick the backend for one call of ``op`` on tensors living on ``device``.

    Args:
        op: the op's name, for error messages.
        device: where the inputs live.
        backend: explicit choice; ``None`` or ``"auto"`` defers to ``use_backend`` and then the device default.
        has_native: whether ``op`` has a C++ CPU kernel.
        has_sdpa: whether ``op`` has an ``"sdpa"`` backend.
        auto: the op's own choice for this call, given where it has one (``masked_attention``: on CUDA), in place of
            the device default; returns a backend name. Never called for a forced backend.
    """
    choice = backend if backend not in (None, "auto") else _forced_backend()
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        if auto is not None:
            return auto()
        if device.type == "cuda":
            return "triton"
        return "native" if (has_native and HAS_NATIVE and device.type == "cpu") else "reference"
    if choice == "sdpa" and not has_sdpa:
        raise ValueError(f"{op} has no sdpa backend; use backend 'triton' or 'reference'")
    if choice == "native":
        if not has_native:
            raise ValueError(f"{op} has no native (C++) kernel; use backend 'reference' or 'triton'")
        if not HAS_NATIVE:
            raise RuntimeError(
                f"{op}: the C++ extension scl_kernels._C is not built; reinstall with "
                "`pip install --no-build-isolation -e .` (needs cmake and a C++17 compiler)"
            )
        if device.type != "cpu":
            raise ValueError(f"{op}: the native backend runs on CPU tensors, got device {device}")
    if choice == "triton" and device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{op}: the triton backend needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before "
            "importing scl_kernels to run the kernels on CPU through the interpreter"
        )
    return choice


def record(op: str, backend: str) -> None:
    """Count one call of ``op`` served by ``backend`` (see ``calls``)."""
    calls[(op, backend)] += 1
