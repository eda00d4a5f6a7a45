"""The attention forward kernel: online softmax over key tiles, one program per (query block, query head, batch).

The softmax state stays online (``m_i``, ``l_i``, ``acc``) in base 2 (log2(e) folded into the scale), the
log-sum-exp is stored per row (natural log, what ``return_lse`` gives and the backward reads), and no Lq x Lk matrix
is ever held. Rows that see no key get ``lse = +inf`` and return zeros (the division goes through a guarded
``l_i``), never NaN. Grouped-query attention reads K/V head ``h // kv_group`` in place: no copies.
"""

import triton
import triton.language as tl

from .dropout import _dropout_keep, _load_rng
from .tiles import (
    BLOCK_CLS,
    LN2,
    _causal_end,
    _frame_id,
    _frame_span,
    _key_end,
    _load_tile,
    _mm,
    _row_bias,
    _store_tile,
    _visible,
)


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
    rng_offset,
    bh,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Online-softmax update over the key tiles from ``lo`` up to ``hi`` (a CLS pass or one frame's patches
    under ``frames``, the whole key range, or up to the diagonal under ``is_causal``, without)."""
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
                      n_frames, n_patches, row_frame, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, IS_CAUSAL, False,
                      CLS_PASS)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that has seen no visible key yet keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:  # the normaliser l_i sums every probability; only the values see the dropped ones
            keep = _dropout_keep(seed, rng_offset, bh, offs_m, offs_n, Lk, dropout_p, False)
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v)
        m_i = m_new
        n_visited += BLOCK_N  # key columns computed, padding of the last tile included
    return acc, l_i, m_i, n_visited


@triton.jit
def _attn_fwd_kernel(
    Q_ptr,  # (B, H, Lq, D)
    K_ptr,  # (B, Hkv, Lk, D), H = Hkv * kv_group
    V_ptr,  # (B, Hkv, Lk, D)
    O_ptr,  # (B, H, Lq, D)
    LSE_ptr,  # (B, H, Lq) fp32, natural log-sum-exp of the scaled scores (+inf for a row that sees no key)
    KM_ptr,  # (B, Lk) u8 key mask
    AM_ptr,  # broadcast view of (B, H, Lq, Lk) u8 mask
    RNG_ptr,  # (2,) i64: dropout's Philox seed and offset, drawn on the device per call
    CNT_ptr,  # (B * H * n_m_blocks,) i32 key blocks visited per program (COUNT_BLOCKS only)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_km_b, stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, kv_group, Lq, Lk, n_frames, n_patches, qk_scale, dropout_p,
    LQ_BUCKET, LK_BUCKET,  # autotune key only: lengths rounded up to a power of two
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    COUNT_BLOCKS: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs K >= 16: pad the head dim")
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    tl.static_assert(not (HAS_FRAMES and IS_CAUSAL), "frames is a self-attention pattern of its own")
    pid_m = tl.program_id(0)
    # int64 before multiplying by strides: B*H*L*D overflows int32 at video scale
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    h_kv = h // kv_group  # once per program; kv_group == 1 (no GQA) is specialised by Triton and folds away
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_frame = _frame_id(offs_m, n_frames, n_patches)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q_ptr + b * stride_qb + h * stride_qh
    k_base = K_ptr + b * stride_kb + h_kv * stride_kh
    v_base = V_ptr + b * stride_vb + h_kv * stride_vh
    km_row_ptr = KM_ptr + b * stride_km_b
    am_ptr = AM_ptr + b * stride_am_b + h * stride_am_h
    seed, rng_offset = _load_rng(RNG_ptr, HAS_DROPOUT)
    bh = b * H + h  # one Philox stream per (batch, query head)

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
    if IS_CAUSAL:  # the key tiles past this block's diagonal are never visited
        key_end = _causal_end(pid_m * BLOCK_M, key_end, BLOCK_M)
    is_cls = offs_m < n_frames
    no_bias = tl.zeros([BLOCK_M], tl.float32)  # passes other than a frame pass take no row bias
    if HAS_FRAMES:
        acc, l_i, m_i, n_visited = _fwd_inner(
            acc, l_i, m_i, n_visited, q, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, n_frames,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, rng_offset, bh, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_CLS, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, True,
        )
        f_lo, f_hi = _frame_span(pid_m * BLOCK_M, Lq, n_frames, n_patches, BLOCK_M, False)
        for f in range(f_lo, f_hi + 1):  # each frame alone: a row sees all of its patches (CLS rows too) or none
            lo = n_frames + f * n_patches
            bias = _row_bias(is_cls | (row_frame == f))
            acc, l_i, m_i, n_visited = _fwd_inner(
                acc, l_i, m_i, n_visited, q, k_base, v_base, km_row_ptr, am_ptr, offs_m, lo,
                tl.minimum(lo + n_patches, key_end),
                stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
                Lq, Lk, n_frames, n_patches, row_frame, bias, qk_scale, seed, rng_offset, bh, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, False,
            )
    else:
        acc, l_i, m_i, n_visited = _fwd_inner(
            acc, l_i, m_i, n_visited, q, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, key_end,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, rng_offset, bh, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, False,
        )

    empty = l_i == 0.0  # no visible key: zeros out, lse = +inf so the backward gives zero gradients
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    _store_tile(O_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                out, offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_safe)) * LN2)
    tl.store(LSE_ptr + bh * Lq + offs_m, lse, mask=offs_m < Lq)
    if COUNT_BLOCKS:
        tl.store(CNT_ptr + bh * tl.num_programs(0) + pid_m, n_visited)
