"""info_nce forward+backward: the fused op (C++ on CPU, Triton on CUDA) against the eager N x N reference.

Every case asserts numerics against the float64 reference (loss and the gradients of a, b and the temperature),
so a fast wrong kernel fails. CPU cases: the C++ kernel (``backend="native"``) and ``info_nce_ref`` on the same
inputs, timed fwd+bwd; the headline problem is ITC at N = 8192, D = 512 (``benchmarks/shapes.py``).

Peak memory on CPU (``test_info_nce_cpu_peak_memory``): torch has no allocator statistics for CPU tensors and
tracemalloc does not see them, so the measurement is the operating system's: a fresh subprocess builds the
inputs, warms the op up on a small problem (thread pools, MKL buffers), hands freed heap back (``malloc_trim``),
resets the resident-set high-water mark (``/proc/self/clear_refs`` = 5) and runs one forward+backward; the peak
is ``VmHWM - VmRSS`` before the run, i.e. every byte the op and autograd made resident, including the
gradients of a and b (the same 2*N*D*4 bytes for both backends). Without a writable clear_refs it falls back
to the ``ru_maxrss`` increase over the same run. ``python -m benchmarks.bench_contrastive --peak-memory`` prints
one measurement as JSON.

GEMM-equivalent FLOPs (``test_info_nce_launched_flops``, CPU): the Triton host path runs dry on meta tensors
(``scl_kernels.contrastive.recorded_launches(dry=True)``: every launch recorded with its grid and tiles, nothing
run), at the GPU shapes with the default configs and an H100's 132 SMs, and each launch's GEMM work is counted from
its grid and tile sizes, padding included (``scl_kernels.contrastive.gemm_flops``). The same count for the kernels
this module replaced (commit 24e3f47: the backward split D over its grid and recomputed the N x N x D similarity
for every slice) comes from their grid and default tiles. Both are given as ratios to the minimum, 2 N^2 D per
GEMM-equivalent: the forward needs one, the backward one for the similarity and one per input gradient.
``python -m benchmarks.bench_contrastive --flops`` prints the table.

GPU cases (Triton vs the reference, fp16/bf16, ``INFONCE_GPU`` shapes) skip without CUDA; there peak memory is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import shapes as S
from benchmarks import synchronized

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = S.InfoNCEShape("itc_8192x512", n=8192, dim=512)  # the CPU goal: memory <= 1/10, time <= the reference
CPU_SHAPES = [*S.INFONCE_CPU, HEADLINE]
TEMPERATURE = 0.05
# relative error of fp32 results vs the float64 reference (loss, grads); the reference itself in fp32 is ~1e-6
RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _inputs(n: int, dim: int, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """Matched pairs (b = a + noise) at a temperature where the softmax is neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g)
    b = 0.3 * a + torch.randn(n, dim, generator=g)
    return a.to(device, dtype), b.to(device, dtype), torch.tensor(TEMPERATURE, device=device)


def _fwd_bwd(fn, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor):
    a = a.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    loss = fn(a, b, t)
    loss.backward()
    return loss.detach(), a.grad, b.grad, t.grad


def _impl(name: str):
    import scl_kernels
    from scl_kernels.reference import info_nce_ref

    if name == "reference":
        return lambda a, b, t: info_nce_ref(a, b, t)
    return lambda a, b, t: scl_kernels.info_nce(a, b, t, backend=name)


@functools.lru_cache(maxsize=4)
def _fp64_reference(n: int, dim: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple:
    """float64 loss and gradients of one problem (inputs rounded to ``dtype`` first), computed once per session:
    the oracle of every backend."""
    from scl_kernels.reference import info_nce_ref

    a, b, t = _inputs(n, dim, dtype, device)
    out = _fwd_bwd(lambda a, b, t: info_nce_ref(a, b, t, upcast=True), a.double(), b.double(), t.double())
    return tuple(x.cpu() for x in out)


def _check(out: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...], rtol: float | None) -> dict[str, float]:
    """Relative errors of (loss, da, db, dt) vs the float64 reference; each must be <= rtol (NaN fails). With
    rtol None (the eager reference in fp16/bf16: the baseline itself) only finiteness is asserted."""
    from tests.utils import rel_err

    errs = {name: rel_err(o.double().cpu(), r) for name, o, r in zip(("loss", "da", "db", "dt"), out, ref, strict=True)}
    bad = {k: v for k, v in errs.items() if not (v <= (float("inf") if rtol is None else rtol))}  # NaN fails too
    assert not bad, f"numerics off vs float64 reference (rtol {rtol}): {bad}"
    return errs


