"""One GPU, one command, under 8 minutes: ceilings, every fused kernel, and the training step.

    python -m benchmarks.gpu_report --out benchmarks/results/gpu-h200

Measures, in this order (each section checks the time left and is skipped, with a note, when it would not fit):

1. ceilings: device-to-device copy bandwidth (bytes read + written) and a bf16 8192^3 matmul rate, on random data.
   Every later number is also shown as a fraction of these measured ceilings (not of datasheet values).
2. ``masked_attention`` forward and forward+backward over ``shapes.ATTN_GPU`` (text padding, 288 px images,
   4-frame video with the frame-block mask, co-attention, one long D=128 case) in bf16, against PyTorch SDPA as
   it dispatches by default (dense bool mask), and peers tuned as their authors would (``attention_peers``):
   ``sdpa_best`` (the fastest of SDPA's cuDNN / flash / efficient backends with a bool or additive mask),
   FlexAttention (arithmetic mask_mod, compiled BlockMask, the fastest of its tile sizes and kernel options) and
   xformers (its BlockDiagonalMask), each configuration tried listed in ``attention_peers`` and every peer's mask
   checked equal to the reference before its time counts; and the eager reference. TFLOP/s over *visible*
   (query, key) pairs; error vs an fp64 reference (output and the three input gradients) in bf16, plus the fused
   kernel's error in fp16.
3. ``info_nce`` forward+backward (fused vs the eager N x N reference): TFLOP/s, peak memory, error vs fp64.
4. ``random_masking`` / ``mlm_mask`` / ``scl_text_mask``: GB/s over the fewest bytes, exact agreement with the
   reference on the same random keys.
5. The whole training step (``report_step.py``), bf16 autocast, of the ``paper`` (batch 32 and a large batch) and
   ``compact`` presets, eager / compiled / compiled + CUDA graphs: ms, the GPU's busy fraction, samples/s, MFU (the
   step's useful FLOPs over the step time and the measured bf16 matmul ceiling), peak memory, the loss difference
   from eager over 20 steps; and on compact the fused schedule against the naive five-pass reference.

Timing: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls, median) for kernels; CUDA events
around whole steps after warm-up steps, median of repeats. Writes ``report.json``, ``report.md`` and
``report.png`` into ``--out``, and ``attention_crossover.json``: the attention cases timed for both our kernels
and SDPA, the table ``masked_attention(backend="auto")`` chooses by (copy it over
``kernels/scl_kernels/attention/crossover.json`` to use it). Without a CUDA GPU it says so and exits 0.
``--cpu-smoke`` runs the same code on tiny CPU shapes (host timer, default backends) so the script itself is tested
where no GPU exists.
Every kernel is looked up defensively: a missing op is reported as ``missing``, an op that raises as
``error: ...``, and the report goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import attention_peers as peers
from benchmarks import shapes as S
from benchmarks import torch_threads
from benchmarks.report_step import run_step

ROOT = Path(__file__).resolve().parents[1]
NO_GPU_MESSAGE = "gpu_report: no CUDA GPU is present on this machine; nothing to measure (exit 0)."


def import_kernels() -> Any:
    """``scl_kernels``, installed or straight from the checkout's ``kernels/`` source root (the GPU machine runs the
    report on a bare copy of the repository, where the package may not be installed)."""
    try:
        return importlib.import_module("scl_kernels")
    except ImportError:
        sys.path.insert(0, str(ROOT / "kernels"))
        return importlib.import_module("scl_kernels")


# ----------------------------------------------------------------------------------------------------------------
# Context, timing, rows
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """Where and how long the report runs, and what it has found so far."""

    device: torch.device
    smoke: bool
    deadline: float
    step_reserve_s: float
    ceilings: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # attention autotuner -> autotune key -> config -> ms: every candidate's time, not only the winner's
    tuning: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    host_profile: list[dict[str, Any]] = field(default_factory=list)  # the fused fwd+bwd's top Python functions
    peer_search: str = "full"  # tuned peers: time every configuration fwd and fwd+bwd ("full"), or fwd ("fwd")
    flex_experimental: bool = False  # also try USE_TMA and max-autotune on FlexAttention's fastest configuration

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("section",) and v is not None}
        print(f"  [{row['section']}] " + ", ".join(f"{k}={_short(v)}" for k, v in shown.items()), flush=True)
        return row


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def time_ms(ctx: Ctx, fn: Callable[[], Any], *, grad_to_none: list[torch.Tensor] | None = None) -> float:
    """Median milliseconds of one call of ``fn``."""
    if ctx.device.type == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))
        except (ImportError, TypeError):
            return _events_ms(fn, reps=20, warmup=3, grad_to_none=grad_to_none)
    fn()  # warm-up: first-call allocations and lazy initialisation stay out of the number
    times = []
    for _ in range(3):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _events_ms(fn: Callable[[], Any], *, reps: int, warmup: int,
               grad_to_none: list[torch.Tensor] | None = None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(actual: torch.Tensor | None, expected: torch.Tensor | None) -> float:
    """||a - e|| / ||e|| in fp64; NaN if anything is non-finite or missing (NaN never looks good)."""
    if actual is None or expected is None:
        return float("nan")
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape or not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return float("nan")
    denom = e.norm().item()
    return (a - e).norm().item() / denom if denom > 0 else (a - e).norm().item()


def max_abs(actual: torch.Tensor | None, expected: torch.Tensor | None) -> float:
    if actual is None or expected is None or actual.shape != expected.shape:
        return float("nan")
    return (actual.detach().double() - expected.detach().double()).abs().max().item()


def peak_mb(ctx: Ctx, fn: Callable[[], Any]) -> float | None:
    """Peak memory one call of ``fn`` adds on top of what was allocated before it (CUDA only)."""
    if ctx.device.type != "cuda":
        return None
    ctx.sync()
    torch.cuda.reset_peak_memory_stats(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    fn()
    ctx.sync()
    return (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20


def _error_text(err: BaseException) -> str:
    """The first 200 characters, for the table; the whole message goes to the log (xformers' list of reasons why
    no operator fits was cut off in the first GPU run)."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    if len(text) > 200:
        print(f"    full error: {type(err).__name__}: {err}", flush=True)
    return text[:200]


def kernel_ms(ctx: Ctx, fn: Callable[[], Any], *, reps: int = 5) -> tuple[float | None, dict[str, float]]:
    """Device time of the kernels one call of ``fn`` launches (CUDA profiler: busy time only), total and per
    kernel name. Against the event-timed ms the difference is time the GPU sat idle waiting for the host, which
    is what bounds short sequences."""
    if ctx.device.type != "cuda":
        return None, {}
    from torch.profiler import ProfilerActivity, profile

    fn()
    ctx.sync()
    per: dict[str, float] = {}
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            ctx.sync()
        for event in prof.key_averages():
            us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
            if us:
                per[event.key] = per.get(event.key, 0.0) + us / 1e3 / reps
    except Exception as err:  # noqa: BLE001 - a profiler problem must not cost the case its timings
        print(f"    profiler failed: {_error_text(err)}", flush=True)
        return None, {}
    return (sum(per.values()) if per else None), per


def graph_ms(ctx: Ctx, fn: Callable[[], Any], *, grad_to_none: list[torch.Tensor] | None = None) -> float | None:
    """Median milliseconds of one call of ``fn`` replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``:
    the calls captured once, unrolled, then replayed): the time with no host in it, as a training loop captured
    whole (CUDA graphs, ``torch.compile(mode="reduce-overhead")``) would see. Where ``ms`` is far above
    ``kernel_ms`` the host bounded the call; this says how the implementations compare without it. None off
    CUDA, and None with the reason printed if the call cannot be captured."""
    if ctx.device.type != "cuda":
        return None
    try:
        from triton.testing import do_bench_cudagraph

        return float(do_bench_cudagraph(fn, rep=20, grad_to_none=grad_to_none, return_mode="median"))
    except Exception as err:  # noqa: BLE001 - a capture problem must not cost the case its other timings
        print(f"    CUDA graph timing failed: {_error_text(err)}", flush=True)
        ctx.sync()
        return None


