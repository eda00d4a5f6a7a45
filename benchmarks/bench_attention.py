"""masked_attention forward and forward+backward against PyTorch SDPA, FlexAttention, xformers and flash-attn.

Every case checks its numerics against the float64 reference before timing, so a fast wrong kernel fails; every
peer's mask is checked equal to the reference mask when it is built (``benchmarks/attention_peers.py``), so a
fast peer on the wrong mask fails too.

GPU cases (``shapes.ATTN_GPU``, bf16, skipped with the reason on a machine without CUDA), each peer written as its
authors would write our masks (``attention_peers``):
- ``triton``: ``scl_kernels.masked_attention`` with the mask generated in the kernel (key mask, frame blocks);
- ``sdpa``: ``F.scaled_dot_product_attention`` as it dispatches by default, given the dense boolean mask (no mask
  when the shape has none, so PyTorch picks its FlashAttention-2 kernel: the ceiling a masked kernel should
  approach);
- ``sdpa_flash``: SDPA forced onto its flash backend with no mask at all (only for unmasked shapes);
- ``sdpa_best[<backend>-<form>]``: SDPA forced onto cuDNN, flash or memory-efficient, with the mask as bool or as an
  aligned additive float mask (a backend that refuses the case skips with its reason);
- ``flex[<tiles>]``: compiled FlexAttention with the arithmetic ``mask_mod`` and a compiled ``BlockMask`` of those
  tiles (``attention_peers.flex_configs``; the GPU report also tries kernel options on the fastest);
- ``xformers`` (its ``BlockDiagonalMask`` over packed rows) and ``flash_attn`` (varlen key padding): when
  installed, else skipped with the reason.
TFLOP/s go into each benchmark's ``extra_info`` (``shapes.AttnShape.flops``: visible pairs only, forward
4 * B * H * pairs * D, forward+backward 3.5x that).

CPU cases (``shapes.ATTN_CPU``, fp32): the reference (``backend="reference"``, what the CPU default runs) against
SDPA on the same inputs. The Triton kernels are not timed on CPU: the interpreter would time NumPy.

Host path (``-k host_path``, CPU): the triton backend's host time per call at ``shapes.ATTN_HOST`` with the kernels
compiled for sm_90 but not run (``scl_kernels._offline``), through each launch path: what bounds short sequences
on a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import scl_kernels
from benchmarks import attention_peers as peers
from benchmarks import shapes as S
from benchmarks import synchronized
from scl_kernels.reference import attention_mask_ref, masked_attention_ref

RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}  # out vs fp64, relative norm
GRAD_RTOL = {k: 3 * v for k, v in RTOL.items()}
GPU_DTYPE = torch.bfloat16


def _inputs(shape: S.AttnShape, dtype: torch.dtype, device: str):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(shape.batch, shape.heads, shape.lq, shape.head_dim, generator=g)
    k = torch.randn(shape.batch, shape.heads, shape.lk, shape.head_dim, generator=g)
    v = torch.randn(shape.batch, shape.heads, shape.lk, shape.head_dim, generator=g)
    km = None
    if shape.key_mask:  # a random tail of each row is padding (about a quarter of the keys), at least one real key
        lengths = torch.randint(max(1, shape.lk // 2), shape.lk + 1, (shape.batch,), generator=g)
        km = torch.arange(shape.lk)[None, :] < lengths[:, None]
    dev = torch.device(device)
    q, k, v = (t.to(dev, dtype) for t in (q, k, v))
    return q, k, v, (km.to(dev) if km is not None else None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(fn: Callable[..., torch.Tensor], q, k, v, km, shape: S.AttnShape, backward: bool) -> None:  # noqa: ANN001
    """Output (and with ``backward`` dq/dk/dv) of ``fn`` against float64 autograd through the reference."""
    q64, k64, v64 = (t.detach().double().requires_grad_(backward) for t in (q, k, v))
    ref = masked_attention_ref(q64, k64, v64, key_mask=km, frames=shape.frames)
    qq, kk, vv = (t.detach().requires_grad_(backward) for t in (q, k, v))
    out = fn(qq, kk, vv)
    err = _rel(out, ref)
    assert err < RTOL[q.dtype], f"out rel err {err:.2e} (limit {RTOL[q.dtype]:.0e})"
    if backward:
        g = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g)
        grads = torch.autograd.grad(out, (qq, kk, vv), g.to(out.dtype))
        for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
            e = _rel(got, want)
            assert e < GRAD_RTOL[q.dtype], f"{name} rel err {e:.2e} (limit {GRAD_RTOL[q.dtype]:.0e})"


def _timed(fn: Callable[..., torch.Tensor], q, k, v, backward: bool, device: str) -> Callable[[], object]:  # noqa: ANN001
    if not backward:
        def call() -> object:
            with torch.no_grad():
                return fn(q, k, v)
    else:
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        grad = torch.randn(q.shape, device=q.device, dtype=q.dtype)

        def call() -> object:
            out = fn(qq, kk, vv)
            return torch.autograd.grad(out, (qq, kk, vv), grad)
    return synchronized(call, device)


def _impl(name: str, shape: S.AttnShape, km: torch.Tensor | None, device: str,
          dtype: torch.dtype = GPU_DTYPE) -> Callable[..., torch.Tensor]:
    """The attention function ``name`` for ``shape``, or pytest.skip with the reason."""
    mask = attention_mask_ref(shape.batch, shape.lq, shape.lk, key_mask=km, frames=shape.frames,
                              device=torch.device(device))  # fmt: skip
    if name == "triton":
        return lambda q, k, v: scl_kernels.masked_attention(q, k, v, key_mask=km, frames=shape.frames,
                                                            backend="triton")  # fmt: skip
    if name == "reference":
        return lambda q, k, v: scl_kernels.masked_attention(q, k, v, key_mask=km, frames=shape.frames,
                                                            backend="reference")  # fmt: skip
    if name == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if name == "sdpa_flash":
        if mask is not None:
            pytest.skip("SDPA's flash backend takes no mask: unmasked shapes only")
        return peers.sdpa_call("flash", None)
    if name.startswith("sdpa_best["):
        (cand,) = [c for c in peers.sdpa_candidates(mask, dtype) if name == f"sdpa_best[{c.key}]"]
        return _refusals_skip(cand)
    if name.startswith("flex["):
        flex = peers.FlexPeer(batch=shape.batch, lq=shape.lq, lk=shape.lk, frames=shape.frames, key_mask=km,
                              reference=mask, device=torch.device(device), compile=True)
        (config,) = [c for c in peers.flex_configs(frames=shape.frames, lk=shape.lk,
                                                   key_mask=shape.key_mask) if name == f"flex[{c.name}]"]
        return flex.candidate(config).build()[0]  # the BlockMask built and checked here, once
    if name == "xformers":
        cand = peers.xformers_candidate(batch=shape.batch, lq=shape.lq, lk=shape.lk, frames=shape.frames,
                                        key_mask=km, reference=mask, device=torch.device(device))
        if isinstance(cand, str):
            pytest.skip(cand)
        return _refusals_skip(cand)
    if name == "flash_attn":
        if importlib.util.find_spec("flash_attn") is None:
            pytest.skip("flash-attn not installed (pip install flash-attn)")
        if shape.frames is not None:
            pytest.skip("flash-attn has no frame-block mask")
        from scl_fast.model.attention import attention

        return lambda q, k, v: attention(q, k, v, backend="flash_attn", key_mask=km)
    raise ValueError(f"unknown implementation {name!r}")


def _refusals_skip(cand: peers.Candidate) -> Callable[..., torch.Tensor]:
    """The candidate's call; the first call's refusal of the case (SDPA: no kernel left for a forced backend,
    xformers: no operator) skips with the reason instead of failing: a missing kernel is not a wrong one."""
    call, _ = cand.build()
    tried = False

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        nonlocal tried
        if tried:
            return call(q, k, v)
        tried = True
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return call(q, k, v)
            except (RuntimeError, NotImplementedError) as err:
                if not re.search(r"No available kernel|No viable backend|No operator found", str(err)):
                    raise
                pytest.skip(f"not accepted: {cand.refusal(err, caught)}")

    return fn


# ------------------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------------------

def _gpu_impls(shape: S.AttnShape) -> list[str]:
    """Every implementation of a shape: ours, SDPA's default, each SDPA backend and mask form, each FlexAttention
    tile configuration, xformers, flash-attn."""
    masked = shape.frames is not None or shape.key_mask
    flex = peers.flex_configs(frames=shape.frames, lk=shape.lk, key_mask=shape.key_mask)
    return ["triton", "sdpa", "sdpa_flash", *(f"sdpa_best[{key}]" for key in peers.sdpa_keys(masked)),
            *(f"flex[{c.name}]" for c in flex), "xformers", "flash_attn"]


GPU_CASES = [pytest.param(shape, impl, id=f"{shape.name}-{impl}") for shape in S.ATTN_GPU for impl in _gpu_impls(shape)]


@pytest.mark.gpu
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize(("shape", "impl"), GPU_CASES)
def test_attention_gpu(benchmark, shape: S.AttnShape, impl: str, backward: bool) -> None:  # noqa: ANN001
    peers.raise_recompile_limits()  # every FlexAttention configuration compiled, none left to the eager path
    q, k, v, km = _inputs(shape, GPU_DTYPE, "cuda")
    fn = _impl(impl, shape, km, "cuda")
    _check(fn, q, k, v, km, shape, backward)
    benchmark.group = f"attention {shape.name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark.extra_info.update(device=torch.cuda.get_device_name(0), dtype=str(GPU_DTYPE),
                                flops=shape.flops(backward=backward))  # fmt: skip
    benchmark.pedantic(_timed(fn, q, k, v, backward, "cuda"), rounds=20, warmup_rounds=3)
    benchmark.extra_info["tflops"] = shape.flops(backward=backward) / benchmark.stats.stats.median / 1e12


# ------------------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("shape", S.ATTN_CPU[:2], ids=lambda s: s.name)
def test_attention_cpu(benchmark, shape: S.AttnShape, impl: str, backward: bool) -> None:  # noqa: ANN001
    q, k, v, km = _inputs(shape, torch.float32, "cpu")
    fn = _impl(impl, shape, km, "cpu", torch.float32)
    _check(fn, q, k, v, km, shape, backward)
    benchmark.group = f"attention-cpu {shape.name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark(_timed(fn, q, k, v, backward, "cpu"))


# ------------------------------------------------------------------------------------------------------------
# Host path
# ------------------------------------------------------------------------------------------------------------

_LAUNCHERS = ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv")
# how the launches go: "stubbed" replaces them with no-ops (the Python of masked_attention and autograd alone); the
# others run Triton's launch path under the offline driver (real compilation for sm_90, no GPU call): through the
# autotuner on every call, through TunedLaunch and JITFunction.run, and TunedLaunch's direct launches (the default)
_HOST_PATHS = ("stubbed", "Autotuner.run", "JITFunction.run", "direct")


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` counts the launch and runs nothing."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid: object) -> Callable[..., None]:
        def launch(*args: object, **kwargs: object) -> None:
            self.launches += 1

        return launch


def _host_launches(path: str, monkeypatch: pytest.MonkeyPatch, stack: contextlib.ExitStack) -> Callable[[], int]:
    """Route the attention launches as ``path`` says; returns a counter of the launches so far."""
    from triton.runtime.jit import JITFunction

    from scl_kernels import _dispatch
    from scl_kernels._offline import offline_driver
    from scl_kernels.attention import forward as attn_forward
    from scl_kernels.attention import launch as attn_mod

    monkeypatch.setattr(_dispatch, "interpreting", lambda: True)  # the triton backend on CPU tensors
    if path == "stubbed":
        stubs = [_NoLaunch() for _ in _LAUNCHERS]
        for name, stub in zip(_LAUNCHERS, stubs, strict=True):
            monkeypatch.setattr(attn_mod, name, stub)
        return lambda: sum(stub.launches for stub in stubs)
    if not isinstance(attn_forward._attn_fwd_kernel, JITFunction):
        pytest.skip("TRITON_INTERPRET=1 replaces Triton's launch path: run the benchmarks in a process of their own")
    monkeypatch.setenv("SCL_KERNELS_AUTOTUNE", "0")  # one config per kernel: nothing to time without a GPU
    if "TRITON_DEFAULT_FP_FUSION" not in os.environ:  # triton 3.9 warns when unset; 1 is its current default
        monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    for name in _LAUNCHERS:
        launcher = getattr(attn_mod, name)
        if path == "Autotuner.run":
            monkeypatch.setattr(attn_mod, name, launcher.tuner)
        else:
            monkeypatch.setattr(launcher, "direct", path == "direct")
    offline = stack.enter_context(offline_driver(record=False))
    return lambda: offline.n_launches


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("path", _HOST_PATHS)
def test_attention_host_path(benchmark, monkeypatch: pytest.MonkeyPatch, path: str, backward: bool) -> None:  # noqa: ANN001
    """The triton backend's host time per call, CPU tensors, at the text encoder's shape scaled down (B2 H2 L50
    D64 fp16, key mask) where a GPU's kernels are shorter than the host's work: what decides short sequences'
    speed there (an H200 took 0.79 ms of host time for this forward + backward on 2026-11-30, SDPA 0.26 ms).
    ``path`` routes the launches (``_HOST_PATHS``). The check: a call launched 1 kernel (forward) or 3
    (forward + backward), and the direct path did not enter ``JITFunction.run``."""
    from scl_kernels._offline import counting_jit_runs

    with contextlib.ExitStack() as stack:
        launches = _host_launches(path, monkeypatch, stack)
        shape = S.ATTN_HOST
        q, k, v, km = _inputs(shape, torch.float16, "cpu")
        call = _timed(_impl("triton", shape, km, "cpu"), q, k, v, backward, "cpu")
        with counting_jit_runs() as runs:  # the count checked, the timed calls run the plain JITFunction.run
            for _ in range(3):  # compile, tune, remember
                call()
            before, runs_before = launches(), runs[0]
            call()
            assert launches() - before == (3 if backward else 1)
            if path == "direct":
                assert runs[0] == runs_before
        benchmark.group = f"attention host path {'fwd+bwd' if backward else 'fwd'} (CPU, no kernel runs)"
        benchmark(call)
