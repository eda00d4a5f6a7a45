"""Fused masked attention: FlashAttention-2 style forward and backward in Triton.

One op, ``masked_attention(q, k, v, *, key_mask, frames, attn_mask, dropout_p, scale)``, for self- and
cross-attention with the three mask kinds of the SCL model (True = may attend):

- ``key_mask`` (B, Lk): text padding; loaded as one row per key block.
- ``frames=F``: the flexible vision encoder's frame-block + global-CLS pattern, generated from indices.
  Keys a query block cannot see are never visited (``_frame_span``): a block computes the F CLS keys in one
  16-wide tile, then each frame it touches from that frame's first patch on, so with 64 x 64 tiles the patch
  rows of a 4-frame 224 px video (L = 788) compute 0.40 of dense attention's key columns (its visible pairs are
  0.25: the rest is tile rounding, ceil(196 / 64) tiles per frame). Within a frame's pass a row sees all of the
  frame or none of it, so the mask is one bias per row, with no per-element frame arithmetic. Tiles made only
  of ``key_mask`` padding are skipped too.
- ``attn_mask``: any bool mask broadcastable to (B, H, Lq, Lk), loaded blockwise with stride 0 on broadcast
  dims (never expanded in memory).

The forward keeps the softmax state online (``m_i``, ``l_i``, ``acc``) in base 2 (log2(e) folded into the
scale), stores the log-sum-exp per row, and never holds an Lq x Lk matrix. The backward recomputes the
probabilities from that log-sum-exp in two passes, so no atomics and deterministic gradients: one over query
blocks for dQ, which also computes and stores ``delta = rowsum(dO * O)`` for its rows, then one over key blocks
for dK/dV, which reads that delta. Two launches, not FA2's three (a separate preprocess for delta): on a GPU a
short sequence's backward is bound by the host's launch cost, not by the kernels.

Rows that see no key get ``lse = +inf``: their probabilities are exp2(s - inf) = 0 in the backward, and the
forward divides by a guarded ``l_i``, so they return zeros and zero gradients, never NaN.

Head dims that are not a power of two (or below 16, ``tl.dot``'s minimum) are padded inside the kernel by
masked loads up to ``BLOCK_D``; nothing is copied. D > 128 is refused: the per-program tiles would spill.

Dropout on the attention probabilities is fused (FA2's scheme): the keep mask comes from Philox on (seed, batch *
heads + head) at counter q * Lk + k, regenerated tile by tile in both backward passes, never stored; the seed is
drawn per call from torch's CPU generator. ``dropout_keep_mask`` writes the same mask out (tests compare with it).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._compile import CompileSpec, contiguous_strides, specs_from_configs
from ._dispatch import Backend, interpreting, record, resolve
from ._launch import TunedLaunch, autotune_enabled, cdiv, dot_block, next_pow2
from .reference import attention_mask_ref, masked_attention_ref

__all__ = ["masked_attention"]

_OP = "masked_attention"
_LOG2E = 1.4426950408889634
# tile width of the CLS pass under ``frames`` (F is small; tl.dot needs >= 16)
BLOCK_CLS = tl.constexpr(16)
_MAX_HEAD_DIM = 128
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _mm(a, b):
    """a @ b with fp32 accumulation. fp32 operands multiply in full fp32 ("ieee"), not TF32 (a 10-bit mantissa,
    Triton's default, ~3e-4 relative error): fp32 attention is the accurate path, as torch's fp32 matmul is by
    default; fp16/bf16 are the fast one."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _load_tile(ptrs, row_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile; the head-dim mask compiles away when D is already a power of two."""
    mask = row_ok[:, None]
    if HEAD_DIM != BLOCK_D:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store_tile(ptrs, value, row_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    mask = row_ok[:, None]
    if HEAD_DIM != BLOCK_D:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _visible(
    offs_q,
    offs_k,
    Lq,
    Lk,
    it_end,  # end of the loop's range on the iterated axis (keys, or queries if KEY_MAJOR)
    km_row_ptr,  # key_mask row of this batch element, (Lk,)
    stride_km_n,
    am_ptr,  # attn_mask plane of this (batch, head), (Lq, Lk)
    stride_am_m,
    stride_am_n,
    n_frames,
    n_patches,
    row_frame,  # frame of each resident row (queries, or keys if KEY_MAJOR): ``_frame_id``, computed once
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    KEY_MAJOR: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Which (query, key) pairs of a tile may attend: (len(q), len(k)), or (len(k), len(q)) if KEY_MAJOR.

    The dK/dV pass works on transposed tiles (keys as rows), so the mask is built in either orientation. A loop
    visits [lo, it_end) of the other axis in whole tiles; the tail of its last tile past ``it_end`` belongs to
    another pass (the CLS pass of ``frames`` stops at F, the frame pass takes over) and is masked here so that
    no pair is counted twice.
    """
    if KEY_MAJOR:
        qi = offs_q[None, :]
        ki = offs_k[:, None]
    else:
        qi = offs_q[:, None]
        ki = offs_k[None, :]
    # keys past Lk must go (their zero-loaded scores would take softmax mass); query rows past Lq need no mask:
    # they are never stored, and in the backward their lse loads as +inf, so their probabilities are 0
    ok = ki < Lk
    if KEY_MAJOR:
        ok = ok & (qi < it_end)
    else:
        ok = ok & (ki < it_end)
    if HAS_KEY_MASK:
        ok = ok & (tl.load(km_row_ptr + ki * stride_km_n, mask=ki < Lk, other=0) != 0)
    if HAS_FRAMES and CLS_PASS and not KEY_MAJOR:
        # the CLS keys: a CLS query sees all of them, a patch query its own frame's. ``row_frame`` comes computed
        # once per program: no frame arithmetic per pair (an integer division by the runtime P costs ~20
        # instructions per element). A frame pass needs no test here, a row sees all of the frame or none of it
        # (``row_bias``); and every CLS query sees every key row of dK/dV.
        ok = ok & ((qi < n_frames) | (ki == row_frame[:, None]))
    if HAS_ATTN_MASK:
        am = tl.load(am_ptr + qi * stride_am_m + ki * stride_am_n, mask=(qi < Lq) & (ki < Lk), other=0)
        ok = ok & (am != 0)
    return ok


@triton.jit
def _frame_id(idx, n_frames, n_patches):
    """Frame of each token: CLS_f -> f, patch j of frame f -> f (n_patches >= 1 on the host, so the division is
    defined; without ``frames`` the result goes unused and compiles away)."""
    return tl.where(idx < n_frames, idx, (idx - n_frames) // n_patches)


@triton.jit
def _row_bias(sees):
    """0 where a resident row sees the pass's columns, -inf where it sees none: added to the scores. ptxas gave
    the dQ kernel fewer registers with this add than with the per-row bool and-ed into the tile's mask (136
    against 167 on sm_90); exp2(-inf) = 0 gives the same zero probabilities and gradients."""
    return tl.where(sees, 0.0, float("-inf"))


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
def _frame_span(start, L, n_frames, n_patches, BLOCK_ROWS: tl.constexpr, ROWS_ARE_KEYS: tl.constexpr):
    """The first and last frame whose patches a block of rows [start, start + BLOCK_ROWS) sees under ``frames``.

    The kernels visit the other axis in passes: the F CLS tokens in one small tile (every patch query needs its
    frame's CLS key, every key is seen by all CLS queries), then each of these frames' patches from the frame's
    first patch rather than the tile grid, so a block inside one frame computes ceil(P / tile) tiles of its frame
    and nothing of its neighbours, and within a frame's pass a row sees every column or none. A query block
    holding a CLS row sees every frame.
    """
    end = tl.minimum(start + BLOCK_ROWS, L)
    if ROWS_ARE_KEYS:
        # frames of the keys in the block: CLS key c belongs to frame c, patch keys to (k - F) // P
        f_lo = tl.where(start < n_frames, tl.where(end > n_frames, 0, start), (start - n_frames) // n_patches)
        f_hi = tl.where(end > n_frames, (end - 1 - n_frames) // n_patches, end - 1)
        f_hi = tl.where(start < n_frames, tl.maximum(f_hi, tl.minimum(end, n_frames) - 1), f_hi)
    else:
        full = start < n_frames
        f_lo = tl.where(full, 0, (start - n_frames) // n_patches)
        f_hi = tl.where(full, n_frames - 1, (end - 1 - n_frames) // n_patches)
    return f_lo, f_hi


@triton.jit
def _key_end(km_row_ptr, stride_km_n, Lk, BLOCK: tl.constexpr):
    """One past the last visible key of this batch row (0 if none): the key tiles after it hold only padding and
    are skipped, so padded text costs its real length, not the batch's longest."""
    end = 0
    for s in range(0, Lk, BLOCK):
        idx = s + tl.arange(0, BLOCK)
        m = tl.load(km_row_ptr + idx * stride_km_n, mask=idx < Lk, other=0)
        end = tl.maximum(end, tl.max(tl.where(m != 0, idx + 1, 0), 0))
    return end


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    n_visited,
    q,
    k_base,
    v_base,
    km_row_ptr,
    am_ptr,
    offs_m,
    lo,
    hi,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_km_n,
    stride_am_m,
    stride_am_n,
    Lq,
    Lk,
    n_frames,
    n_patches,
    row_frame,
    row_bias,  # frame pass: 0 for the resident rows that see this frame, -inf for the others
    qk_scale,
    seed,
    bh,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Online-softmax update over the key tiles from ``lo`` up to ``hi`` (a CLS pass or one frame's patches
    under ``frames``, the whole key range without)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        if CLS_PASS or not HAS_FRAMES:  # the loop starts at 0: whole tiles of the grid
            start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, offs_n < Lk, offs_d,
                       HEAD_DIM, BLOCK_D)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, offs_n < Lk, offs_d,
                       HEAD_DIM, BLOCK_D)
        s = _mm(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
        if HAS_FRAMES and not CLS_PASS:
            s += row_bias[:, None]
        ok = _visible(offs_m, offs_n, Lq, Lk, hi, km_row_ptr, stride_km_n, am_ptr, stride_am_m, stride_am_n,
                      n_frames, n_patches, row_frame, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, False,
                      CLS_PASS)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that has seen no visible key yet keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:  # the normaliser l_i sums every probability; only the values see the dropped ones
            keep = _dropout_keep(seed, bh, offs_m, offs_n, Lk, dropout_p, False)
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v)
        m_i = m_new
        n_visited += BLOCK_N  # key columns computed, padding of the last tile included
    return acc, l_i, m_i, n_visited


@triton.jit(do_not_specialize=["seed"])  # a new dropout seed per call: no recompile, no new key
def _attn_fwd_kernel(
    Q_ptr,  # (B, H, Lq, D)
    K_ptr,  # (B, H, Lk, D)
    V_ptr,  # (B, H, Lk, D)
    O_ptr,  # (B, H, Lq, D)
    LSE_ptr,  # (B, H, Lq) fp32, base-2 log-sum-exp of the scaled scores
    KM_ptr,  # (B, Lk) u8 key mask
    AM_ptr,  # broadcast view of (B, H, Lq, Lk) u8 mask
    CNT_ptr,  # (B * H * n_m_blocks,) i32 key blocks visited per program (COUNT_BLOCKS only)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_km_b, stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, Lq, Lk, n_frames, n_patches, qk_scale, seed, dropout_p,
    LQ_BUCKET, LK_BUCKET,  # autotune key only: lengths rounded up to a power of two
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    COUNT_BLOCKS: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs K >= 16: pad the head dim")
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    pid_m = tl.program_id(0)
    # int64 before multiplying by strides: B*H*L*D overflows int32 at video scale
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_frame = _frame_id(offs_m, n_frames, n_patches)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q_ptr + b * stride_qb + h * stride_qh
    k_base = K_ptr + b * stride_kb + h * stride_kh
    v_base = V_ptr + b * stride_vb + h * stride_vh
    km_row_ptr = KM_ptr + b * stride_km_b
    am_ptr = AM_ptr + b * stride_am_b + h * stride_am_h

    q = _load_tile(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, offs_m < Lq, offs_d,
                   HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_visited = 0
    if HAS_KEY_MASK:
        key_end = _key_end(km_row_ptr, stride_km_n, Lk, BLOCK_N)
    else:
        key_end = Lk
    is_cls = offs_m < n_frames
    no_bias = tl.zeros([BLOCK_M], tl.float32)  # passes other than a frame pass take no row bias
    if HAS_FRAMES:
        acc, l_i, m_i, n_visited = _fwd_inner(
            acc, l_i, m_i, n_visited, q, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, n_frames,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, b * H + h, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_CLS, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, True,
        )
        f_lo, f_hi = _frame_span(pid_m * BLOCK_M, Lq, n_frames, n_patches, BLOCK_M, False)
        for f in range(f_lo, f_hi + 1):  # each frame alone: a row sees all of its patches (CLS rows too) or none
            lo = n_frames + f * n_patches
            bias = _row_bias(is_cls | (row_frame == f))
            acc, l_i, m_i, n_visited = _fwd_inner(
                acc, l_i, m_i, n_visited, q, k_base, v_base, km_row_ptr, am_ptr, offs_m, lo,
                tl.minimum(lo + n_patches, key_end),
                stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
                Lq, Lk, n_frames, n_patches, row_frame, bias, qk_scale, seed, b * H + h, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, False,
            )
    else:
        acc, l_i, m_i, n_visited = _fwd_inner(
            acc, l_i, m_i, n_visited, q, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, key_end,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, b * H + h, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, False,
        )

    empty = l_i == 0.0  # no visible key: zeros out, lse = +inf so the backward gives zero gradients
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    _store_tile(O_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                out, offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
    tl.store(LSE_ptr + (b * H + h) * Lq + offs_m, lse, mask=offs_m < Lq)
    if COUNT_BLOCKS:
        tl.store(CNT_ptr + (b * H + h) * tl.num_programs(0) + pid_m, n_visited)


@triton.jit
def _bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_base,
    delta_base,
    km_row_ptr,
    am_ptr,
    offs_n,
    lo,
    hi,
    stride_qm,
    stride_qd,
    stride_dom,
    stride_dod,
    stride_km_n,
    stride_am_m,
    stride_am_n,
    Lq,
    Lk,
    n_frames,
    n_patches,
    row_frame,
    row_bias,  # frame pass: 0 for the resident rows that see this frame, -inf for the others
    qk_scale,
    seed,
    bh,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Accumulate dK, dV of one key block over the query tiles from ``lo`` up to ``hi``, in transposed
    (key-major) tiles."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        if CLS_PASS or not HAS_FRAMES:  # the loop starts at 0: whole tiles of the grid
            start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, offs_m < Lq, offs_d,
                       HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, offs_m < Lq, offs_d,
                        HEAD_DIM, BLOCK_D)
        lse = tl.load(lse_base + offs_m, mask=offs_m < Lq, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=offs_m < Lq, other=0.0)
        s_t = _mm(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M)
        if HAS_FRAMES and not CLS_PASS:
            s_t += row_bias[:, None]
        ok = _visible(offs_m, offs_n, Lq, Lk, hi, km_row_ptr, stride_km_n, am_ptr, stride_am_m, stride_am_n,
                      n_frames, n_patches, row_frame, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, True,
                      CLS_PASS)
        p_t = tl.where(ok, tl.exp2(s_t - lse[None, :]), 0.0)
        dp_t = _mm(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
        if HAS_DROPOUT:  # FA2: dV sees the dropped probabilities, dS = P * (Z * dP / (1 - p) - delta)
            keep_t = _dropout_keep(seed, bh, offs_m, offs_n, Lk, dropout_p, True)
            inv_keep = 1.0 / (1.0 - dropout_p)
            dv += _mm(tl.where(keep_t, p_t * inv_keep, 0.0).to(do.dtype), do)
            dp_t = tl.where(keep_t, dp_t * inv_keep, 0.0)
        else:
            dv += _mm(p_t.to(do.dtype), do)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _mm(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv_kernel(
    Q_ptr,  # (B, H, Lq, D)
    K_ptr,  # (B, H, Lk, D)
    V_ptr,  # (B, H, Lk, D)
    DO_ptr,  # (B, H, Lq, D)
    LSE_ptr,  # (B, H, Lq) fp32
    DELTA_ptr,  # (B, H, Lq) fp32
    DK_ptr,  # (B, H, Lk, D)
    DV_ptr,  # (B, H, Lk, D)
    KM_ptr,  # (B, Lk) u8
    AM_ptr,  # broadcast view of (B, H, Lq, Lk) u8
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_km_b, stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, Lq, Lk, n_frames, n_patches, qk_scale, sm_scale, seed, dropout_p,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs K >= 16: pad the head dim")
    pid_n = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_frame = _frame_id(offs_n, n_frames, n_patches)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                   offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)  # (BLOCK_N, BLOCK_D)
    v = _load_tile(V_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                   offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    q_base = Q_ptr + b * stride_qb + h * stride_qh
    do_base = DO_ptr + b * stride_dob + h * stride_doh
    lse_base = LSE_ptr + (b * H + h) * Lq
    delta_base = DELTA_ptr + (b * H + h) * Lq
    km_row_ptr = KM_ptr + b * stride_km_b
    am_ptr = AM_ptr + b * stride_am_b + h * stride_am_h
    if HAS_KEY_MASK:  # a key tile of padding only: no query sees it, dK = dV = 0 without a loop
        has_key = tl.max(tl.load(km_row_ptr + offs_n * stride_km_n, mask=offs_n < Lk, other=0), 0) != 0
    else:
        has_key = True
    no_bias = tl.zeros([BLOCK_N], tl.float32)  # passes other than a frame pass take no row bias
    if HAS_FRAMES:
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, km_row_ptr, am_ptr, offs_n, 0,
            tl.where(has_key, n_frames, 0),
            stride_qm, stride_qd, stride_dom, stride_dod, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, b * H + h, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_CLS, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, True,
        )
        f_lo, f_hi = _frame_span(pid_n * BLOCK_N, Lk, n_frames, n_patches, BLOCK_N, True)
        for f in range(f_lo, tl.where(has_key, f_hi + 1, f_lo)):  # each frame alone: its key rows see it all
            lo = n_frames + f * n_patches
            bias = _row_bias(row_frame == f)
            dk, dv = _bwd_dkdv_inner(
                dk, dv, k, v, q_base, do_base, lse_base, delta_base, km_row_ptr, am_ptr, offs_n, lo,
                tl.minimum(lo + n_patches, Lq),
                stride_qm, stride_qd, stride_dom, stride_dod, stride_km_n, stride_am_m, stride_am_n,
                Lq, Lk, n_frames, n_patches, row_frame, bias, qk_scale, seed, b * H + h, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_M, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, False,
            )
    else:
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, km_row_ptr, am_ptr, offs_n, 0,
            tl.where(has_key, Lq, 0),
            stride_qm, stride_qd, stride_dom, stride_dod, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, b * H + h, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_M, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, False,
        )
    # ds above is the gradient of the natural-scale logits q.k * sm_scale; the chain rule adds sm_scale once
    _store_tile(DK_ptr + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
                dk * sm_scale, offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)
    _store_tile(DV_ptr + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
                dv, offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    km_row_ptr,
    am_ptr,
    offs_m,
    lo,
    hi,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_km_n,
    stride_am_m,
    stride_am_n,
    Lq,
    Lk,
    n_frames,
    n_patches,
    row_frame,
    row_bias,  # frame pass: 0 for the resident rows that see this frame, -inf for the others
    qk_scale,
    seed,
    bh,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Accumulate dQ of one query block over the key tiles from ``lo`` up to ``hi``."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        if CLS_PASS or not HAS_FRAMES:  # the loop starts at 0: whole tiles of the grid
            start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, offs_n < Lk, offs_d,
                       HEAD_DIM, BLOCK_D)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, offs_n < Lk, offs_d,
                       HEAD_DIM, BLOCK_D)
        s = _mm(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N)
        if HAS_FRAMES and not CLS_PASS:
            s += row_bias[:, None]
        ok = _visible(offs_m, offs_n, Lq, Lk, hi, km_row_ptr, stride_km_n, am_ptr, stride_am_m, stride_am_n,
                      n_frames, n_patches, row_frame, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, False,
                      CLS_PASS)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m, offs_n, Lk, dropout_p, False)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds.to(k.dtype), k)
    return dq


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq_kernel(
    Q_ptr,  # (B, H, Lq, D)
    K_ptr,  # (B, H, Lk, D)
    V_ptr,  # (B, H, Lk, D)
    O_ptr,  # (B, H, Lq, D): the forward's output, for delta
    DO_ptr,  # (B, H, Lq, D)
    LSE_ptr,  # (B, H, Lq) fp32
    DELTA_ptr,  # (B, H, Lq) fp32, written here for the dK/dV pass
    DQ_ptr,  # (B, H, Lq, D)
    KM_ptr,  # (B, Lk) u8
    AM_ptr,  # broadcast view of (B, H, Lq, Lk) u8
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_km_b, stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, Lq, Lk, n_frames, n_patches, qk_scale, sm_scale, seed, dropout_p,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs K >= 16: pad the head dim")
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_frame = _frame_id(offs_m, n_frames, n_patches)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom
                    + offs_d[None, :] * stride_dod, offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.load(LSE_ptr + (b * H + h) * Lq + offs_m, mask=offs_m < Lq, other=float("inf"))
    # delta = rowsum(dO * O), the softmax-Jacobian term of both gradient passes: this pass needs it for its own
    # rows only, so it computes it (one O tile more) and stores it for the dK/dV pass, launched after this one,
    # instead of a preprocess kernel launched before both
    o = _load_tile(O_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                   offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA_ptr + (b * H + h) * Lq + offs_m, delta, mask=offs_m < Lq)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K_ptr + b * stride_kb + h * stride_kh
    v_base = V_ptr + b * stride_vb + h * stride_vh
    km_row_ptr = KM_ptr + b * stride_km_b
    am_ptr = AM_ptr + b * stride_am_b + h * stride_am_h
    if HAS_KEY_MASK:
        key_end = _key_end(km_row_ptr, stride_km_n, Lk, BLOCK_N)
    else:
        key_end = Lk
    is_cls = offs_m < n_frames
    no_bias = tl.zeros([BLOCK_M], tl.float32)  # passes other than a frame pass take no row bias
    if HAS_FRAMES:
        dq = _bwd_dq_inner(
            dq, q, do, lse, delta, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, n_frames,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, b * H + h, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_CLS, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, True,
        )
        f_lo, f_hi = _frame_span(pid_m * BLOCK_M, Lq, n_frames, n_patches, BLOCK_M, False)
        for f in range(f_lo, f_hi + 1):  # each frame alone, as in the forward
            lo = n_frames + f * n_patches
            bias = _row_bias(is_cls | (row_frame == f))
            dq = _bwd_dq_inner(
                dq, q, do, lse, delta, k_base, v_base, km_row_ptr, am_ptr, offs_m, lo,
                tl.minimum(lo + n_patches, key_end),
                stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
                Lq, Lk, n_frames, n_patches, row_frame, bias, qk_scale, seed, b * H + h, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, False,
            )
    else:
        dq = _bwd_dq_inner(
            dq, q, do, lse, delta, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, key_end,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, b * H + h, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, False,
        )
    _store_tile(DQ_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
                dq * sm_scale, offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)


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


# --------------------------------------------------------------------------------------------------------------
# Configurations: autotuned on GPU from explicit lists, one config under the interpreter
# --------------------------------------------------------------------------------------------------------------


def _configs(blocks: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) -> triton.Config."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in blocks]


# (BLOCK_M, BLOCK_N, num_warps, num_stages). The first entry of each list is the "default" config whose registers
# and spills the compile report lists (and the one SCL_KERNELS_AUTOTUNE=0 launches); the last is the smallest, kept
# when the pruner drops everything. Kept short: every entry is autotuned on a GPU and compiled twice by the compile
# check. Chosen from every candidate's time on an H200 (bf16, D=64 and 128, every mask kind: the "Autotune
# candidates" tables of benchmarks/results/gpu-h200-2026-11-30*): 4-warp programs with 32- and 64-row tiles won
# every D=64 key, by 10-40% over the 8-warp 128-row tiles that used to head these lists; each config kept won at
# least one key there, except the 8-warp forward and dQ tiles, kept for D=128 (second and first there) and for
# sm_80, which has not been timed. Dropped: everything that never came first, among them the 128-register caps of
# the 8-warp tiles and the forward's (64, 128, 4, 3), last on three keys and spilling on both architectures.
FWD_CONFIGS = _configs([(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 32, 4, 2)])
# dK/dV holds two fp32 (BLOCK_N, D) accumulators: wide key blocks over narrow query blocks (FA2's choice, and the
# Triton tutorial's Hopper backward: dK/dV 32 x 128, dQ 128 x 32, 4 warps). The 4-warp 128-key tile is over
# sm_80's register budget and within sm_90's (``_REG_BUDGET_SM90``), so only a Hopper tunes over it; it won the
# dense 512-token key there, the 64-key tiles the others at D=64, the 8-warp tile D=128.
DKDV_CONFIGS = _configs([(32, 64, 4, 3), (32, 128, 4, 3), (64, 128, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2)])
DQ_CONFIGS = _configs([(64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2), (64, 64, 4, 4), (32, 32, 4, 2)])
# fp32 inputs multiply in full fp32 (``_mm``): on FMA units, which hold both operands of each product in registers,
# a regime the tensor-core lists above do not fit. Their defaults spilled 7.1 KB per thread (forward, D=64, sm_80)
# to 7.4 KB (D=128); these lists compiled spill-free on sm_80 and sm_90 at D=64 and within ``_REG_BUDGET_FP32`` at
# D=128 (a compile sweep of 42 tiles per architecture, 2026-11-30; the compile report lists the defaults). fp32 is
# the accurate path, not the timed one: the autotuner picks among these on the GPU.
FWD_FP32_CONFIGS = _configs([(64, 32, 8, 2), (32, 32, 4, 2), (32, 32, 8, 2), (32, 16, 8, 2)])
DKDV_FP32_CONFIGS = _configs([(32, 32, 8, 2), (16, 32, 8, 2), (16, 16, 4, 2)])
DQ_FP32_CONFIGS = _configs([(64, 32, 8, 2), (32, 32, 4, 2), (32, 32, 8, 2)])
# kind -> (16-bit list, fp32 list); an autotuner gets both, its pruner keeps the list of the inputs' dtype
_CONFIG_LISTS = {"fwd": (FWD_CONFIGS, FWD_FP32_CONFIGS), "dkdv": (DKDV_CONFIGS, DKDV_FP32_CONFIGS),
                 "dq": (DQ_CONFIGS, DQ_FP32_CONFIGS)}  # fmt: skip
_INTERPRET_CONFIGS = _configs([(64, 64, 4, 1)])
_SMEM_BUDGET = 160 * 1024  # A100 allows 163 KiB per block, H100/H200 227 KiB: prune to what both run
_REG_BUDGET = 128  # 32-bit values per thread in accumulators and resident tiles; above it sm_80 spills
# 16-bit inputs on sm_90: the compile report shows the tutorial's 4-warp tiles (estimate 160-224) at 176-255
# registers with at most 56 B of spill there
_REG_BUDGET_SM90 = 224
# fp32 inputs, either architecture: the estimate does not count the FMA dot's operands, and in the sweep every tile
# of the fp32 lists at or under 70 compiled spill-free; the forward's (64, 32, 8, 2) and (32, 32, 4, 2) at D=128
# (72) spilled 16-680 B, dQ's at D=128 (104) used all 255 registers on sm_80
_REG_BUDGET_FP32 = 70


def _tile_sizes(cfg: triton.Config, kind: str) -> tuple[int, int]:
    """(rows of the resident tile, rows of each streamed tile): Q rows for fwd/dq, K rows for dkdv."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    return (bn, bm) if kind == "dkdv" else (bm, bn)


def _smem_estimate(cfg: triton.Config, kind: str, block_d: int, elt: int) -> int:
    """Shared memory of one program: the resident tile and two pipelined tiles per stage (K and V, or Q and dO);
    fp32 inputs add about two fp32 score tiles. Against the compile report: sm_80 uses at most this plus the
    (rows,) statistics; sm_90 up to a third more (its wgmma stages more operands in shared memory), which the
    budget's distance to sm_90's 227 KiB covers."""
    rows, cols = _tile_sizes(cfg, kind)
    extra = 2 * rows * cols * 4 if elt == 4 else 0
    return (rows + cfg.num_stages * 2 * cols) * block_d * elt + extra


def _reg_estimate(cfg: triton.Config, kind: str, block_d: int, elt: int) -> int:
    """32-bit registers per thread for the fp32 accumulators (one (rows, D) tile, two for dK/dV), the score
    tile and the resident input tiles (Q; K and V; Q and dO). Configs above ``_REG_BUDGET`` spilled heavily on
    sm_80 in the compile report; a few below it spill a little there (listed in the report), which the
    autotuner's timing weighs."""
    rows, cols = _tile_sizes(cfg, kind)
    n_acc = 2 if kind == "dkdv" else 1
    n_in = 1 if kind == "fwd" else 2
    threads = 32 * cfg.num_warps
    return (n_acc * rows * block_d + rows * cols + n_in * rows * block_d * elt // 4) // threads


def _fitting(configs: list[triton.Config], kind: str, block_d: int, elt: int,
             reg_budget: int) -> list[triton.Config]:
    """The configs that fit shared memory on both sm_80 and sm_90 and ``reg_budget`` (``_reg_budget``); the
    smallest (last) if none does."""
    kept = [c for c in configs if _smem_estimate(c, kind, block_d, elt) <= _SMEM_BUDGET
            and _reg_estimate(c, kind, block_d, elt) <= reg_budget]  # fmt: skip
    return kept or configs[-1:]


def _reg_budget(hopper: bool, elt: int) -> int:
    """The pruner's register budget: sm_90's for 16-bit inputs on a Hopper (or newer) GPU, sm_80's for 16-bit
    inputs otherwise, fp32's own on both (see ``_REG_BUDGET_FP32``)."""
    if elt == 4:
        return _REG_BUDGET_FP32
    return _REG_BUDGET_SM90 if hopper else _REG_BUDGET


def _tile(cfg: triton.Config) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): a config as the lists spell it."""
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages


def _all_configs(kind: str) -> list[triton.Config]:
    """Both of ``kind``'s lists, each tile once: what its autotuner gets on a GPU."""
    half, fp32 = _CONFIG_LISTS[kind]
    half_tiles = {_tile(c) for c in half}
    return half + [c for c in fp32 if _tile(c) not in half_tiles]


def _dtype_configs(configs: list[triton.Config], kind: str, elt: int) -> list[triton.Config]:
    """Those of ``configs`` (an autotuner's: both lists of ``kind``) that the list for ``elt``-byte inputs holds,
    in that list's order: its first fitting entry is the default the compile report lists."""
    given = {_tile(c): c for c in configs}
    return [given[_tile(c)] for c in _CONFIG_LISTS[kind][elt == 4] if _tile(c) in given]


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _make_prune(kind: str):  # noqa: ANN202 (triton's early_config_prune callback)
    def prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
        """Drop configs whose tiles would not fit shared memory or the GPU's registers, or are wider than the
        sequence (a 64-row tile already covers short text). Always keeps at least one; only one with
        SCL_KERNELS_AUTOTUNE=0."""
        args = {**named_args, **kwargs}
        q = args["Q_ptr"]
        elt = q.element_size()
        fit = _fitting(_dtype_configs(configs, kind, elt), kind, args["BLOCK_D"], elt,
                       _reg_budget(_is_hopper(q.device), elt))
        lq, lk = max(64, next_pow2(args["Lq"])), max(64, next_pow2(args["Lk"]))
        narrow = [c for c in fit if c.kwargs["BLOCK_M"] <= lq and c.kwargs["BLOCK_N"] <= lk] or fit
        return narrow if autotune_enabled() else narrow[:1]

    return prune


_KEY = ["LQ_BUCKET", "LK_BUCKET", "BLOCK_D", "HAS_KEY_MASK", "HAS_FRAMES", "HAS_ATTN_MASK", "HAS_DROPOUT"]


def _autotuned(kernel: triton.JITFunction, kind: str) -> TunedLaunch:
    """Autotune over ``kind``'s configs on a GPU (the pruner keeps the inputs' dtype's list); one config under the
    interpreter (the autotuner needs a GPU to time)."""
    if interpreting():
        tuner = triton.autotune(_INTERPRET_CONFIGS, key=_KEY)(kernel)
    else:
        prune = {"early_config_prune": _make_prune(kind)}
        tuner = triton.autotune(_all_configs(kind), key=_KEY, prune_configs_by=prune)(kernel)
    return TunedLaunch(tuner, key_args=("LQ_BUCKET", "LK_BUCKET"))


_attn_fwd = _autotuned(_attn_fwd_kernel, "fwd")
_attn_bwd_dkdv = _autotuned(_attn_bwd_dkdv_kernel, "dkdv")
_attn_bwd_dq = _autotuned(_attn_bwd_dq_kernel, "dq")


# --------------------------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------------------------


def _new_output(
    like: torch.Tensor, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Every buffer the launchers return comes from here (tests poison it to catch unwritten elements).

    Without ``shape`` the buffer copies ``like``'s layout (a (B, L, H, D)-permuted q gives a (B, L, H, D)-permuted
    output, so the model's reshape to (B, L, H*D) stays free).
    """
    if shape is None:
        return torch.empty_like(like, dtype=dtype)
    return like.new_empty(shape, dtype=dtype or like.dtype)  # contiguous; ~2 us less host time than torch.empty


_PLACEHOLDERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 1-element buffer for a pointer argument that the kernel never reads or writes (its HAS_* or COUNT_BLOCKS
    flag is off), one per device and dtype: a fresh one per call cost ~10 us of host time each on the H200's
    host (cProfile, 2026-11-30), three per forward + backward."""
    key = (device, dtype)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = torch.empty(1, device=device, dtype=dtype)
    return _PLACEHOLDERS[key]


def _mask_args(
    q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None, attn_mask: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, tuple[int, int, int, int]]:
    """u8 views (no copies) of the masks and their strides; broadcast dims of attn_mask get stride 0.

    An absent mask is passed as a 1-byte placeholder that the kernel never reads (its HAS_* flag is off): the
    kernels offset every pointer argument once, which a None argument cannot take.
    """
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    placeholder = _placeholder(q.device, torch.uint8)
    km, km_strides = placeholder, (0, 0)
    if key_mask is not None:
        km = key_mask.view(torch.uint8)
        km_strides = (km.stride(0), km.stride(1))
    am, am_strides = placeholder, (0, 0, 0, 0)
    if attn_mask is not None:
        # expanded to the full shape: stride 0 on every broadcast dim, the key dim included
        am = attn_mask.view(torch.uint8).expand(b, h, lq, lk)
        am_strides = am.stride()
    return km, km_strides, am, am_strides


def _frame_args(frames: int | None, length: int) -> tuple[int, int]:
    if frames is None:
        return 0, 1
    # n_patches >= 1 keeps the kernel's integer division defined when every token is a CLS (P = 0)
    return frames, max(length // frames - 1, 1)


def _grid(rows: int, block_key: str, b: int, h: int):  # noqa: ANN202 (triton grid callback)
    return lambda meta: (cdiv(rows, meta[block_key]), h, b)


def _attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    *,
    dropout_p: float = 0.0,
    seed: int = 0,
    count_blocks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel. Returns (out, lse (B, H, Lq) base-2, per-program key-block counts or None)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    out = _new_output(q)
    lse = _new_output(q, (b, h, lq), torch.float32)
    # sized for the smallest BLOCK_M of any config; without COUNT_BLOCKS a placeholder the kernel never writes
    if count_blocks:
        counts = torch.zeros(b * h * cdiv(lq, 16), device=q.device, dtype=torch.int32)
    else:  # never written
        counts = _placeholder(q.device, torch.int32)
    km, km_strides, am, am_strides = _mask_args(q, k, key_mask, attn_mask)
    n_frames, n_patches = _frame_args(frames, lk)
    _attn_fwd[_grid(lq, "BLOCK_M", b, h)](
        q, k, v, out, lse, km, am, counts,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *km_strides, *am_strides,
        h, lq, lk, n_frames, n_patches, scale * _LOG2E, seed, dropout_p,
        next_pow2(lq), next_pow2(lk),
        HEAD_DIM=d, BLOCK_D=dot_block(d),
        HAS_KEY_MASK=key_mask is not None, HAS_FRAMES=frames is not None, HAS_ATTN_MASK=attn_mask is not None,
        HAS_DROPOUT=dropout_p > 0.0, COUNT_BLOCKS=count_blocks,
    )  # fmt: skip
    return out, lse, (counts if count_blocks else None)


def _attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the dQ pass (which also writes delta) and then the dK/dV pass. Returns (dq, dk, dv) in the layouts
    of q, k, v."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    delta = _new_output(q, (b, h, lq), torch.float32)
    dq, dk, dv = _new_output(q), _new_output(k), _new_output(v)
    km, km_strides, am, am_strides = _mask_args(q, k, key_mask, attn_mask)
    n_frames, n_patches = _frame_args(frames, lk)
    flags = {
        "HEAD_DIM": d,
        "BLOCK_D": dot_block(d),
        "HAS_KEY_MASK": key_mask is not None,
        "HAS_FRAMES": frames is not None,
        "HAS_ATTN_MASK": attn_mask is not None,
        "HAS_DROPOUT": dropout_p > 0.0,
    }
    sizes = (h, lq, lk, n_frames, n_patches, scale * _LOG2E, scale, seed, dropout_p, next_pow2(lq),
             next_pow2(lk))  # fmt: skip
    _attn_bwd_dq[_grid(lq, "BLOCK_M", b, h)](
        q, k, v, out, dout, lse, delta, dq, km, am,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(), *km_strides,
        *am_strides, *sizes, **flags,
    )  # fmt: skip
    _attn_bwd_dkdv[_grid(lk, "BLOCK_N", b, h)](
        q, k, v, dout, lse, delta, dk, dv, km, am,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *km_strides, *am_strides,
        *sizes, **flags,
    )  # fmt: skip
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------------------
# torch.library op: one opaque op for torch.compile, autograd through a second op for the backward
# --------------------------------------------------------------------------------------------------------------


def _reference_grads(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense backward written out (P recomputed, dS = P * (dP - rowsum(dP * P))). Not autograd: inside a custom
    op's implementation the dispatcher has already passed the autograd key, so a recorded graph would be empty."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    mask = attention_mask_ref(q.shape[0], q.shape[-2], k.shape[-2], key_mask=key_mask, frames=frames,
                              attn_mask=attn_mask, device=q.device)  # fmt: skip
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # rows with no key: zero, not NaN
    dv = torch.matmul(probs.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2))
    ds = probs * (dp - (dp * probs).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    return dq, dk, dv


def _seed_int(seed: torch.Tensor | None) -> int:
    # a CPU tensor (drawn outside the op so torch.compile draws a new one every call): no device sync
    return int(seed.item()) if seed is not None else 0


def _forward_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out, lse). lse is (B, H, Lq) fp32 for the triton backend and empty for the reference.

    Dropout is fused on the triton backend only (the public function runs the reference's dropout outside the op,
    where autograd keeps its mask)."""
    record(_OP, backend)
    if backend == "triton":
        out, lse, _ = _attention_forward(q, k, v, key_mask, attn_mask, frames, scale, dropout_p=dropout_p,
                                         seed=_seed_int(seed))  # fmt: skip
        return out, lse
    if dropout_p > 0.0:
        raise ValueError(f"the reference op runs without dropout, got dropout_p={dropout_p}")
    out = masked_attention_ref(q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask, scale=scale)
    return out, q.new_empty(0, dtype=torch.float32)


_masked_attention_op = torch.library.custom_op("scl::masked_attention", mutates_args=())(_forward_impl)


@_masked_attention_op.register_fake
def _(q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend):  # noqa: ANN001, ANN202
    # layouts as the real backends give them: triton copies q's strides, the reference returns contiguous tensors
    if backend == "triton":
        return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    return q.new_empty(q.shape), q.new_empty(0, dtype=torch.float32)


def _backward_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv). The triton passes recompute P (and the dropout mask, from the same seed) from lse; the
    reference recomputes the dense forward."""
    if backend == "triton":
        return _attention_backward(dout, q, k, v, out, lse, key_mask, attn_mask, frames, scale, dropout_p,
                                   _seed_int(seed))  # fmt: skip
    return _reference_grads(dout, q, k, v, key_mask, attn_mask, frames, scale)


_masked_attention_backward_op = torch.library.custom_op("scl::masked_attention_backward", mutates_args=())(
    _backward_impl
)


@_masked_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, key_mask, attn_mask, frames, scale, dropout_p, seed, backend):  # noqa: ANN001, ANN202
    if backend == "triton":
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask, attn_mask, seed)
    ctx.frames, ctx.scale, ctx.dropout_p, ctx.backend = frames, scale, dropout_p, backend


def _backward(ctx, dout, dlse):  # noqa: ANN001, ANN202
    q, k, v, out, lse, key_mask, attn_mask, seed = ctx.saved_tensors
    dq, dk, dv = _masked_attention_backward_op(
        dout, q, k, v, out, lse, key_mask, attn_mask, ctx.frames, ctx.scale, ctx.dropout_p, seed, ctx.backend
    )
    # lse is an internal output with no gradient (dlse unused); masks, frames, scale, dropout_p, seed and
    # backend take none
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("scl::masked_attention", _backward, setup_context=_setup_context)


class _EagerMaskedAttention(torch.autograd.Function):
    """The op's forward and backward without torch.library's dispatch, for eager mode. That dispatch (schema
    defaults, autograd redispatch) took ~70% of the host time of one call (cProfile, kernel launches stubbed out:
    ~160 us of Python per forward on the CI CPU), and on a GPU short sequences are host-bound: padded text at 50
    tokens ran 0.33 ms against SDPA's 0.09 on an H200. torch.compile still traces the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend):  # noqa: ANN001, ANN205
        out, lse = _forward_impl(q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend)
        _setup_context(ctx, (q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend), (out, lse))
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001, ANN205
        q, k, v, out, lse, key_mask, attn_mask, seed = ctx.saved_tensors
        dq, dk, dv = _backward_impl(dout, q, k, v, out, lse, key_mask, attn_mask, ctx.frames, ctx.scale,
                                    ctx.dropout_p, seed, ctx.backend)
        return dq, dk, dv, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    frames: int | None,
    attn_mask: torch.Tensor | None,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, lq, d = q.shape
    if k.shape[:2] != (b, h) or k.shape[3] != d or v.shape != k.shape:
        raise ValueError(
            f"k and v must be (B, H, Lk, D) = ({b}, {h}, Lk, {d}) like q, got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    lk = k.shape[2]
    if key_mask is not None and (key_mask.shape != (b, lk) or key_mask.dtype != torch.bool):
        raise ValueError(f"key_mask must be bool (B, Lk) = ({b}, {lk}), got {key_mask.dtype} {tuple(key_mask.shape)}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
        try:
            full = torch.broadcast_shapes(attn_mask.shape, (b, h, lq, lk))
        except RuntimeError:
            full = None
        if full != (b, h, lq, lk):
            raise ValueError(
                f"attn_mask must broadcast to (B, H, Lq, Lk) = {(b, h, lq, lk)}, got {tuple(attn_mask.shape)}"
            )
    if frames is not None:
        if lq != lk:
            raise ValueError(f"frames is for self-attention, got Lq={lq} != Lk={lk}")
        if frames < 1 or lk % frames:
            raise ValueError(f"L must be a positive multiple of frames, got L={lk}, frames={frames}")


def _check_triton(q: torch.Tensor) -> None:
    if q.dtype not in _DTYPES:
        raise ValueError(f"masked_attention (triton) supports {_DTYPES}, got {q.dtype}")
    if q.shape[-1] > _MAX_HEAD_DIM:
        raise ValueError(f"masked_attention (triton) supports head dims up to {_MAX_HEAD_DIM}, got {q.shape[-1]}")


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    frames: int | None = None,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v, fused (FlashAttention-2 style) on CUDA. True = may attend.

    Args:
        q: (B, H, Lq, D) queries; any strides (e.g. a (B, L, H, D) tensor permuted to (B, H, L, D)).
        k: (B, H, Lk, D) keys; Lk may differ from Lq (cross-attention).
        v: (B, H, Lk, D) values.
        key_mask: (B, Lk) bool, True for real keys (HF ``attention_mask`` convention).
        frames: F for the flexible vision encoder's pattern over [CLS_1..CLS_F, patches of frame 1, ...,
            patches of frame F] (self-attention, L a multiple of F): CLS rows see every token, a patch row of
            frame f sees CLS_f and the patches of frame f. Combines with the other masks.
        attn_mask: bool, broadcastable to (B, H, Lq, Lk), True = may attend (SDPA convention).
        dropout_p: dropout on the attention probabilities (training). Fused in the triton kernels: the mask is
            drawn by Philox from a seed and regenerated in the backward, never stored.
        scale: logit scale, default 1/sqrt(D).
        backend: "triton", "reference" or None/"auto" (triton on CUDA, reference on CPU; see ``use_backend``).

    Returns:
        (B, H, Lq, D) in q's dtype (and q's memory layout where q is dense). A query row that sees no key
        returns zeros and passes zero gradients.
    """
    _check_inputs(q, k, v, key_mask, frames, attn_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    choice = resolve(_OP, q.device, backend)  # "native" raises there: attention has no C++ kernel
    if choice == "triton":
        _check_triton(q)
    elif dropout_p > 0.0:
        # dropout draws from torch's generator: plain autograd keeps the one mask for forward and backward
        record(_OP, choice)
        return masked_attention_ref(
            q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
        )
    # the seed is drawn from torch's CPU generator (seeded by torch.manual_seed), as a tensor so that a compiled
    # graph draws a fresh one per call instead of baking one in
    seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64) if dropout_p > 0.0 else None
    if torch.compiler.is_compiling():
        out, _ = _masked_attention_op(q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), seed, choice)
        return out
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        # inference (evaluation, retrieval): no graph to record, so no autograd.Function either
        return _forward_impl(q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), seed, choice)[0]
    return _EagerMaskedAttention.apply(q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), seed, choice)


