"""Fused attention dropout (FA2's scheme), graph-safe: the keep mask is drawn by Philox inside the kernels, tile by
tile, from a (seed, offset) pair and the element's position, and regenerated in both backward passes, never stored.

The pair is a device tensor that the kernels load from a pointer (``philox_state``), never a host integer. PyTorch's
own SDPA dropout does the same: under CUDA-graph capture its Philox seed and offset are read through pointers that
the graph's generator state refills before each replay (``at::cuda::philox::unpack``; ``torch.cuda.graphs``
registers the generator). Python cannot reach those pointers, so the pair is drawn by ``torch.randint`` on q's device
from the device's default generator: a CUDA RNG op that is itself graph-safe, so a captured step draws a new pair,
hence a new mask, on every replay, and eager calls need no host sync (a host seed would cost a ``.item()`` or bake
one mask into the graph). On CPU tensors (the interpreter) the pair comes from torch's default CPU generator, so
``torch.manual_seed`` reproduces a mask.

``_dropout_keep`` is the one draw every kernel makes; ``dropout_keep_mask`` writes the same mask out, for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import cdiv

_RNG_HIGH = 2**31 - 1  # both words of the pair: a Philox key and a 32-bit counter word


def philox_state(device: torch.device) -> torch.Tensor:
    """(2,) int64 on ``device``: the Philox (seed, offset) of one dropout call, drawn from ``device``'s default
    generator without leaving the device (see the module docstring)."""
    return torch.randint(0, _RNG_HIGH, (2,), dtype=torch.int64, device=device)


@triton.jit
def _load_rng(RNG_ptr, HAS_DROPOUT: tl.constexpr):
    """(seed, offset) of this call, loaded from the device (0, 0 without dropout: the pointer is a placeholder
    that is never read)."""
    if HAS_DROPOUT:
        seed = tl.load(RNG_ptr)
        offset = tl.load(RNG_ptr + 1)
    else:
        seed = 0
        offset = 0
    return seed, offset


@triton.jit
def _dropout_keep(seed, offset, bh, offs_q, offs_k, Lk, dropout_p, KEY_MAJOR: tl.constexpr):
    """Which probabilities of a tile survive dropout. Philox keyed by ``seed`` at the counter (q * Lk + k, b * H + h,
    offset, 0), so the forward, both backward passes and ``dropout_keep_mask`` draw the very same mask without
    storing it. The flattened position wraps at 2**32 (query, key) pairs per head (65536 x 65536), past which masks
    would repeat. One word per coordinate would lift that, but the sm_90 forward (bf16, D=64, key mask) then took
    250 registers a thread against 178 (compiled both ways, 2026-12)."""
    if KEY_MAJOR:
        flat = offs_q[None, :] * Lk + offs_k[:, None]
    else:
        flat = offs_q[:, None] * Lk + offs_k[None, :]
    flat = flat.to(tl.int32)
    zero = flat * 0
    r, _, _, _ = tl.random.philox(seed, flat, zero + bh.to(tl.int32), zero + offset.to(tl.int32), zero)
    return tl.random.uint_to_uniform_float(r) >= dropout_p


@triton.jit
def _dropout_mask_kernel(
    Z_ptr,  # (B, H, Lq, Lk) u8, contiguous
    RNG_ptr,  # (2,) i64: Philox seed, offset
    dropout_p, H, Lq, Lk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Write the keep mask the attention kernels draw for (rng, dropout_p): for tests and debugging."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    seed, offset = _load_rng(RNG_ptr, True)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(seed, offset, bh, offs_m, offs_n, Lk, dropout_p, False)
    ok = (offs_m[:, None] < Lq) & (offs_n[None, :] < Lk)
    tl.store(Z_ptr + bh * Lq * Lk + offs_m[:, None] * Lk + offs_n[None, :], keep.to(tl.uint8), mask=ok)


def dropout_keep_mask(rng: torch.Tensor, dropout_p: float, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """(B, H, Lq, Lk) bool on ``rng``'s device: which attention probabilities the triton kernels keep for the Philox
    pair ``rng`` ((2,) int64, as ``philox_state`` draws it) and ``dropout_p``, H being the query heads (CPU tensors
    need ``TRITON_INTERPRET=1``)."""
    if rng.shape != (2,) or rng.dtype != torch.int64:
        raise ValueError(f"rng must be a (2,) int64 tensor (seed, offset), got {rng.dtype} {tuple(rng.shape)}")
    b, h, lq, lk = shape
    z = torch.empty(shape, dtype=torch.uint8, device=rng.device)
    _dropout_mask_kernel[(cdiv(lq, 64), cdiv(lk, 64), b * h)](z, rng, dropout_p, h, lq, lk, 64, 64)
    return z.bool()
