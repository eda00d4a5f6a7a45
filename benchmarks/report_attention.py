"""The GPU report's attention sections: ``masked_attention`` against its tuned peers (2), and the host time of one
call (2b)."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import attention_peers as peers
from benchmarks import shapes as S
from benchmarks.report_core import (
    Ctx,
    _error_text,
    _frac,
    _free,
    _top_kernels,
    graph_ms,
    kernel_ms,
    max_abs,
    peak_mb,
    rel_err,
    time_ms,
)

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