# --------------------------------------------------------------------------------------------------------------
# What a GPU launches, for the compile check (scl_kernels._compile)
# --------------------------------------------------------------------------------------------------------------

def _compile_specs() -> list[CompileSpec]:
    """Kernel specialisations to compile for sm_80/sm_90 without a GPU.

    Every autotune config at the production case (bf16, D=64, key mask: the text encoder), the default config
    of each dtype and head dim, and the default config of the other mask variants (frames: the video encoder;
    key+frames covers both generated masks). The interpreter accepts what these catch: ``tl.dot`` shapes,
    shared-memory overflow. Strides are as on a real launch (last dims 1, the others multiples of 16: Triton
    specialises on both), so the register counts match the kernels that run.
    """
    specs: list[CompileSpec] = []
    kernels = (("fwd", _attn_fwd_kernel), ("dkdv", _attn_bwd_dkdv_kernel), ("dq", _attn_bwd_dq_kernel))
    masks = {
        "none": (False, False, False, False),
        "key": (True, False, False, False),
        "frames": (False, True, False, False),
        "key+frames": (True, True, False, False),
        "attn": (False, False, True, False),
        "key+dropout": (True, False, False, True),
    }
    variants = [("bf16", 64, "key", "all")]
    # each dtype and each head dim once (the compile check runs on 2 CPU cores: ~1 s per spec and arch)
    variants += [(dt, d, "key", "default") for dt, d in (("fp16", 32), ("bf16", 128), ("fp32", 64), ("fp32", 128))]
    variants += [("bf16", 64, m, "default") for m in ("none", "frames", "key+frames", "attn", "key+dropout")]
    for dt, d, mask, which in variants:
        has_key, has_frames, has_attn, has_dropout = masks[mask]
        types = {"qk_scale": "fp32", "sm_scale": "fp32", "dropout_p": "fp32", "KM_ptr": "*u8", "AM_ptr": "*u8",
                 "CNT_ptr": "*i32", "LSE_ptr": "*fp32", "DELTA_ptr": "*fp32"}  # fmt: skip
        for name in ("Q_ptr", "K_ptr", "V_ptr", "O_ptr", "DO_ptr", "DQ_ptr", "DK_ptr", "DV_ptr"):
            types[name] = f"*{dt}"
        consts: dict[str, int | bool | None] = {"HEAD_DIM": d, "BLOCK_D": dot_block(d), "HAS_KEY_MASK": has_key,
                                                "HAS_FRAMES": has_frames, "HAS_ATTN_MASK": has_attn,
                                                "HAS_DROPOUT": has_dropout}  # fmt: skip
        elt = {"fp16": 2, "bf16": 2, "fp32": 4}[dt]
        for kname, kernel in kernels:
            configs = _CONFIG_LISTS[kname][elt == 4]
            kconsts = dict(consts)
            if kname == "fwd":
                kconsts["COUNT_BLOCKS"] = False
            unit, divisible = contiguous_strides(kernel, unknown=("stride_km", "stride_am"))
            kconsts.update(unit)
            # what the pruner lets a GPU launch: every config a Hopper tunes over (its budget is the wider), or
            # the default of each budget (the first fitting config, the one SCL_KERNELS_AUTOTUNE=0 launches)
            fit = _fitting(configs, kname, dot_block(d), elt, _reg_budget(True, elt))
            groups = [fit] if which == "all" else [[c] for c in dict.fromkeys(
                _fitting(configs, kname, dot_block(d), elt, _reg_budget(False, elt))[:1] + fit[:1])]  # fmt: skip
            for chosen in groups:
                specs += specs_from_configs(kernel, f"attention.{kname}/{dt}-d{d}-{mask}", types, kconsts, chosen,
                                            divisible=divisible)  # fmt: skip
    return specs


COMPILE_SPECS: list[CompileSpec] = _compile_specs()
