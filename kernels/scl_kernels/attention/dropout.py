"""Fused attention dropout (FA2's scheme): the keep mask is drawn by Philox inside the kernels, tile by tile, from
a seed and the (query, key) position, and regenerated in both backward passes, never stored.

``_dropout_keep`` is the one draw every kernel makes; ``dropout_keep_mask`` writes the same mask out, for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import cdiv


@triton.jit
def _dropout_keep(seed, bh, offs_q, offs_k, Lk, dropout_p, KEY_MAJOR: tl.constexpr):
    """Which probabilities of a tile survive dropout: Philox on (seed, (b, h)) at counter q * Lk + k, so the
    forward and both backward passes (and ``dropout_keep_mask``) draw the very same mask without storing it."""
    if KEY_MAJOR:
        offset = offs_q[None, :] * Lk + offs_k[:, None]
    else:
        offset = offs_q[:, None] * Lk + offs_k[None, :]
    offset = offset.to(tl.int32)
    stream = offset * 0 + bh.to(tl.int32)  # one Philox stream per (batch, head)
    r, _, _, _ = tl.random.philox(seed, offset, stream, offset * 0, offset * 0)
    return tl.random.uint_to_uniform_float(r) >= dropout_p


@triton.jit
def _dropout_mask_kernel(
    Z_ptr,  # (B, H, Lq, Lk) u8, contiguous
    seed, dropout_p, H, Lq, Lk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Write the keep mask the attention kernels draw for (seed, dropout_p): for tests and debugging."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(seed, bh, offs_m, offs_n, Lk, dropout_p, False)
    ok = (offs_m[:, None] < Lq) & (offs_n[None, :] < Lk)
    tl.store(Z_ptr + bh * Lq * Lk + offs_m[:, None] * Lk + offs_n[None, :], keep.to(tl.uint8), mask=ok)


def dropout_keep_mask(
    seed: int, dropout_p: float, shape: tuple[int, int, int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, H, Lq, Lk) bool: which attention probabilities the triton kernels keep for ``seed`` and ``dropout_p``
    (CPU tensors need ``TRITON_INTERPRET=1``)."""
    b, h, lq, lk = shape
    z = torch.empty(shape, dtype=torch.uint8, device=device)
    _dropout_mask_kernel[(cdiv(lq, 64), cdiv(lk, 64), b * h)](z, seed, dropout_p, h, lq, lk, 64, 64)
    return z.bool()