# --------------------------------------------------------------------------------------------------------------
# peak memory (CPU): a fresh process per measurement
# --------------------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def measure_peak(backend: str, n: int, dim: int, threads: int | None = None) -> dict[str, float | str]:
    """Resident memory one fwd+bwd adds, in MiB, measured in *this* process (run it in a fresh one)."""
    if threads:
        torch.set_num_threads(threads)
    fn = _impl(backend)
    _fwd_bwd(fn, *_inputs(256, dim))  # warm-up: thread pools, BLAS buffers, lazy imports
    a, b, t = _inputs(n, dim)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline RSS is what is live
    except OSError:
        pass
    method = "VmHWM"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        base = _status_kib("VmRSS")
    except OSError:
        method = "ru_maxrss"
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _fwd_bwd(fn, a, b, t)
    peak = _status_kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"backend": backend, "n": n, "dim": dim, "peak_mib": (peak - base) / 1024, "method": method}


def _peak_in_subprocess(backend: str, n: int, dim: int) -> dict[str, float | str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "benchmarks.bench_contrastive", "--peak-memory", "--backend", backend,
           "--n", str(n), "--dim", str(dim), "--threads", str(torch.get_num_threads())]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------
# CPU cases
# --------------------------------------------------------------------------------------------------------------


def _native_available() -> bool:
    from scl_kernels import _dispatch

    return _dispatch.HAS_NATIVE


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: s.name)
def test_info_nce_cpu(benchmark, shape: S.InfoNCEShape, backend: str) -> None:
    """fwd+bwd time on CPU; the C++ kernel and the reference on the same inputs."""
    if backend == "native" and not _native_available():
        pytest.skip("scl_kernels._C is not built (the CPU path is the reference)")
    a, b, t = _inputs(shape.n, shape.dim)
    fn = _impl(backend)
    rounds = 3 if shape.n >= 4096 else 10
    out = benchmark.pedantic(lambda: _fwd_bwd(fn, a, b, t), rounds=rounds, iterations=1, warmup_rounds=1)
    errs = _check(out, _fp64_reference(shape.n, shape.dim), RTOL[torch.float32])
    # CPU seconds of one more fwd+bwd (all threads): steadier than wall time on a shared machine
    start = time.process_time()
    _fwd_bwd(fn, a, b, t)
    cpu_s = time.process_time() - start
    benchmark.extra_info.update(
        shape=shape.name, n=shape.n, dim=shape.dim, backend=backend, threads=torch.get_num_threads(),
        gflops=shape.flops(backward=True) / 1e9, cpu_s=cpu_s, **{f"rel_err_{k}": v for k, v in errs.items()},
    )  # fmt: skip
    print(f"\n{shape.name} {backend}: cpu {cpu_s:.3f} s per fwd+bwd, {torch.get_num_threads()} threads")


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: s.name)
def test_info_nce_cpu_peak_memory(benchmark, shape: S.InfoNCEShape) -> None:
    """Peak resident memory of one fwd+bwd, C++ vs reference, each in a fresh process; the goal at the headline
    shape is at most 1/10 of the reference's. The timed function is the C++ fwd+bwd (so the case has a time)."""
    if not _native_available():
        pytest.skip("scl_kernels._C is not built (the CPU path is the reference)")
    native = _peak_in_subprocess("native", shape.n, shape.dim)
    ref = _peak_in_subprocess("reference", shape.n, shape.dim)
    a, b, t = _inputs(shape.n, shape.dim)
    out = benchmark.pedantic(lambda: _fwd_bwd(_impl("native"), a, b, t), rounds=1, iterations=1)
    _check(out, _fp64_reference(shape.n, shape.dim), RTOL[torch.float32])
    ratio = native["peak_mib"] / max(ref["peak_mib"], 1e-9)
    inputs_mib = 2 * shape.n * shape.dim * 4 / 2**20  # the gradients of a and b, part of both peaks
    benchmark.extra_info.update(
        shape=shape.name, native_peak_mib=native["peak_mib"], reference_peak_mib=ref["peak_mib"],
        ratio=ratio, grads_mib=inputs_mib, method=native["method"],
    )  # fmt: skip
    print(f"\n{shape.name}: peak MiB native {native['peak_mib']:.1f}, reference {ref['peak_mib']:.1f} "
          f"(ratio {ratio:.3f}, of which grads of a, b {inputs_mib:.1f} MiB), {native['method']}")  # fmt: skip
    if shape is HEADLINE:
        assert ratio <= 0.1, f"goal: C++ peak <= 1/10 of the reference's, got {ratio:.3f}"


# --------------------------------------------------------------------------------------------------------------
# GEMM-equivalent FLOPs launched (CPU: the host path run dry on meta tensors)
# --------------------------------------------------------------------------------------------------------------

