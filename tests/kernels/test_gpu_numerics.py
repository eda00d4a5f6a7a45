"""The compiled Triton kernels on a CUDA GPU against the fp64 reference, bf16 included (bf16 is wrong under the
CPU interpreter, so this is where it is checked). Skipped without a GPU, like every ``cuda`` test.

The attention cases are the interpreter suite's (every mask kind, odd lengths, D 8..128, cross-attention,
empty rows), each in its own dtype and again in bf16, plus the shapes the model runs (4-frame 224 px video,
padded text), and info_nce / cosine_recovery. Ordered most valuable first, as a GPU lease may stop the run part-way.
Run with ``SCL_KERNELS_AUTOTUNE=0`` to compile one config per shape instead of autotuning each.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import pytest
import torch

import scl_kernels
from scl_kernels.attention import launch as attn_launch
from scl_kernels.reference import cosine_recovery_ref, info_nce_ref, masked_attention_ref
from tests.kernels.test_attention import CASES, GRAD_SLACK, Case, _inputs, _masks, _run
from tests.utils import ATOL, REL_TOL, assert_close, poison_

pytestmark = pytest.mark.cuda
BF16 = torch.bfloat16
MODEL_CASES = [
    Case(2, 3, 788, 788, 64, BF16, frames=4),  # 4-frame 224 px video
    Case(2, 3, 788, 788, 64, torch.float16, key_mask=True, frames=4),
    Case(3, 2, 50, 50, 64, BF16, key_mask=True),  # padded text
    Case(2, 2, 50, 325, 64, BF16, key_mask=True),  # co-attention text -> image
]
# most valuable first (a GPU lease may stop the run part-way; pytest runs them in this order): the model's shapes,
# then the interpreter suite in its own dtypes, then its bf16 copies
GPU_CASES = MODEL_CASES + CASES + [dataclasses.replace(c, dtype=BF16) for c in CASES if c.dtype != BF16]


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the launchers allocate starts as NaN."""
    new_output = attn_launch._new_output
    monkeypatch.setattr(attn_launch, "_new_output", lambda *a, **k: poison_(new_output(*a, **k)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16], ids=str)
@pytest.mark.parametrize("n,d", [(1, 64), (37, 256), (4099, 512)])
def test_contrastive_on_gpu(dtype: torch.dtype, n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + d)
    a0, b0 = (torch.randn(n, d, generator=gen).to(dtype).cuda() for _ in range(2))
    temp = torch.tensor(0.05, device="cuda")
    for name, fused, ref in (("info_nce", lambda a, b: scl_kernels.info_nce(a, b, temp, backend="triton"),
                              lambda a, b: info_nce_ref(a, b, temp.double(), upcast=True)),
                             ("cosine_recovery", lambda a, b: scl_kernels.cosine_recovery(a, b, detach_b=False,
                                                                                          backend="triton"),
                              lambda a, b: cosine_recovery_ref(a, b, detach_b=False, upcast=True))):
        a64, b64 = (t.double().requires_grad_(True) for t in (a0, b0))
        want = ref(a64, b64)
        want_da, want_db = torch.autograd.grad(want, (a64, b64))
        # the upstream gradient a loss scaler would pick (a power of two: exact): the largest input gradient near 1.
        # Unscaled, cosine_recovery's gradients at n=4099 are at most 2.5e-6, most of them under fp16's normal range
        # (6.1e-5), and fp16 storage alone lost 3.6% of their norm (GPU run, 2026-11-30)
        largest = max(want_da.abs().max().item(), want_db.abs().max().item())  # 0 for info_nce at n=1: one pair
        scale = 2.0 ** -math.ceil(math.log2(largest)) if largest > 0 else 1.0
        a, b = (t.clone().requires_grad_(True) for t in (a0, b0))
        loss = fused(a, b)
        loss.backward(torch.tensor(scale, dtype=loss.dtype, device=loss.device))
        rtol = REL_TOL[dtype]
        assert_close(loss.detach(), want.detach(), rtol=rtol, name=f"{name} loss")
        assert_close(a.grad, want_da * scale, rtol=GRAD_SLACK * rtol, atol=ATOL[dtype], name=f"{name} d/da")
        assert_close(b.grad, want_db * scale, rtol=GRAD_SLACK * rtol, atol=ATOL[dtype], name=f"{name} d/db")


@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_attention_on_gpu(case: Case, poisoned: None) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    q, k, v = (t.cuda() for t in _inputs(case, gen))
    key_mask, attn_mask = (m.cuda() if m is not None else None for m in _masks(case, gen))
    if case in MODEL_CASES and key_mask is not None:  # text padding: a suffix of each row, never empty
        lengths = torch.randint(1, case.lk + 1, (case.b,), generator=gen).cuda()
        key_mask = torch.arange(case.lk, device="cuda")[None, :] < lengths[:, None]
    masks = {"key_mask": key_mask, "frames": case.frames, "attn_mask": attn_mask, "is_causal": case.causal}
    g = torch.randn(case.b, case.h, case.lq, case.d, generator=gen).to(case.dtype).cuda()
    out, grads = _run(scl_kernels.masked_attention, q, k, v, g, backend="triton", **masks)
    ref, ref_grads = _run(masked_attention_ref, q.double(), k.double(), v.double(), g.double(), **masks)
    base, base_grads = _run(masked_attention_ref, q, k, v, g, **masks)
    rtol, atol = REL_TOL[case.dtype], ATOL[case.dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, baseline=base, name="out")
    for name, got, want, bl in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads, strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, baseline=bl, name=name)
    # the same call again launches the compiled kernels that TunedLaunch remembered from the first, past
    # JITFunction.run (scl_kernels._launch.DIRECT_LAUNCHES): bit for bit the same results (no atomics)
    again, grads_again = _run(scl_kernels.masked_attention, q, k, v, g, backend="triton", **masks)
    for name, got, first in zip(("out", "dq", "dk", "dv"), (again, *grads_again), (out, *grads), strict=True):
        assert torch.equal(got, first), f"{name}: the second (direct) launch differs from the first"