def _top_kernels(per: dict[str, float], n: int = 4) -> str | None:
    """'name ms, ...' of the n longest kernels, names cut to 40 characters."""
    if not per:
        return None
    top = sorted(per.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{name[:40]} {ms:.3f}" for name, ms in top)


def _free(ctx: Ctx) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# 1. ceilings
# ----------------------------------------------------------------------------------------------------------------


def _copy_ceiling(ctx: Ctx) -> None:
    n_copy = (32 if ctx.smoke else 1024) * 2**20 // 2  # bf16 elements: 1 GiB on the GPU, far over the 60 MB L2
    x = torch.randn(n_copy, device=ctx.device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = time_ms(ctx, lambda: y.copy_(x))
    gbps = 2 * x.numel() * x.element_size() / ms / 1e6
    ctx.ceilings["copy_gbps"] = gbps
    ctx.add(section="ceilings", case=f"copy {x.numel() * 2 / 2**20:.0f} MiB", impl="torch", dtype="bf16",
            ms=ms, gbps=gbps)


def _matmul_ceiling(ctx: Ctx) -> None:
    n = 256 if ctx.smoke else 8192
    dtype = torch.float32 if ctx.smoke else torch.bfloat16  # bf16 matmul on CPU is an emulation, not a ceiling
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    ms = time_ms(ctx, lambda: a @ b)
    tflops = 2 * n**3 / ms / 1e9
    ctx.ceilings["matmul_tflops"] = tflops
    ctx.add(section="ceilings", case=f"matmul {n}^3", impl="torch", dtype=str(dtype).removeprefix("torch."),
            ms=ms, tflops=tflops)


def run_ceilings(ctx: Ctx) -> None:
    print("== ceilings", flush=True)
    _copy_ceiling(ctx)
    _free(ctx)
    _matmul_ceiling(ctx)
    _free(ctx)


def _frac(ctx: Ctx, tflops: float | None = None, gbps: float | None = None) -> float | None:
    if tflops is not None and ctx.ceilings.get("matmul_tflops"):
        return tflops / ctx.ceilings["matmul_tflops"]
    if gbps is not None and ctx.ceilings.get("copy_gbps"):
        return gbps / ctx.ceilings["copy_gbps"]
    return None


# ----------------------------------------------------------------------------------------------------------------
# 2. attention
# ----------------------------------------------------------------------------------------------------------------


def _attn_inputs(shape: S.AttnShape, device: torch.device, dtype: torch.dtype, gen: torch.Generator):
    b, h, d = shape.batch, shape.heads, shape.head_dim
    q = torch.randn(b, h, shape.lq, d, device=device, dtype=dtype, generator=gen)
    k = torch.randn(b, h, shape.lk, d, device=device, dtype=dtype, generator=gen)
    v = torch.randn(b, h, shape.lk, d, device=device, dtype=dtype, generator=gen)
    key_mask = None
    if shape.key_mask:
        # each row keeps a random prefix of 50-100% of its keys (text padding sits at the end); never empty
        lengths = torch.randint(max(1, shape.lk // 2), shape.lk + 1, (b,), device=device, generator=gen)
        key_mask = torch.arange(shape.lk, device=device)[None, :] < lengths[:, None]
    return q, k, v, key_mask


def _attn_impls(ctx: Ctx, kernels: Any, shape: S.AttnShape) -> dict[str, Callable | str]:
    """name -> factory(q, k, v, key_mask) -> call() -> out, or a string saying why it is absent: ours, SDPA as it
    dispatches by default (the dense bool mask), SDPA's flash kernel where nothing is masked, and the eager
    reference. The tuned peers (SDPA's best backend, FlexAttention, xformers) come from ``_peers``."""
    from scl_kernels.reference import attention_mask_ref, masked_attention_ref

    impls: dict[str, Callable | str] = {}
    fused = getattr(kernels, "masked_attention", None)
    if fused is None:
        impls["scl_triton"] = "missing: scl_kernels.masked_attention"
    else:
        backend = "triton" if ctx.device.type == "cuda" else None

        def make_fused(q, k, v, km):  # noqa: ANN001, ANN202
            return lambda: fused(q, k, v, key_mask=km, frames=shape.frames, backend=backend)

        impls["scl_triton" if backend else "scl_auto"] = make_fused

    def make_sdpa(q, k, v, km):  # noqa: ANN001, ANN202
        # built once, outside the timed call
        mask = attention_mask_ref(q.shape[0], shape.lq, shape.lk, key_mask=km, frames=shape.frames, device=q.device)
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    impls["sdpa"] = make_sdpa
    if shape.frames is None and not shape.key_mask:
        # the ceiling: PyTorch's built-in FlashAttention-2 kernel, which takes no mask at all
        if ctx.device.type != "cuda":
            impls["sdpa_flash"] = "skipped: the flash backend needs CUDA"
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def make_flash(q, k, v, km):  # noqa: ANN001, ANN202
                def call():  # noqa: ANN202
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        return F.scaled_dot_product_attention(q, k, v)

                return call

            impls["sdpa_flash"] = make_flash

    def make_eager(q, k, v, km):  # noqa: ANN001, ANN202
        return lambda: masked_attention_ref(q, k, v, key_mask=km, frames=shape.frames)

    impls["eager"] = make_eager
    return impls


@dataclass
class _Peer:
    """A tuned peer on one shape: the configurations to try, and (FlexAttention) how to refine the fastest one."""

    candidates: list[peers.Candidate]
    refine: Callable[[str], list[peers.Candidate]] | None = None


def _peers(ctx: Ctx, shape: S.AttnShape, q: torch.Tensor, km: torch.Tensor | None) -> dict[str, _Peer | str]:
    """The tuned peers of one shape (``benchmarks/attention_peers.py``), or why one cannot be tried."""
    from scl_kernels.reference import attention_mask_ref

    batch, dev = q.shape[0], q.device
    ref = attention_mask_ref(batch, shape.lq, shape.lk, key_mask=km, frames=shape.frames, device=dev)
    found: dict[str, _Peer | str] = {"sdpa_best": _Peer(peers.sdpa_candidates(ref, q.dtype))}
    try:
        flex = peers.FlexPeer(batch=batch, lq=shape.lq, lk=shape.lk, frames=shape.frames, key_mask=km, reference=ref,
                              device=dev, compile=dev.type == "cuda")
        configs = {c.name: c for c in peers.flex_configs(frames=shape.frames, lk=shape.lk,
                                                          key_mask=shape.key_mask)}

        def refine(best: str) -> list[peers.Candidate]:
            more = peers.flex_refinements(configs[best], rows_safe=flex.rows_safe, experimental=ctx.flex_experimental)
            return [flex.candidate(c) for c in more]

        found["flex"] = _Peer([flex.candidate(c) for c in configs.values()], refine)
    except ImportError as err:
        found["flex"] = f"missing: FlexAttention ({err})"
    xformers = peers.xformers_candidate(batch=batch, lq=shape.lq, lk=shape.lk, frames=shape.frames, key_mask=km,
                                        reference=ref, device=dev)
    found["xformers"] = _Peer([xformers]) if isinstance(xformers, peers.Candidate) else f"missing: {xformers}"
    return found


# what a peer's forward may differ from the fp64 reference before its configuration is thrown out (bench_attention's)
_PEER_RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _tune(ctx: Ctx, shape: S.AttnShape, name: str, peer: _Peer, inputs: tuple, ref_out: torch.Tensor, dname: str,
          *, backward: bool) -> dict[str, tuple[peers.Candidate, Callable]]:
    """Try every configuration of one peer and return, per pass, the fastest (candidate, factory).

    Each configuration's mask is checked equal to the reference when it is built (``MaskMismatch``: not timed),
    its forward output against the fp64 reference, then it is timed forward and, with ``--peer-search full`` (the
    default), forward + backward; with ``fwd`` only the fastest forward configurations are timed forward + backward,
    until one runs. A peer with ``refine`` then tries refinements of each pass's fastest. Every attempt is a row of
    the ``attention_peers`` section: what was tried, its time or why it was not timed, and which won."""
    q, k, v, km, g = inputs
    timed: dict[str, list[tuple[float, peers.Candidate, Callable, dict]]] = {"fwd": [], "fwd+bwd": []}
    seen: set[str] = set()

    def fwd_bwd(cand: peers.Candidate, make: Callable, row: dict) -> bool:
        try:
            ms = time_ms(ctx, _fwd_bwd_call(make, q, k, v, km, g))
        except Exception as err:  # noqa: BLE001 - e.g. no backward kernel for these tiles
            ctx.add(**row, pass_="fwd+bwd", status=f"error: {_error_text(err)}")
            return False
        timed["fwd+bwd"].append((ms, cand, make, ctx.add(**row, pass_="fwd+bwd", ms=ms, status="ok")))
        return True

    def attempt(cand: peers.Candidate) -> None:
        if cand.key in seen:
            return
        seen.add(cand.key)
        row = {"section": "attention_peers", "case": shape.name, "impl": name, "config": cand.config, "dtype": dname}
        if ctx.left() < ctx.step_reserve_s + 30:
            ctx.add(**row, status="not tried: time budget")
            return
        try:
            call, row["blocks"] = cand.build()
        except peers.MaskMismatch as err:
            ctx.add(**row, status=f"MISMATCH: {str(err)[:190]}")
            return
        except Exception as err:  # noqa: BLE001
            ctx.add(**row, status=f"error: {_error_text(err)}")
            return
        make = lambda q_, k_, v_, km_: (lambda: call(q_, k_, v_))  # noqa: E731 - the report's factory shape
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # grad mode on, as in the timed calls (q, k, v need no gradient): a compiled peer compiled once
                out = call(q, k, v)
            except Exception as err:  # noqa: BLE001 - a backend that refuses the case says why
                ctx.add(**row, status=f"not accepted: {cand.refusal(err, caught)}")
                return
        err = rel_err(out, ref_out)
        if not err < _PEER_RTOL[q.dtype]:
            ctx.add(**row, pass_="fwd", rel_err=err, status=f"wrong: output rel_err {err:.2e}")
            return
        ms = time_ms(ctx, make(q, k, v, km))
        timed["fwd"].append((ms, cand, make, ctx.add(**row, pass_="fwd", ms=ms, rel_err=err, status="ok")))
        if backward and ctx.peer_search == "full":
            fwd_bwd(cand, make, row)

    for cand in peer.candidates:
        attempt(cand)
    if peer.refine is not None:
        for pass_ in ("fwd", "fwd+bwd"):
            if timed[pass_]:
                for cand in peer.refine(min(timed[pass_], key=lambda t: t[0])[1].key):
                    attempt(cand)
    if backward and ctx.peer_search == "fwd":
        for _, cand, make, row in sorted(timed["fwd"], key=lambda t: t[0]):
            base = {key: row[key] for key in ("section", "case", "impl", "config", "dtype", "blocks") if key in row}
            if fwd_bwd(cand, make, base):
                break
    best = {}
    for pass_, tries in timed.items():
        if tries:
            _, cand, make, row = min(tries, key=lambda t: t[0])
            row["status"] = "ok (fastest)"
            best[pass_] = (cand, make)
    return best


def _attn_reference(q, k, v, km, shape: S.AttnShape, g: torch.Tensor):  # noqa: ANN001, ANN202
    """fp64 output and gradients (q, k, v) for upstream gradient g."""
    from scl_kernels.reference import masked_attention_ref

    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out = masked_attention_ref(q64, k64, v64, key_mask=km, frames=shape.frames, upcast=True)
    out.backward(g.double())
    return out.detach(), [t.grad for t in (q64, k64, v64)]


def _impl_errors(make: Callable, q, k, v, km, ref_out, ref_grads, g) -> tuple[float, float, float]:  # noqa: ANN001
    """(output rel err, worst gradient rel err, output max abs err) of one implementation."""
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = make(qg, kg, vg, km)()
    out.backward(g)
    grad_err = max(rel_err(t.grad, r) for t, r in zip((qg, kg, vg), ref_grads, strict=True))
    return rel_err(out, ref_out), grad_err, max_abs(out, ref_out)


def _attn_case(ctx: Ctx, kernels: Any, shape: S.AttnShape, name: str, make: Callable, inputs: tuple, refs: tuple,
               dname: str, *, make_fb: Callable | None = None,
               configs: tuple[str | None, str | None] = (None, None)) -> None:
    """Errors, forward and forward+backward times, peak memory of one implementation on one shape. A tuned peer
    passes the fastest configuration of each pass: ``make`` forward, ``make_fb`` forward + backward, and says which
    (``configs``)."""
    q, k, v, km, g = inputs
    ref_out, ref_grads = refs
    with _tuning_recorded(ctx, kernels, "attention"):  # the first call of our kernels autotunes them
        out_err, grad_err, abs_err = _impl_errors(make_fb or make, q, k, v, km, ref_out, ref_grads, g)
    if make_fb is not None:  # the forward configuration's own output error
        out = make(q, k, v, km)()
        out_err, abs_err = rel_err(out, ref_out), max_abs(out, ref_out)
    ms_f = time_ms(ctx, make(q, k, v, km))
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    fb_call = (make_fb or make)(qg, kg, vg, km)
    ms_fb = time_ms(ctx, lambda: fb_call().backward(g), grad_to_none=[qg, kg, vg])
    mem = peak_mb(ctx, lambda: fb_call().backward(g))
    busy_f, _ = kernel_ms(ctx, make(q, k, v, km))
    # gradients cleared before each call, as time_ms does: else each backward adds into them, an elementwise
    # kernel the timed calls do not run (0.04-0.08 ms in every implementation's kernel_ms of the 2026-11-30 runs)
    busy_fb, per_fb = kernel_ms(ctx, _fwd_bwd_call(make_fb or make, q, k, v, km, g))
    graph_f = graph_ms(ctx, make(q, k, v, km))
    graph_fb = graph_ms(ctx, lambda: fb_call().backward(g), grad_to_none=[qg, kg, vg])
    extra: dict[str, Any] = {}
    if name.startswith("scl") and ctx.device.type == "cuda":
        # fp16 errors of the fused kernel too (bf16 is the timed dtype)
        h = [t.half() for t in (q, k, v)]
        ref_h, grads_h = _attn_reference(*h, km, shape, g.half())
        with _autotune_off():  # the default config's errors: an fp16 autotune would cost a lease ~10 s per case
            e_out, e_grad, _ = _impl_errors(make, *h, km, ref_h, grads_h, g.half())
        extra = {"rel_err_fp16": e_out, "grad_rel_err_fp16": e_grad}
    tf_f = shape.flops() / ms_f / 1e9
    tf_fb = shape.flops(backward=True) / ms_fb / 1e9
    ctx.add(section="attention", case=shape.name, impl=name, config=configs[0], pass_="fwd", dtype=dname, ms=ms_f,
            kernel_ms=busy_f, graph_ms=graph_f, tflops=tf_f, frac_ceiling=_frac(ctx, tflops=tf_f), rel_err=out_err,
            max_abs_err=abs_err, blocks=_blocks(ctx, shape, configs[0]), status="ok", **extra)
    ctx.add(section="attention", case=shape.name, impl=name, config=configs[1], pass_="fwd+bwd", dtype=dname,
            ms=ms_fb, kernel_ms=busy_fb, graph_ms=graph_fb, tflops=tf_fb, frac_ceiling=_frac(ctx, tflops=tf_fb),
            rel_err=grad_err, peak_mb=mem, kernels=_top_kernels(per_fb), blocks=_blocks(ctx, shape, configs[1]),
            status="ok")


def _blocks(ctx: Ctx, shape: S.AttnShape, config: str | None) -> str | None:
    """The tile counts ``_tune`` recorded for a FlexAttention configuration (None for anything else)."""
    return next((r.get("blocks") for r in ctx.rows if config and r["section"] == "attention_peers"
                 and r["case"] == shape.name and r.get("config") == config), None)


def _attn_fwd_only(ctx: Ctx, shape: S.AttnShape, name: str, make: Callable, inputs: tuple, ref_out: torch.Tensor,
                   dname: str, config: str, why: str) -> None:
    """The forward row of a peer that has no forward + backward here (FlexAttention on a CPU), and why not."""
    q, k, v, km, _ = inputs
    out = make(q, k, v, km)()
    ms = time_ms(ctx, make(q, k, v, km))
    tf = shape.flops() / ms / 1e9
    ctx.add(section="attention", case=shape.name, impl=name, config=config, pass_="fwd", dtype=dname, ms=ms,
            graph_ms=graph_ms(ctx, make(q, k, v, km)), tflops=tf, frac_ceiling=_frac(ctx, tflops=tf),
            rel_err=rel_err(out, ref_out), max_abs_err=max_abs(out, ref_out), blocks=_blocks(ctx, shape, config),
            status="ok")
    ctx.add(section="attention", case=shape.name, impl=name, pass_="fwd+bwd", dtype=dname, status=why)


# report name -> (scl_kernels module, autotuned kernel): attention's through its TunedLaunch, info_nce's directly
_AUTOTUNERS = {"fwd": ("attention", "_attn_fwd"), "bwd_dkdv": ("attention", "_attn_bwd_dkdv"),
               "bwd_dq": ("attention", "_attn_bwd_dq"), "info_nce_fwd": ("contrastive", "_fwd_tuned"),
               "info_nce_bwd": ("contrastive", "_bwd_tuned")}  # fmt: skip


def _autotuners(kernels: Any, module: str | None = None) -> dict[str, Any]:
    """Report name -> autotuner, for those ``kernels`` has (only ``module``'s if given)."""
    found = {}
    for kind, (mod, name) in _AUTOTUNERS.items():
        tuner = getattr(getattr(kernels, mod, None), name, None)
        if tuner is not None and module in (None, mod):
            found[kind] = tuner
    return found


def autotuned_configs(kernels: Any) -> dict[str, dict[str, str]]:
    """The config each autotuner chose, per autotune key (attention: length buckets, head dim, mask flags, dtypes;
    info_nce: the feature dim and dtypes): which tile, warps and stages won on this GPU, so the config lists can be
    pruned to those."""
    return {kind: {str(key): str(cfg) for key, cfg in (getattr(tuner, "cache", None) or {}).items()}
            for kind, tuner in _autotuners(kernels).items()}  # fmt: skip


@contextlib.contextmanager
def _tuning_recorded(ctx: Ctx, kernels: Any, module: str):  # noqa: ANN202
    """Every candidate's time of the autotune keys that ``module``'s autotuners benchmark inside the block, into
    ``ctx.tuning`` (other implementations' calls add no key to them, so nothing)."""
    tuners = _autotuners(kernels, module)
    before = {kind: set(getattr(tuner, "cache", None) or {}) for kind, tuner in tuners.items()}
    yield
    for kind, timings in new_autotune_timings(tuners, before).items():
        ctx.tuning.setdefault(kind, {}).update(timings)


def new_autotune_timings(tuners: dict[str, Any], before: dict[str, set]) -> dict[str, dict[str, dict[str, float]]]:
    """Every candidate config's time (ms, the autotuner's median) for the one key each autotuner benchmarked since
    ``before`` (its cache keys then): the losers' times say which configs a list can drop, and how close the
    runner-up was. Triton keeps only its latest benchmark (``configs_timings``), so a kernel that added more than
    one key, or none, is left out."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for kind, tuner in tuners.items():
        new = set(getattr(tuner, "cache", None) or {}) - before.get(kind, set())
        timings = getattr(tuner, "configs_timings", None)
        if len(new) != 1 or not timings:
            continue
        per = {str(cfg): float(t[0] if isinstance(t, (list, tuple)) else t) for cfg, t in timings.items()}
        found[kind] = {str(next(iter(new))): dict(sorted(per.items(), key=lambda kv: kv[1]))}
    return found


@contextlib.contextmanager
def _autotune_off():  # noqa: ANN202
    """SCL_KERNELS_AUTOTUNE=0 inside the block: each kernel launched there keeps its first fitting config."""
    old = os.environ.get("SCL_KERNELS_AUTOTUNE")
    os.environ["SCL_KERNELS_AUTOTUNE"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SCL_KERNELS_AUTOTUNE"]
        else:
            os.environ["SCL_KERNELS_AUTOTUNE"] = old


def run_attention(ctx: Ctx, kernels: Any, attn_shapes: list[S.AttnShape]) -> None:
    print("== masked_attention", flush=True)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    dname = str(dtype).removeprefix("torch.")
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    for shape in attn_shapes:
        if ctx.left() < ctx.step_reserve_s:
            ctx.notes.append(f"attention {shape.name} and later skipped: time budget")
            break
        try:
            q, k, v, km = _attn_inputs(shape, ctx.device, dtype, gen)
            g = torch.randn_like(q)
            ref_out, ref_grads = _attn_reference(q, k, v, km, shape, g)
        except Exception as err:  # noqa: BLE001 - report and go on
            ctx.add(section="attention", case=shape.name, impl="inputs", status=f"error: {_error_text(err)}")
            continue
        impls: dict[str, Any] = dict(_attn_impls(ctx, kernels, shape))
        eager = impls.pop("eager")
        try:
            impls.update(_peers(ctx, shape, q, km))
        except Exception as err:  # noqa: BLE001 - the peers' setup must not cost us our own rows
            impls["peers"] = f"error: {_error_text(err)}"
        impls["eager"] = eager
        for name, make in impls.items():
            if isinstance(make, str):
                ctx.add(section="attention", case=shape.name, impl=name, dtype=dname, status=make)
                continue
            try:
                if isinstance(make, _Peer):
                    _attn_tuned(ctx, kernels, shape, name, make, (q, k, v, km, g), (ref_out, ref_grads), dname)
                else:
                    _attn_case(ctx, kernels, shape, name, make, (q, k, v, km, g), (ref_out, ref_grads), dname)
            except Exception as err:  # noqa: BLE001 - one failing backend must not end the report
                ctx.add(section="attention", case=shape.name, impl=name, dtype=dname,
                        status=f"error: {_error_text(err)}")
            finally:
                _free(ctx)
        _free(ctx)


def _attn_tuned(ctx: Ctx, kernels: Any, shape: S.AttnShape, name: str, peer: _Peer, inputs: tuple, refs: tuple,
                dname: str) -> None:
    """A tuned peer's configurations tried (``_tune``), then its fastest measured like every implementation."""
    backward = not (name == "flex" and ctx.device.type != "cuda")  # FlexAttention has no backward on a CPU
    best = _tune(ctx, shape, name, peer, inputs, refs[0], dname, backward=backward)
    if "fwd" not in best:
        tried = [r for r in ctx.rows if r["section"] == "attention_peers" and r["case"] == shape.name
                 and r["impl"] == name]
        why = tried[0]["status"] if len(tried) == 1 else "no configuration ran (see attention_peers)"
        ctx.add(section="attention", case=shape.name, impl=name, dtype=dname, status=why)
        return
    (cand_f, make_f), fb = best["fwd"], best.get("fwd+bwd")
    if fb is None:
        why = ("skipped: FlexAttention has no CPU backward" if not backward
               else "error: no configuration ran forward + backward (see attention_peers)")
        _attn_fwd_only(ctx, shape, name, make_f, inputs, refs[0], dname, cand_f.config, why)
        return
    _attn_case(ctx, kernels, shape, name, make_f, inputs, refs, dname, make_fb=fb[1],
               configs=(cand_f.config, fb[0].config))


# ----------------------------------------------------------------------------------------------------------------
# 2b. host time of one attention call
# ----------------------------------------------------------------------------------------------------------------


def _host_ms(ctx: Ctx, fn: Callable[[], Any], calls: int) -> float:
    """Wall milliseconds per call of ``fn`` over ``calls`` back-to-back calls and one final sync: the host's time,
    when the kernels are shorter than it (the GPU then waits on every launch)."""
    for _ in range(10):
        fn()
    ctx.sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    ctx.sync()
    return (time.perf_counter() - t0) * 1e3 / calls


def _profile_top(fn: Callable[[], Any], calls: int, n: int = 20) -> list[dict[str, Any]]:
    """cProfile of ``calls`` calls: the ``n`` functions with the most own time, per call (us)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (primitive calls, calls, own s, cumulative s, callers)}
    rows = [{"function": f"{Path(file).name}:{line}({name})", "calls": nc / calls, "own_us": tt / calls * 1e6,
             "cum_us": ct / calls * 1e6} for (file, line, name), (_, nc, tt, ct, _) in stats.items()]
    return sorted(rows, key=lambda r: -r["own_us"])[:n]


def _fwd_bwd_call(make: Callable, q, k, v, km, g) -> Callable[[], None]:  # noqa: ANN001
    """One forward + backward of ``make``'s implementation on fresh leaves, their gradients cleared each call."""
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    call = make(qg, kg, vg, km)

    def fwd_bwd() -> None:
        for t in (qg, kg, vg):
            t.grad = None
        call().backward(g)

    return fwd_bwd


@contextlib.contextmanager
def _direct_launches_off(kernels: Any):  # noqa: ANN202
    """Attention's launchers go through ``JITFunction.run`` inside the block (see ``TunedLaunch``)."""
    launchers = list(_autotuners(kernels, "attention").values())  # TunedLaunch objects
    before = [launcher.direct for launcher in launchers]
    for launcher in launchers:
        launcher.direct = False
    try:
        yield
    finally:
        for launcher, direct in zip(launchers, before, strict=True):
            launcher.direct = direct


def run_host(ctx: Ctx, kernels: Any, shape: S.AttnShape) -> None:
    """Host time per attention call, fused against SDPA, at a shape so small (2 x 2 heads x 50 tokens) that the
    GPU waits on the host throughout; then where the fused forward + backward spends it (cProfile). Short
    sequences are bound by this time on a GPU (padded text: the fused kernels took 0.16 ms of a 0.99 ms
    forward + backward on the H200, 2026-11-30), and the CI CPU's host-path benchmark does not transfer: another
    CPU, and an offline driver's launcher in place of CUDA's. Ours is timed again with ``TunedLaunch``'s direct
    launches off."""
    print("== host", flush=True)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    dname = str(dtype).removeprefix("torch.")
    calls = 20 if ctx.smoke else 300
    q, k, v, km = _attn_inputs(shape, ctx.device, dtype, torch.Generator(device=ctx.device).manual_seed(0))
    g = torch.randn_like(q)
    impls = _attn_impls(ctx, kernels, shape)
    for name in [n for n in impls if n.startswith("scl")] + ["sdpa"]:
        make = impls[name]
        if isinstance(make, str):
            ctx.add(section="host", case=shape.name, impl=name, dtype=dname, status=make)
            continue
        fwd_bwd = _fwd_bwd_call(make, q, k, v, km, g)
        for pass_, fn in (("fwd", make(q, k, v, km)), ("fwd+bwd", fwd_bwd)):
            ctx.add(section="host", case=shape.name, impl=name, pass_=pass_, dtype=dname, ms=_host_ms(ctx, fn, calls),
                    status="ok")
        if name.startswith("scl"):
            ctx.host_profile = _profile_top(fwd_bwd, calls)
            ctx.sync()
            # the same calls with TunedLaunch's direct launches off: what launching through JITFunction.run costs
            with _direct_launches_off(kernels):
                for pass_, fn in (("fwd", make(q, k, v, km)), ("fwd+bwd", fwd_bwd)):
                    ctx.add(section="host", case=shape.name, impl=f"{name}/JITFunction.run", pass_=pass_, dtype=dname,
                            ms=_host_ms(ctx, fn, calls), status="ok")


# ----------------------------------------------------------------------------------------------------------------
# 3. info_nce
# ----------------------------------------------------------------------------------------------------------------


def _nce_case(ctx: Ctx, kernels: Any, shape: S.InfoNCEShape, name: str, fn: Callable, a: torch.Tensor,
              b: torch.Tensor, refs: tuple, dname: str) -> None:
    ref, a64, b64, t64 = refs
    ag, bg = (x.detach().clone().requires_grad_(True) for x in (a, b))
    temp = torch.tensor(0.07, device=ctx.device, requires_grad=True)
    with _tuning_recorded(ctx, kernels, "contrastive"):  # the first call of our kernels autotunes them
        loss = fn(ag, bg, temp)
        loss.backward()
    grad_err = max(rel_err(ag.grad, a64.grad), rel_err(bg.grad, b64.grad), rel_err(temp.grad, t64.grad))
    loss_err = rel_err(loss, ref)
    ms_f = time_ms(ctx, lambda: fn(a, b, 0.07))
    ms_fb = time_ms(ctx, lambda: fn(ag, bg, temp).backward(), grad_to_none=[ag, bg, temp])
    mem = peak_mb(ctx, lambda: fn(ag, bg, temp).backward())
    tf_f = shape.flops() / ms_f / 1e9
    tf_fb = shape.flops(backward=True) / ms_fb / 1e9
    ctx.add(section="info_nce", case=shape.name, impl=name, pass_="fwd", dtype=dname, ms=ms_f, tflops=tf_f,
            frac_ceiling=_frac(ctx, tflops=tf_f), rel_err=loss_err, status="ok")
    ctx.add(section="info_nce", case=shape.name, impl=name, pass_="fwd+bwd", dtype=dname, ms=ms_fb, tflops=tf_fb,
            frac_ceiling=_frac(ctx, tflops=tf_fb), rel_err=grad_err, peak_mb=mem, status="ok")


def run_info_nce(ctx: Ctx, kernels: Any, nce_shapes: list[S.InfoNCEShape]) -> None:
    print("== info_nce", flush=True)
    from scl_kernels.reference import info_nce_ref

    fused = getattr(kernels, "info_nce", None)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    dname = str(dtype).removeprefix("torch.")
    backend = "triton" if ctx.device.type == "cuda" else None
    impls: dict[str, Callable | str] = {
        ("scl_triton" if backend else "scl_auto"): (
            (lambda a, b, t: fused(a, b, t, backend=backend)) if fused is not None else "missing: scl_kernels.info_nce"
        ),
        "eager": lambda a, b, t: info_nce_ref(a, b, t),
    }
    gen = torch.Generator(device=ctx.device).manual_seed(1)
    for shape in nce_shapes:
        if ctx.left() < ctx.step_reserve_s:
            ctx.notes.append(f"info_nce {shape.name} and later skipped: time budget")
            break
        a = torch.randn(shape.n, shape.dim, device=ctx.device, dtype=dtype, generator=gen)
        b = torch.randn(shape.n, shape.dim, device=ctx.device, dtype=dtype, generator=gen)
        a64, b64 = (x.detach().double().requires_grad_(True) for x in (a, b))
        t64 = torch.tensor(0.07, dtype=torch.float64, device=ctx.device, requires_grad=True)
        ref = info_nce_ref(a64, b64, t64, upcast=True)
        ref.backward()
        for name, fn in impls.items():
            if isinstance(fn, str):
                ctx.add(section="info_nce", case=shape.name, impl=name, dtype=dname, status=fn)
                continue
            try:
                _nce_case(ctx, kernels, shape, name, fn, a, b, (ref, a64, b64, t64), dname)
            except Exception as err:  # noqa: BLE001
                ctx.add(section="info_nce", case=shape.name, impl=name, dtype=dname,
                        status=f"error: {_error_text(err)}")
            finally:
                _free(ctx)


# ----------------------------------------------------------------------------------------------------------------
# 4. masking ops (memory-bound: GB/s)
# ----------------------------------------------------------------------------------------------------------------


def _random_masking_case(ctx: Ctx, rm: Any, shape: S.MaskingShape, dtype: torch.dtype, backend: str | None,
                         fused_name: str, gen: torch.Generator) -> None:
    from scl_kernels import reference as ref

    dname = str(dtype).removeprefix("torch.")
    x = torch.randn(shape.batch, shape.frames * shape.patches, shape.dim, device=ctx.device, dtype=dtype,
                    generator=gen)
    pos = torch.randn(shape.patches, shape.dim, device=ctx.device, dtype=dtype, generator=gen)
    nbytes = shape.bytes_moved(x.element_size(), with_pos=True)
    if rm is None:
        ctx.add(section="random_masking", case=shape.name, impl=fused_name, status="missing: random_masking")
    else:
        try:
            noise = torch.rand(shape.batch, shape.patches, device=ctx.device, generator=gen)
            kept, ids = rm(x, shape.keep_ratio, frames=shape.frames, pos=pos, noise=noise, backend=backend)
            kept_ref, ids_ref = ref.random_masking_ref(x, noise, shape.keep, frames=shape.frames, pos=pos)
            exact = bool(torch.equal(ids, ids_ref)) and bool(torch.equal(kept, kept_ref))
            err = rel_err(kept, kept_ref)
            ms = time_ms(ctx, lambda: rm(x, shape.keep_ratio, frames=shape.frames, pos=pos, generator=gen,
                                         backend=backend))
            gbps = nbytes / ms / 1e6
            ctx.add(section="random_masking", case=shape.name, impl=fused_name, pass_="fwd", dtype=dname, ms=ms,
                    gbps=gbps, frac_ceiling=_frac(ctx, gbps=gbps), rel_err=err, exact=exact,
                    status="ok" if exact else "MISMATCH vs reference")
        except Exception as err:  # noqa: BLE001
            ctx.add(section="random_masking", case=shape.name, impl=fused_name, status=f"error: {_error_text(err)}")

    def eager() -> Any:
        noise = torch.rand(shape.batch, shape.patches, device=ctx.device, generator=gen)
        return ref.random_masking_ref(x, noise, shape.keep, frames=shape.frames, pos=pos)

    ms = time_ms(ctx, eager)
    ctx.add(section="random_masking", case=shape.name, impl="eager", pass_="fwd", dtype=dname, ms=ms,
            gbps=nbytes / ms / 1e6, frac_ceiling=_frac(ctx, gbps=nbytes / ms / 1e6), status="ok")


def _text_mask_cases(ctx: Ctx, kernels: Any, shape: S.TextMaskShape, backend: str | None, fused_name: str,
                     gen: torch.Generator) -> None:
    from scl_kernels import reference as ref

    mlm = getattr(kernels, "mlm_mask", None)
    sclm = getattr(kernels, "scl_text_mask", None)
    ids = torch.randint(1000, shape.vocab_size, (shape.batch, shape.length), device=ctx.device, generator=gen)
    lengths = torch.randint(3, shape.length + 1, (shape.batch,), device=ctx.device, generator=gen)
    col = torch.arange(shape.length, device=ctx.device)[None, :]
    special = (col == 0) | (col >= lengths[:, None] - 1)  # [CLS] ... [SEP] then padding
    nbytes = shape.bytes_moved()
    keys_mlm = ref.mlm_mask_keys(ids.shape, shape.vocab_size, generator=gen, device=ctx.device)
    keys_scl = torch.rand(ids.shape, device=ctx.device, generator=gen)
    vocab, mask_id = shape.vocab_size, 103
    # (name, op, fused call on given keys, reference on the same keys, timed fused call, timed eager call)
    cases: list[tuple[str, Any, Callable, Callable, Callable, Callable]] = [
        ("mlm_mask", mlm,
         lambda: mlm(ids, special, vocab_size=vocab, mask_id=mask_id, keys=keys_mlm, backend=backend),
         lambda: ref.mlm_mask_ref(ids, special, vocab_size=vocab, mask_id=mask_id, keys=keys_mlm),
         lambda: mlm(ids, special, vocab_size=vocab, mask_id=mask_id, generator=gen, backend=backend),
         lambda: ref.mlm_mask_ref(ids, special, vocab_size=vocab, mask_id=mask_id, generator=gen)),
        ("scl_text_mask", sclm,
         lambda: sclm(ids, special, mask_id=mask_id, keys=keys_scl, backend=backend),
         lambda: ref.scl_text_mask_ref(ids, special, mask_id=mask_id, keys=keys_scl),
         lambda: sclm(ids, special, mask_id=mask_id, generator=gen, backend=backend),
         lambda: ref.scl_text_mask_ref(ids, special, mask_id=mask_id, generator=gen)),
    ]
    for op_name, op, with_keys, reference, timed, eager in cases:
        if op is None:
            ctx.add(section=op_name, case=shape.name, impl=fused_name, status=f"missing: {op_name}")
        else:
            try:
                got, want = with_keys(), reference()
                got = got if isinstance(got, tuple) else (got,)
                want = want if isinstance(want, tuple) else (want,)
                exact = all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
                ms = time_ms(ctx, timed)
                gbps = nbytes / ms / 1e6
                ctx.add(section=op_name, case=shape.name, impl=fused_name, pass_="fwd", dtype="int64", ms=ms,
                        gbps=gbps, frac_ceiling=_frac(ctx, gbps=gbps), exact=exact,
                        status="ok" if exact else "MISMATCH vs reference")
            except Exception as err:  # noqa: BLE001
                ctx.add(section=op_name, case=shape.name, impl=fused_name, status=f"error: {_error_text(err)}")
        ms = time_ms(ctx, eager)
        ctx.add(section=op_name, case=shape.name, impl="eager", pass_="fwd", dtype="int64", ms=ms,
                gbps=nbytes / ms / 1e6, frac_ceiling=_frac(ctx, gbps=nbytes / ms / 1e6), status="ok")


def run_masking(ctx: Ctx, kernels: Any, mask_shapes: list[S.MaskingShape], text_shapes: list[S.TextMaskShape]
                ) -> None:
    print("== random_masking / mlm_mask / scl_text_mask", flush=True)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    backend = "triton" if ctx.device.type == "cuda" else None
    fused_name = "scl_triton" if backend else "scl_auto"
    gen = torch.Generator(device=ctx.device).manual_seed(2)
    rm = getattr(kernels, "random_masking", None)
    for shape in mask_shapes:
        if ctx.left() < ctx.step_reserve_s:
            ctx.notes.append("random_masking skipped: time budget")
            break
        _random_masking_case(ctx, rm, shape, dtype, backend, fused_name, gen)
        _free(ctx)
    for shape in text_shapes:
        if ctx.left() < ctx.step_reserve_s:
            ctx.notes.append("text masks skipped: time budget")
            break
        _text_mask_cases(ctx, kernels, shape, backend, fused_name, gen)


# ----------------------------------------------------------------------------------------------------------------
# 5. training step
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = ["case", "impl", "config", "pass_", "dtype", "ms", "kernel_ms", "busy", "graph_ms", "tflops", "gbps",
           "frac_ceiling", "samples_per_s", "mfu", "speedup", "peak_mb", "rel_err", "max_abs_err", "rel_err_fp16",
           "grad_rel_err_fp16", "exact", "loss", "loss_diff", "blocks", "kernels", "status"]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        mag = abs(v)
        if mag != 0 and (mag < 1e-3 or mag >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3g}" if mag < 100 else f"{v:.0f}"
    return str(v).replace("|", "\\|")


def environment(argv: list[str]) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.gpu_report " + " ".join(argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "missing"
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        env["gpu"] = prop.name
        env["gpu_memory_gib"] = round(prop.total_memory / 2**30, 1)
        env["sms"] = prop.multi_processor_count
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def _peer_name(row: dict[str, Any]) -> str:
    """A peer in the summary, with the configuration that won where it was tuned."""
    return f"{row['impl']} ({row['config']})" if row.get("config") else row["impl"]


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Headlines: the step speedups, and per kernel case our fwd+bwd rate against the best other implementation."""
    out = []
    for r in rows:
        if r["section"] == "step" and r.get("impl") == "fused/naive" and r.get("status") == "ok":
            out.append(f"- step {r['case']}: fused schedule {r['speedup']:.2f}x the naive one's speed, forward + "
                       f"backward (loss difference {r['loss_diff']:.2e})")
        elif r["section"] == "step" and r.get("status") == "ok" and r.get("pass_") == "step":
            mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") else ""
            busy = f", GPU busy {r['busy']:.0%}" if r.get("busy") else ""
            out.append(f"- step {r['case']} {r['impl']}: {r['ms']:.1f} ms, {r['samples_per_s']:.0f} samples/s"
                       f"{mfu}{busy}")
    for section, metric in (("attention", "tflops"), ("info_nce", "tflops"), ("random_masking", "gbps"),
                            ("mlm_mask", "gbps"), ("scl_text_mask", "gbps")):
        ok = [r for r in rows if r["section"] == section and r.get("status") == "ok" and r.get(metric)]
        want = "fwd+bwd" if section in ("attention", "info_nce") else "fwd"
        for case in dict.fromkeys(r["case"] for r in ok):
            for pass_ in dict.fromkeys(("fwd", want)):
                mine = [r for r in ok if r["case"] == case and r["impl"].startswith("scl") and r.get("pass_") == pass_]
                others = [r for r in ok if r["case"] == case and not r["impl"].startswith("scl")
                         and r.get("pass_") == pass_ and r["impl"] != "eager"]
                if not mine:
                    continue
                line = f"- {section} {case} {pass_}: ours {mine[0][metric]:.4g} {metric}"
                if others:  # ours over each peer: the goals are stated per peer (SDPA flash, masked SDPA, Flex)
                    line += "; " + ", ".join(f"{mine[0][metric] / r[metric]:.2f}x {_peer_name(r)}" for r in others)
                graphed = [r for r in others if r.get("graph_ms")]
                if mine[0].get("graph_ms") and graphed:  # the same ratios without the host (graph_ms)
                    line += "; replayed from a CUDA graph: " + ", ".join(
                        f"{r['graph_ms'] / mine[0]['graph_ms']:.2f}x {_peer_name(r)}" for r in graphed)
                out.append(line)
    return out or ["- nothing measured"]


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = ["# GPU report", ""]
    lines.append(f"- device: {env.get('gpu', 'CPU (smoke run)')}; torch {env['torch']}, triton {env['triton']}, "
                 f"CUDA {env['cuda']}; commit {env.get('commit')}")
    lines.append(f"- date: {env['date_utc']}; command: `{env['command']}`; wall time {result['wall_s']:.0f} s")
    ceil = result["ceilings"]
    if ceil:
        lines.append(f"- ceilings (measured): copy {ceil.get('copy_gbps', float('nan')):.4g} GB/s (read + write), "
                     f"matmul {ceil.get('matmul_tflops', float('nan')):.4g} TFLOP/s; `frac_ceiling` and `mfu` "
                     "are fractions of these")
    for note in result["notes"]:
        lines.append(f"- note: {note}")
    lines += ["", "## Summary", ""] + summary_lines(result["rows"]) + [""]
    sections: dict[str, list[dict[str, Any]]] = {}
    for row in result["rows"]:
        sections.setdefault(row["section"], []).append(row)
    for section, rows in sections.items():
        cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
        lines += [f"## {section}", "", "| " + " | ".join(c.rstrip("_") for c in cols) + " |",
                  "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
        lines.append("")
    tuned = {kind: picks for kind, picks in result.get("autotuned", {}).items() if picks}
    if tuned:
        lines += ["## Autotuned configs", "", "| kernel | autotune key | chosen config |", "|---|---|---|"]
        lines += [f"| {kind} | `{key}` | `{cfg}` |" for kind, picks in tuned.items() for key, cfg in picks.items()]
        lines.append("")
    top = result.get("host_profile", [])
    if top:
        lines += ["## Host profile: fused forward + backward, per call (cProfile, most own time first)", "",
                  "| function | calls | own us | cumulative us |", "|---|---|---|---|"]
        lines += [f"| `{r['function']}` | {r['calls']:.3g} | {r['own_us']:.3g} | {r['cum_us']:.3g} |" for r in top]
        lines.append("")
    timed = result.get("autotune_ms", {})
    if timed:
        lines += ["## Autotune candidates (ms, fastest first)", "", "| kernel | autotune key | config | ms |",
                  "|---|---|---|---|"]
        lines += [f"| {kind} | `{key}` | `{cfg}` | {ms:.4g} |" for kind, keys in timed.items()
                  for key, per in keys.items() for cfg, ms in per.items()]
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    """One panel per (section, pass): grouped bars of the headline metric per case, one colour per impl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in result["rows"]:
        if r.get("status") != "ok" or r["section"] == "ceilings":
            continue
        metric = next((m for m in ("samples_per_s", "tflops", "gbps") if r.get(m) is not None), None)
        if metric is None or (r["section"] == "step" and metric != "samples_per_s"):
            continue
        panels.setdefault((r["section"], r.get("pass_", ""), metric), []).append(r)
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, ((section, pass_, metric), rows) in zip(axes[:, 0], panels.items(), strict=True):
        cases = list(dict.fromkeys(r["case"] for r in rows))
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            vals = [next((r[metric] for r in rows if r["case"] == c and r["impl"] == impl), 0.0) for c in cases]
            ax.bar([j + i * width for j in range(len(cases))], vals, width, label=impl)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, fontsize=7, rotation=15)
        ax.set_ylabel(metric.replace("_", " "), fontsize=8)
        ax.set_title(f"{section} {pass_}".strip(), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = to_markdown(result)
    (out / "report.md").write_text(md + "\n")
    made = plot(result, out / "report.png")
    print(md, flush=True)
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}" + (f", {out / 'report.png'}" if made else ""),
          flush=True)


def crossover_cases(rows: list[dict[str, Any]], shapes: list[S.AttnShape]) -> list[Any]:
    """The attention section's cases where both ``scl_triton`` and ``sdpa`` ran, as ``backend="auto"``'s table
    entries (``scl_kernels.attention.auto.Measured``): shape, mask kind, pass, both wall times."""
    from scl_kernels.attention import auto

    ms = {(r["case"], r["impl"], r.get("pass_")): r["ms"] for r in rows
          if r.get("section") == "attention" and r.get("status") == "ok" and r.get("ms") is not None}  # fmt: skip
    cases = []
    for s in shapes:
        mask = "+".join(m for m, on in (("key", s.key_mask), ("frames", s.frames)) if on) or "none"
        for grad, pass_ in ((False, "fwd"), (True, "fwd+bwd")):
            ours, sdpa = ms.get((s.name, "scl_triton", pass_)), ms.get((s.name, "sdpa", pass_))
            if ours is not None and sdpa is not None:
                cases.append(auto.Measured(s.name, mask, grad, s.batch * s.heads, s.lq, s.lk, s.head_dim, ours, sdpa))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

SECTIONS = ("ceilings", "attention", "host", "info_nce", "masking", "step")


def smoke_shapes() -> dict[str, list]:
    """Tiny versions of every case, for --cpu-smoke (seconds on 2 cores)."""
    return {
        "attn": [replace(S.ATTN_CPU[0], batch=2),  # frames and key padding together: every peer's hardest mask
                 replace(S.ATTN_CPU[2], name="video_frames4_pad", batch=2, key_mask=True)],
        "nce": [S.InfoNCEShape("smoke_64x32", n=64, dim=32)],
        "mask": [replace(S.MASKING_CPU[1], batch=2, dim=32)],
        "text": [replace(S.TEXTMASK_CPU[0], batch=8)],
        "step": [S.StepShape("tiny_b2", preset="demo", batch=2, text_len=16, overrides=(
            ("vision.image_size", 48), ("vision.layers", 1), ("text.layers", 1), ("fusion.layers", 1)))],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_report", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu", help="folder for report.json/.md/.png")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="stop starting new cases after this many seconds (the report must fit in 8 minutes)")
    parser.add_argument("--step-reserve-s", type=float, default=180.0,
                        help="seconds kept for the training-step section at the end")
    parser.add_argument("--step-reps", type=int, default=5, help="timed steps per mode (median)")
    parser.add_argument("--step-modes", default="eager,compiled,graphed",
                        help="comma-separated subset of eager,compiled,graphed (the training step's modes)")
    parser.add_argument("--quick", action="store_true", help="first three attention shapes only")
    parser.add_argument("--peer-search", choices=("full", "fwd"), default="full",
                        help="tuned peers (SDPA backends, FlexAttention configurations): time each forward and "
                             "forward+backward (full), or each forward and only the fastest forward+backward (fwd: "
                             "about half the FlexAttention compiles)")
    parser.add_argument("--flex-experimental", action="store_true",
                        help="also try FlexAttention's fastest configuration with USE_TMA (experimental in Flex) and "
                             "compiled with max-autotune (minutes of compiling)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every section on tiny CPU shapes (tests the script where no GPU exists)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(NO_GPU_MESSAGE, flush=True)
        return 0
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1" and not args.cpu_smoke:
        print("gpu_report: TRITON_INTERPRET=1 is set; unset it to time compiled kernels", file=sys.stderr)
        return 2
    smoke = args.cpu_smoke
    # the smoke run checks the script, not the machine: one thread keeps it fast on a busy 2-core box, where two
    # OpenMP threads competing with other processes were measured 15x slower
    with torch_threads(1) if smoke else contextlib.nullcontext():
        return _run(args, sections, smoke, argv)


def _run(args: argparse.Namespace, sections: list[str], smoke: bool, argv: list[str]) -> int:
    device = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    start = time.monotonic()
    ctx = Ctx(device=device, smoke=smoke, deadline=start + args.budget_s,
              step_reserve_s=0.0 if smoke or "step" not in sections else args.step_reserve_s,
              peer_search=args.peer_search, flex_experimental=args.flex_experimental)
    if smoke:
        sh = smoke_shapes()
    else:
        sh = {"attn": S.ATTN_GPU[:3] if args.quick else S.ATTN_GPU, "nce": S.INFONCE_GPU, "mask": S.MASKING_GPU,
              "text": S.TEXTMASK_GPU, "step": S.STEP_GPU}
    torch.backends.cuda.matmul.allow_tf32 = True
    if not smoke:
        peers.raise_recompile_limits()
    env = environment(argv)
    print(f"gpu_report on {env.get('gpu', 'CPU (smoke)')}: torch {env['torch']}, triton {env['triton']}", flush=True)
    try:
        kernels = import_kernels()
    except Exception as err:  # noqa: BLE001
        kernels = None
        ctx.notes.append(f"scl_kernels could not be imported: {_error_text(err)}")
    runners: dict[str, Callable[[], None]] = {
        "ceilings": lambda: run_ceilings(ctx),
        "attention": lambda: run_attention(ctx, kernels, sh["attn"]),
        "host": lambda: run_host(ctx, kernels, S.ATTN_HOST),
        "info_nce": lambda: run_info_nce(ctx, kernels, sh["nce"]),
        "masking": lambda: run_masking(ctx, kernels, sh["mask"], sh["text"]),
        "step": lambda: run_step(ctx, sh["step"], reps=1 if smoke else args.step_reps,
                                 modes=("eager",) if smoke else tuple(args.step_modes.split(","))),
    }
    section_s: dict[str, float] = {}
    out = Path(args.out)

    def snapshot(notes: list[str]) -> dict[str, Any]:
        return {"environment": env, "ceilings": ctx.ceilings, "notes": notes, "rows": ctx.rows,
                "autotuned": autotuned_configs(kernels), "autotune_ms": ctx.tuning,
                "host_profile": ctx.host_profile, "section_s": section_s, "wall_s": time.monotonic() - start}

    for name in SECTIONS:
        if name not in sections:
            continue
        if kernels is None and name in ("attention", "host", "info_nce", "masking"):
            ctx.add(section=name, case="-", impl="-", status="missing: scl_kernels")
            continue
        t0 = time.monotonic()
        try:
            runners[name]()
        except Exception as err:  # noqa: BLE001 - keep what was measured, say what broke
            traceback.print_exc()
            ctx.add(section=name, case="-", impl="-", status=f"error: {_error_text(err)}")
        section_s[name] = time.monotonic() - t0
        print(f"-- {name}: {section_s[name]:.1f} s", flush=True)
        # what is measured so far, after every section: a run cut short by the lease keeps its finished sections
        out.mkdir(parents=True, exist_ok=True)
        partial = snapshot([*ctx.notes, f"partial: written after the {name} section"])
        (out / "report.json").write_text(json.dumps(partial, indent=1, default=str) + "\n")
    write(snapshot(ctx.notes), out)
    cases = crossover_cases(ctx.rows, sh["attn"])
    if cases:
        from scl_kernels.attention import auto

        auto.dump(cases, out / "attention_crossover.json", device=env.get("gpu", "?"), dtype="bfloat16",
                  source=f"{env['command']} ({env['date_utc']}, commit {env.get('commit')})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