FLOP_SHAPES = S.INFONCE_GPU  # 4096 x 512 (ITC), 4096 x 768 (SCL), 32768 x 256
FLOP_GOAL = 1.05  # launched / minimal GEMM work, backward: only the padding of ragged tiles on top


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launched_flops(n: int, dim: int, *, detach_b: bool = False, symmetric: bool = True,
                   dtype: torch.dtype = torch.bfloat16, sms: int = 132) -> dict[str, float]:
    """GEMM FLOPs the Triton kernels launch for one forward and one backward (grads of a, T, and of b unless
    ``detach_b``), by kernel: counted from the recorded grids and tiles of a dry run (default configs)."""
    from scl_kernels.contrastive import gemm_flops, launch, recorded_launches

    a, b = (torch.empty(n, dim, device="meta", dtype=dtype) for _ in range(2))
    t = torch.empty((), device="meta")
    with recorded_launches(dry=True, sms=sms) as fwd:
        _, stats = launch.info_nce_fwd(a, b, t, symmetric)
    with recorded_launches(dry=True, sms=sms) as bwd:
        launch.info_nce_bwd(torch.empty((), device="meta"), a, b, t, stats, symmetric, True, not detach_b, True)
    counts: dict[str, float] = {"fwd": sum(map(gemm_flops, fwd))}
    for rec in bwd:
        name = {"_info_nce_grad_kernel": "bwd_similarity", "_info_nce_gemm_kernel": "bwd_gemm"}.get(rec.kernel)
        if name:
            counts[name] = counts.get(name, 0.0) + gemm_flops(rec)
    counts["bwd"] = counts.get("bwd_similarity", 0.0) + counts.get("bwd_gemm", 0.0)
    return counts


def previous_flops(n: int, dim: int, *, detach_b: bool = False, symmetric: bool = True) -> dict[str, float]:
    """The same count for the kernels of commit 24e3f47 (kernels/scl_kernels/contrastive.py there), with their
    default 16-bit tiles. Forward: one launch per direction, grid (N / 128,), each program every 128-wide column
    tile with a 32-deep K loop. Backward: one launch per side whose gradient is needed, grid (N / 64, D / 128),
    each program every 64-wide column tile: the similarity over the whole (padded) D, then its 128-wide slice of
    the output (``BLOCK_DO``)."""
    d_pad = _cdiv(dim, 32) * 32
    fwd = (2 if symmetric else 1) * _cdiv(n, 128) * _cdiv(n, 128) * 2.0 * 128 * 128 * d_pad
    sides = 1 if detach_b else 2
    per_program = _cdiv(n, 64) * (2.0 * 64 * 64 * d_pad + 2.0 * 64 * 64 * 128)
    return {"fwd": fwd, "bwd": sides * _cdiv(n, 64) * _cdiv(dim, 128) * per_program}


def flop_rows(shapes=FLOP_SHAPES) -> list[dict[str, float | str]]:  # noqa: ANN001
    """One row per (shape, detach_b): launched / minimal GEMM work, now and before."""
    rows = []
    for shape in shapes:
        for detach_b in (False, True):
            gemm = 2.0 * shape.n * shape.n * shape.dim
            need_bwd = 3 if not detach_b else 2  # the similarity, the gradient of a, that of b unless detached
            new = launched_flops(shape.n, shape.dim, detach_b=detach_b)
            old = previous_flops(shape.n, shape.dim, detach_b=detach_b)
            rows.append({"shape": shape.name, "detach_b": detach_b, "fwd_ratio": new["fwd"] / gemm,
                         "fwd_ratio_before": old["fwd"] / gemm, "bwd_ratio": new["bwd"] / (need_bwd * gemm),
                         "bwd_ratio_before": old["bwd"] / (need_bwd * gemm),
                         "bwd_gemm_equivalents": new["bwd"] / gemm, "bwd_gemm_equivalents_before": old["bwd"] / gemm})
    return rows


@pytest.mark.parametrize("detach_b", [False, True], ids=["grads-a-b-T", "detach_b"])
@pytest.mark.parametrize("shape", FLOP_SHAPES, ids=lambda s: s.name)
def test_info_nce_launched_flops(benchmark, shape: S.InfoNCEShape, detach_b: bool) -> None:
    """The backward launches the minimum GEMM work up to tile padding (the similarity once, each gradient once):
    no recomputation across D slices. Timed: the dry run itself (host time of the launch path, no kernels)."""
    counts = benchmark.pedantic(launched_flops, args=(shape.n, shape.dim), kwargs={"detach_b": detach_b},
                                rounds=1, iterations=1)
    (row,) = [r for r in flop_rows([shape]) if r["detach_b"] == detach_b]
    benchmark.extra_info.update(row, **{f"gflop_{k}": v / 1e9 for k, v in counts.items()})
    print(f"\n{shape.name} detach_b={detach_b}: backward launches {row['bwd_gemm_equivalents']:.2f} GEMM-equivalents "
          f"({row['bwd_ratio']:.3f}x the minimum; before: {row['bwd_gemm_equivalents_before']:.2f}, "
          f"{row['bwd_ratio_before']:.2f}x), forward {row['fwd_ratio']:.3f}x (before {row['fwd_ratio_before']:.2f}x)")
    assert row["bwd_ratio"] <= FLOP_GOAL, f"the backward launches {row['bwd_ratio']:.3f}x the minimal GEMM work"
    assert row["fwd_ratio"] <= FLOP_GOAL, f"the forward launches {row['fwd_ratio']:.3f}x the minimal GEMM work"
    assert row["bwd_ratio"] < row["bwd_ratio_before"]


