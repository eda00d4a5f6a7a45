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
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import attention_peers as peers
from benchmarks import shapes as S
from benchmarks import torch_threads
from benchmarks.report_attention import (  # noqa: F401 (re-exported: tests and tools use them from here)
    _attn_inputs,
    _autotune_off,
    _tuning_recorded,
    autotuned_configs,
    new_autotune_timings,
    run_attention,
    run_host,
)
from benchmarks.report_core import (  # noqa: F401 (re-exported: report_step uses them from here)
    Ctx,
    _error_text,
    _events_ms,
    _frac,
    _free,
    _top_kernels,
    kernel_ms,
    peak_mb,
    rel_err,
    time_ms,
)
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
