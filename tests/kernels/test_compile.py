"""Every Triton kernel configuration of the package compiles for real GPUs (sm_80 and sm_90), with no GPU.

The interpreter accepts code the GPU compiler rejects (``tl.dot`` with K < 16, shared memory overflow), so
``scl_kernels._compile`` compiles each module's ``COMPILE_SPECS`` with ``triton.compile(..., target=GPUTarget)``
in a child process (the interpreter replaces ``@triton.jit`` functions in this one). Registers and spills of the
default configs are printed here and kept in ``benchmarks/results/compile_report.md``
(``python -m benchmarks.compile_report`` regenerates it).
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from scl_kernels import _compile


def _existing_modules() -> list[str]:
    return [m for m in _compile.KERNEL_MODULES if importlib.util.find_spec(m) is not None]


def test_every_kernel_module_lists_its_specs() -> None:
    """A kernel module without COMPILE_SPECS would silently skip the check below."""
    modules = _existing_modules()
    assert "scl_kernels.attention" in modules
    for name in modules:
        specs = getattr(importlib.import_module(name), "COMPILE_SPECS", None)
        assert specs, f"{name} has no COMPILE_SPECS: its kernels would not be compiled for sm_80/sm_90"
        assert any(s.default for s in specs), f"{name}: no spec marked default (the report lists those)"


def test_spec_names_are_unique() -> None:
    _compile.collect_specs(_existing_modules())


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90() -> None:
    modules = _existing_modules()
    specs = _compile.collect_specs(modules)
    results = _compile.run_compile_check(archs=_compile.ARCHS, modules=modules, jobs=2)
    assert len(results) == len(specs) * len(_compile.ARCHS), "the child did not report every (spec, arch)"
    print(f"\ncompiled {len(specs)} specs x {len(_compile.ARCHS)} archs from {modules}")
    print(_compile.format_table(results, defaults_only=True))
    failed = [f"{r.name} sm_{r.arch}: {r.error[-600:]}" for r in results if not r.ok]
    assert not failed, "compile errors:\n" + "\n\n".join(failed)
