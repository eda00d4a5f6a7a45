"""Shared pieces of the GPU report's sections: the run context, timers, error measures and formatting helpers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

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



def _frac(ctx: Ctx, tflops: float | None = None, gbps: float | None = None) -> float | None:
    if tflops is not None and ctx.ceilings.get("matmul_tflops"):
        return tflops / ctx.ceilings["matmul_tflops"]
    if gbps is not None and ctx.ceilings.get("copy_gbps"):
        return gbps / ctx.ceilings["copy_gbps"]
    return None