# --------------------------------------------------------------------------------------------------------------
# GPU cases
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", S.INFONCE_GPU, ids=lambda s: s.name)
def test_info_nce_gpu(benchmark, shape: S.InfoNCEShape, dtype: torch.dtype, backend: str) -> None:
    """fwd+bwd on CUDA: Triton vs the eager reference in the same dtype; peak memory from the CUDA allocator."""
    a, b, t = _inputs(shape.n, shape.dim, dtype, "cuda")
    fn = _impl(backend)
    _fwd_bwd(fn, a, b, t)  # compile / autotune outside the timing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = benchmark.pedantic(synchronized(lambda: _fwd_bwd(fn, a, b, t), "cuda"), rounds=10, iterations=1)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    errs = _check(out, _fp64_reference(shape.n, shape.dim, dtype, "cuda"), RTOL[dtype] if backend == "triton" else None)
    benchmark.extra_info.update(shape=shape.name, backend=backend, dtype=str(dtype), peak_mib=peak,
                                **{f"rel_err_{k}": v for k, v in errs.items()})  # fmt: skip


GPU_GOAL = 1.3  # eager fwd+bwd time / fused fwd+bwd time, bf16, measured back to back (issue 17)
GPU_GOAL_SHAPES = [s for s in S.INFONCE_GPU if s.name in ("scl_4096x768", "big_32768x256")]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_GOAL_SHAPES, ids=lambda s: s.name)
def test_info_nce_gpu_goal(benchmark, shape: S.InfoNCEShape) -> None:
    """Triton fwd+bwd against the eager N x N reference on the same inputs, in one run (triton.testing.do_bench:
    medians, L2 flushed between calls): the fused op must be at least GPU_GOAL times faster."""
    from triton.testing import do_bench

    a, b, t = _inputs(shape.n, shape.dim, torch.bfloat16, "cuda")
    times = {}
    for name in ("triton", "reference"):
        fn = _impl(name)
        ag, bg, tg = (x.detach().clone().requires_grad_(True) for x in (a, b, t))
        fn(ag, bg, tg).backward()  # compile / autotune outside the timing
        times[name] = do_bench(lambda fn=fn, ag=ag, bg=bg, tg=tg: fn(ag, bg, tg).backward(), grad_to_none=[ag, bg, tg],
                               return_mode="median")  # fmt: skip
    ratio = times["reference"] / times["triton"]
    benchmark.extra_info.update(shape=shape.name, triton_ms=times["triton"], eager_ms=times["reference"],
                                eager_over_triton=ratio)  # fmt: skip
    benchmark.pedantic(synchronized(lambda: _fwd_bwd(_impl("triton"), a, b, t), "cuda"), rounds=3, iterations=1)
    print(f"\n{shape.name}: fwd+bwd triton {times['triton']:.3f} ms, eager {times['reference']:.3f} ms, "
          f"{ratio:.2f}x (goal >= {GPU_GOAL})")
    assert ratio >= GPU_GOAL, f"{shape.name}: eager / triton = {ratio:.2f} < {GPU_GOAL}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one info_nce peak-memory measurement (CPU), printed as JSON; or "
                                                 "the launched GEMM-equivalent FLOP table (--flops)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--peak-memory", action="store_true")
    mode.add_argument("--flops", action="store_true")
    parser.add_argument("--backend", choices=["native", "reference"], default="native")
    parser.add_argument("--n", type=int, default=HEADLINE.n)
    parser.add_argument("--dim", type=int, default=HEADLINE.dim)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.flops:
        print("| shape | grads | backward GEMM-equivalents (x minimum) | before (x minimum) | forward x minimum | "
              "before |\n|---|---|---|---|---|---|")
        for r in flop_rows():
            print(f"| {r['shape']} | {'a, T' if r['detach_b'] else 'a, b, T'} | {r['bwd_gemm_equivalents']:.2f} "
                  f"({r['bwd_ratio']:.3f}x) | {r['bwd_gemm_equivalents_before']:.2f} ({r['bwd_ratio_before']:.2f}x) | "
                  f"{r['fwd_ratio']:.3f}x | {r['fwd_ratio_before']:.2f}x |")
        return
    print(json.dumps(measure_peak(args.backend, args.n, args.dim, args.threads)))


if __name__ == "__main__":
    main()
