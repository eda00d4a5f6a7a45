"""Compile every Triton kernel configuration of the package for real GPUs, with no GPU.

The interpreter (``TRITON_INTERPRET=1``) accepts code the GPU compiler rejects (``tl.dot`` with K < 16,
shared memory overflows, register blow-ups), so each kernel module also lists what it launches on a GPU:

    COMPILE_SPECS: list[CompileSpec]   # built with specs_from_configs(...)

and this module compiles each spec with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
for sm_80 and sm_90, reading registers and local-memory (spill) bytes from the cubin with the ``cuobjdump``
that ships with Triton. A kernel module plugs in by being named in ``KERNEL_MODULES`` and exposing
``COMPILE_SPECS``; a module that does not exist (yet) is skipped.

Under the interpreter ``@triton.jit`` returns an interpreter function that ``triton.compile`` cannot take, so
the compilation runs in a child process without ``TRITON_INTERPRET`` (``run_compile_check``); the child runs
``scl_kernels._compile.main``, which prints one JSON record per (spec, arch).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

KERNEL_MODULES: tuple[str, ...] = ("scl_kernels.attention", "scl_kernels.masking", "scl_kernels.contrastive")
ARCHS: tuple[int, ...] = (80, 90)
SMEM_LIMIT: dict[int, int] = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
"""Shared memory one block may use (opt-in maximum), bytes, per compute capability."""


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    """One kernel specialisation as a GPU would launch it."""

    name: str  # "<module>.<kernel>[<config>]/<variant>", unique in the package
    kernel: Any  # the @triton.jit function (not an autotuner around it)
    signature: dict[str, str]  # every parameter: "*bf16", "i32", "fp32", ... or "constexpr"
    constexprs: dict[str, int | bool | None]
    num_warps: int = 4
    num_stages: int = 3
    default: bool = False  # the config the report's register/spill table lists
    divisible: tuple[str, ...] = ()  # integer parameters a real launch passes as multiples of 16


@dataclasses.dataclass
class CompileResult:
    name: str
    arch: int
    ok: bool
    default: bool
    registers: int | None = None
    spill_bytes: int | None = None  # stack + local memory per thread: Triton kernels use none except for spills
    shared_bytes: int | None = None
    instructions: int | None = None  # SASS instructions in the kernel (all loops and passes, each once)
    uses_tf32: bool = False  # TF32 matrix instructions in the PTX: fine for fp16/bf16 inputs, a bug for fp32 ones
    int_divisions: int = 0  # integer div/rem in the PTX: ~20 instructions each with a runtime divisor
    vector_bits: int = 0  # the widest global load or store in the PTX, in bits (128: 16-byte vector accesses)
    seconds: float = 0.0
    error: str = ""


def specs_from_configs(
    kernel: Any,
    name: str,
    types: dict[str, str],
    constexprs: dict[str, int | bool | None],
    configs: Sequence[Any] = (),
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    default: bool = True,
    divisible: tuple[str, ...] = (),
) -> list[CompileSpec]:
    """One spec per autotune config (``triton.Config``), or a single spec when ``configs`` is empty.

    Args:
        kernel: the @triton.jit function.
        name: prefix of the spec names, e.g. "attention.fwd/bf16-d64".
        types: Triton types of the runtime parameters; parameters missing here default to "i32", except pointers
            (names ending in ``_ptr``), which must be given.
        constexprs: values of the constexpr parameters that the configs do not set.
        configs: autotune configs; their kwargs, num_warps and num_stages complete the spec.
        default: whether the first config is a default one (listed in the report's register table).
        divisible: integer parameters that a typical launch passes as multiples of 16 (strides of contiguous
            tensors whose last dim is a multiple of 16); Triton compiles such a launch with that knowledge.
    """
    params = list(inspect.signature(kernel.fn).parameters)
    entries = [(dict(c.kwargs), c.num_warps, c.num_stages) for c in configs] or [({}, num_warps, num_stages)]
    specs = []
    for i, (kwargs, warps, stages) in enumerate(entries):
        consts = {**constexprs, **kwargs}
        signature = {}
        for p in params:
            if p in consts:
                signature[p] = "constexpr"
            elif p in types:
                signature[p] = types[p]
            elif p.endswith("_ptr"):
                raise ValueError(f"{name}: pointer parameter {p} needs a type in `types`")
            else:
                signature[p] = "i32"
        tag = ",".join(f"{k}={v}" for k, v in kwargs.items()) + (f",w{warps},s{stages}" if kwargs else "")
        specs.append(
            CompileSpec(
                name=f"{name}[{tag}]" if tag else name,
                kernel=kernel,
                signature=signature,
                constexprs=consts,
                num_warps=warps,
                num_stages=stages,
                default=default and i == 0,
                divisible=divisible,
            )
        )
    return specs


def contiguous_strides(kernel: Any, unknown: tuple[str, ...] = ()) -> tuple[dict[str, int], tuple[str, ...]]:
    """``kernel``'s stride parameters as a launch on contiguous tensors whose last dim is a multiple of 16 passes
    them: ({last-dim stride: 1}, constants in Triton's specialisation, for the constexprs; the other strides, all
    multiples of 16, for ``divisible``). Last-dim strides are the ``stride_*d`` parameters; those starting with a
    prefix in ``unknown`` (a mask's, whose layout varies) are left out of both."""
    params = inspect.signature(kernel.fn).parameters
    strides = [p for p in params if p.startswith("stride_") and not p.startswith(unknown)]
    unit = {p: 1 for p in strides if p.endswith("d")}
    return unit, tuple(p for p in strides if p not in unit)


def collect_specs(modules: Iterable[str] = KERNEL_MODULES) -> list[CompileSpec]:
    """COMPILE_SPECS of every kernel module that exists; names must be unique across modules."""
    specs: list[CompileSpec] = []
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:  # the module exists but one of its imports is missing: a real error
                raise
            continue
        specs.extend(getattr(mod, "COMPILE_SPECS", []))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate compile spec names: {dupes}")
    return specs


def _cuobjdump() -> str:
    import triton.backends.nvidia as nv

    return str(Path(nv.__file__).parent / "bin" / "cuobjdump")


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None, int]:
    """(registers, spill bytes, SASS instructions) of the kernel in a cubin, from ``cuobjdump``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    reg = re.search(r"REG:(\d+)", text)
    # ptxas puts spilled registers in the stack frame (STACK); LOCAL counts other local arrays. Triton kernels
    # have neither unless registers run out, so their sum is the spill figure.
    spill = sum(int(m) for m in re.findall(r"(?:STACK|LOCAL):(\d+)", text))
    # one "/*0a70*/ OPCODE ...;" line per instruction: the code size, a static proxy for the work per tile
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+\S", sass, re.MULTILINE))
    return (int(reg.group(1)) if reg else None, spill, instructions)


def compile_spec(spec: CompileSpec, arch: int) -> CompileResult:
    """Compile one spec for sm_<arch>; never raises (the error text goes into the result)."""
    import triton
    from triton.backends.compiler import GPUTarget

    start = time.perf_counter()
    try:
        # Triton specialises a launch on which pointers are 16-byte aligned and which integers are multiples of
        # 16 (and vectorises loads on it): without these hints the registers would not be those of the kernel
        # that runs. Pointers from torch allocations are aligned; the spec names its integers.
        hinted = [i for i, (name, ty) in enumerate(spec.signature.items())
                  if ty.startswith("*") or name in spec.divisible]  # fmt: skip
        attrs = {(i,): [["tt.divisibility", 16]] for i in hinted}
        src = triton.compiler.ASTSource(
            fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs
        )
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
        regs, spill, instructions = _resource_usage(compiled.asm["cubin"])
        shared = compiled.metadata.shared
        # triton.compile accepts a kernel that needs more shared memory than the GPU has; the launch would fail
        limit = SMEM_LIMIT.get(arch)
        error = ""
        if limit and shared > limit:
            error = f"needs {shared} B of shared memory, sm_{arch} has {limit} B per block"
        ptx = compiled.asm["ptx"]
        return CompileResult(
            spec.name, arch, not error, spec.default, regs, spill, shared,
            instructions=instructions,
            uses_tf32=".tf32" in ptx,
            int_divisions=len(re.findall(r"\b(?:div|rem)\.[su](?:16|32|64)\b", ptx)),
            vector_bits=widest_global_access(ptx),
            seconds=time.perf_counter() - start,
            error=error,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 (any compiler failure is the result being reported)
        msg = f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - start
        return CompileResult(spec.name, arch, False, spec.default, seconds=elapsed, error=msg[-4000:])


def widest_global_access(ptx: str) -> int:
    """Bits moved by the widest ``ld.global`` / ``st.global`` in ``ptx`` (``ld.global.v4.b32``: 128)."""
    widths = [int(m.group(1) or 1) * int(m.group(2))
              for m in re.finditer(r"\b(?:ld|st)\.global(?:\.[\w:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx)]  # fmt: skip
    return max(widths, default=0)


_SPECS: list[CompileSpec] = []


def _compile_index(job: tuple[int, int]) -> CompileResult:
    index, arch = job
    return compile_spec(_SPECS[index], arch)


def compile_all(specs: list[CompileSpec], archs: Sequence[int] = ARCHS, jobs: int = 2) -> list[CompileResult]:
    """Compile every spec for every arch, ``jobs`` at a time (forked workers inherit the specs)."""
    global _SPECS
    _SPECS = specs
    work = [(i, a) for i in range(len(specs)) for a in archs]
    if jobs <= 1:
        return [_compile_index(w) for w in work]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_compile_index, work, chunksize=1)


def run_compile_check(
    archs: Sequence[int] = ARCHS, jobs: int | None = None, modules: Sequence[str] = KERNEL_MODULES, timeout: float = 600
) -> list[CompileResult]:
    """Run the compilation in a child process without TRITON_INTERPRET and return its results."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its current default
    jobs = jobs or min(4, os.cpu_count() or 1)
    # -c rather than -m: the package imports this module first, and runpy warns when re-running it as __main__
    args = ["--jobs", str(jobs), "--arch", *map(str, archs), "--modules", *modules]
    cmd = [sys.executable, "-c", "import sys; from scl_kernels._compile import main; main(sys.argv[1:])", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"compile check failed to run ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return [CompileResult(**json.loads(line)) for line in proc.stdout.splitlines() if line.startswith("{")]


def format_table(results: Sequence[CompileResult], *, defaults_only: bool = False) -> str:
    """Markdown table: one row per spec; registers, spill bytes, shared bytes, SASS instructions and integer
    divisions per arch."""
    archs = sorted({r.arch for r in results})
    by_name: dict[str, dict[int, CompileResult]] = {}
    for r in results:
        if r.default or not defaults_only:
            by_name.setdefault(r.name, {})[r.arch] = r
    columns = ("regs", "spill B", "smem B", "instr", "int div")
    head = "| kernel | " + " | ".join(f"sm_{a} {c}" for a in archs for c in columns) + " |"
    rows = [head, "|" + "---|" * (1 + len(columns) * len(archs))]
    for name, per_arch in by_name.items():
        cells = []
        for a in archs:
            r = per_arch.get(a)
            values = (r.registers, r.spill_bytes, r.shared_bytes, r.instructions, r.int_divisions) if r else ()
            cells += [str(v) for v in values] if r and r.ok else ["FAIL"] * len(columns)
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--modules", nargs="+", default=list(KERNEL_MODULES))
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: triton.compile needs @triton.jit functions, not interpreted ones")
    for result in compile_all(collect_specs(args.modules), args.arch, args.jobs):
        print(json.dumps(dataclasses.asdict(result)), flush=True)


if __name__ == "__main__":
    main()
