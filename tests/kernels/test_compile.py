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
import os
import subprocess
import sys
from pathlib import Path

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
    # fp32 inputs must multiply in fp32: Triton's default TF32 failed every fp32 case on an H200 (rel err ~3e-4)
    fp32 = [r for r in results if "/fp32" in r.name]
    assert fp32, "no fp32 spec: the TF32 check below would check nothing"
    tf32 = [f"{r.name} sm_{r.arch}" for r in fp32 if r.uses_tf32]
    assert not tf32, f"fp32 kernels using TF32 matrix instructions: {tf32}"
    # the frame-block mask is tested per resident row, outside the loops: an integer division per score element
    # (the frame of each key) cost ~40 divisions of ~20 instructions each per tile, and 50 more registers
    frames = [r for r in results if "frames" in r.name]
    assert frames, "no frames spec: the division check below would check nothing"
    print("integer divisions, frames kernels:", {f"{r.name} sm_{r.arch}": r.int_divisions for r in frames})
    divides = [f"{r.name} sm_{r.arch}: {r.int_divisions}" for r in frames if r.int_divisions > MAX_FRAME_DIVISIONS]
    assert not divides, f"integer divisions in the frames kernels beyond the per-row setup: {divides}"
    # what each dtype and head dim launches first (its default) keeps its registers: the fp32 defaults spilled
    # 7.1-7.4 KB per thread before fp32 had tiles of its own, and the D <= 128 tiles at D=256 up to 600 B
    defaults = [r for r in results if r.default and r.name.startswith("attention.")]
    # every list's default is among them: each dtype and head-dim list (D up to 256: the wide-head tiles), and the
    # kernels' other specialisations (causal, grouped K/V heads with kv_group a runtime value, the lse gradient)
    for tag in ("/fp32-d64-", "/fp32-d128-", "/bf16-d160-", "/bf16-d192-", "/bf16-d256-", "/fp32-d256-",
                "-key+causal[", "-key+gqa[", "dq/bf16-d64-key+lse["):  # fmt: skip
        assert any(tag in r.name for r in defaults), f"no default attention spec {tag}: its spills go unchecked"
    spills = [f"{r.name} sm_{r.arch}: {r.spill_bytes} B" for r in defaults
              if r.spill_bytes is None or r.spill_bytes > MAX_DEFAULT_SPILL]
    assert not spills, f"attention default configs spilling registers: {spills}"
    # the same for the contrastive and masking kernels: the fp32 info_nce backward defaults spilled 1.4-2.0 KB
    # per thread when it split D over programs
    ours = [r for r in results if r.default and r.name.startswith(("contrastive.", "masking."))]
    for kernel in ("info_nce_fwd", "info_nce_grad", "info_nce_gemm"):
        assert any(r.name.startswith(f"contrastive.{kernel}/fp32") for r in ours), f"no fp32 default of {kernel}"
    spills = [f"{r.name} sm_{r.arch}: {r.spill_bytes} B" for r in ours
              if r.spill_bytes is None or r.spill_bytes > MAX_DEFAULT_SPILL]
    assert not spills, f"contrastive / masking default configs spilling registers: {spills}"
    # random_masking's gather is a copy: it must move 16-byte vectors (ld/st.global.v4.b32), not 2-byte elements
    gathers = {f"{r.name} sm_{r.arch}": r.vector_bits for r in results if "random_masking_gather" in r.name}
    assert gathers and all(bits == 128 for bits in gathers.values()), f"gather accesses narrower than 16 B: {gathers}"


# _frame_span's two and _frame_id's one per resident row a thread holds (one or two in every config)
MAX_FRAME_DIVISIONS = 8
# bytes per thread: the 16-bit defaults spill up to 24 B on one architecture or the other (compile report)
MAX_DEFAULT_SPILL = 64


def test_widest_global_access_reads_ptx() -> None:
    """The gather check above reads the widest global access from the PTX, vector or not, with cache hints."""
    assert _compile.widest_global_access("ld.global.b16 %rs1, [%rd1];\nst.global.b16 [%rd2], %rs1;") == 16
    assert _compile.widest_global_access("ld.global.L1::evict_last.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];") == 128
    assert _compile.widest_global_access("ld.global.v2.b64 {%rd3, %rd4}, [%rd1];\nld.shared.v4.b32 x") == 128
    assert _compile.widest_global_access("ld.shared.v4.b32 {%r1, %r2, %r3, %r4}, [%r5];") == 0


TF32_PROBE = """
import triton, triton.language as tl
from scl_kernels import _compile

@triton.jit
def probe(A, B, C, D, n, FULL: tl.constexpr):
    i = tl.arange(0, 16)
    a = tl.load(A + i[:, None] * 16 + i[None, :])
    b = tl.load(B + i[:, None] * 16 + i[None, :])
    c = tl.dot(a, b, input_precision="ieee") if FULL else tl.dot(a, b)
    tl.store(C + i[:, None] * 16 + i[None, :], c)
    if FULL:  # one integer division per element of a (64, 64) tile, as the frames kernels once did per score
        j = tl.arange(0, 64)
        tl.store(D + j[:, None] * 64 + j[None, :], (j[:, None] * 64 + j[None, :]) // n)

sig = {"A": "*fp32", "B": "*fp32", "C": "*fp32", "D": "*i32", "n": "i32", "FULL": "constexpr"}
for full in (False, True):
    result = _compile.compile_spec(_compile.CompileSpec(f"probe/fp32-{full}", probe, sig, {"FULL": full}), 90)
    print(full, result.uses_tf32, result.int_divisions)
"""


def test_ptx_checks_can_fail(tmp_path: Path) -> None:
    """The checks above read the PTX: Triton's default fp32 dot shows up as TF32, the "ieee" one does not, and
    per-element integer divisions are counted (more than the frames kernels' limit for one 64 x 64 tile)."""
    script = tmp_path / "probe.py"
    script.write_text(TF32_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert [line[:2] for line in lines] == [["False", "True"], ["True", "False"]], proc.stdout
    assert int(lines[0][2]) == 0 and int(lines[1][2]) > MAX_FRAME_DIVISIONS, proc.stdout
