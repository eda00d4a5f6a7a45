"""The attention backward kernels: probabilities recomputed from the forward's log-sum-exp, in two passes with no
atomics, so gradients are deterministic.

The dQ pass (one program per query block and query head) also computes ``delta = rowsum(dO * O)`` for its rows
and stores it; the dK/dV pass (one program per key block and K/V head, key-major tiles) runs after it and reads
that delta. Two launches, not FA2's three (a separate preprocess for delta): on a GPU a short sequence's backward is
bound by the host's launch cost, not by the kernels. A row with ``lse = +inf`` (no visible key) has probabilities
exp2(s - inf) = 0: zero gradients.

Grouped-query attention: a dK/dV program loops over the ``kv_group`` query heads that read its K/V head and sums
their contributions in registers, in a fixed order: no atomics, no expanded copies, the same bits every run.

A gradient of the returned log-sum-exp (``return_lse``) enters through delta: d lse_i / d s_ij = P_ij, so
dS = P * (dP - delta) + P * dlse = P * (dP - (delta - dlse)); the dQ pass stores delta - dlse and both passes run
unchanged.
"""

import triton
import triton.language as tl

from .dropout import _dropout_keep, _load_rng
from .tiles import (
    BLOCK_CLS,
    LOG2E,
    _causal_end,
    _causal_start,
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
    rng_offset,
    bh,
    dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Accumulate dK, dV of one key block over the query tiles from ``lo`` up to ``hi``, in transposed
    (key-major) tiles."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        if CLS_PASS or not HAS_FRAMES:  # the loop starts at 0 (or a tile's start under is_causal): whole tiles
            start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, offs_m < Lq, offs_d,
                       HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, offs_m < Lq, offs_d,
                        HEAD_DIM, BLOCK_D)
        lse = tl.load(lse_base + offs_m, mask=offs_m < Lq, other=float("inf")) * LOG2E  # base 2, as the scores
        delta = tl.load(delta_base + offs_m, mask=offs_m < Lq, other=0.0)
        s_t = _mm(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M)
        if HAS_FRAMES and not CLS_PASS:
            s_t += row_bias[:, None]
        ok = _visible(offs_m, offs_n, Lq, Lk, hi, km_row_ptr, stride_km_n, am_ptr, stride_am_m, stride_am_n,
                      n_frames, n_patches, row_frame, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, IS_CAUSAL, True,
                      CLS_PASS)
        p_t = tl.where(ok, tl.exp2(s_t - lse[None, :]), 0.0)
        dp_t = _mm(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
        if HAS_DROPOUT:  # FA2: dV sees the dropped probabilities, dS = P * (Z * dP / (1 - p) - delta)
            keep_t = _dropout_keep(seed, rng_offset, bh, offs_m, offs_n, Lk, dropout_p, True)
            inv_keep = 1.0 / (1.0 - dropout_p)
            dv += _mm(tl.where(keep_t, p_t * inv_keep, 0.0).to(do.dtype), do)
            dp_t = tl.where(keep_t, dp_t * inv_keep, 0.0)
        else:
            dv += _mm(p_t.to(do.dtype), do)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _mm(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit
def _bwd_dkdv_head(
    dk,
    dv,
    k,
    v,
    Q_ptr,
    DO_ptr,
    LSE_ptr,
    DELTA_ptr,
    AM_ptr,
    km_row_ptr,
    offs_n,
    start_n,
    has_key,
    b,
    h,  # the query head whose contribution is added
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, Lq, Lk, n_frames, n_patches, row_frame, qk_scale, seed, rng_offset, dropout_p,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
):
    """Add query head ``h``'s contribution to the dK, dV of one key block: under ``frames`` the CLS queries, then
    the patch queries of each frame the block's keys belong to; otherwise every query tile (from the diagonal's
    tile on under ``is_causal``)."""
    bh = b * H + h
    q_base = Q_ptr + b * stride_qb + h * stride_qh
    do_base = DO_ptr + b * stride_dob + h * stride_doh
    lse_base = LSE_ptr + bh * Lq
    delta_base = DELTA_ptr + bh * Lq
    am_ptr = AM_ptr + b * stride_am_b + h * stride_am_h
    no_bias = tl.zeros([BLOCK_N], tl.float32)  # passes other than a frame pass take no row bias
    if HAS_FRAMES:
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, km_row_ptr, am_ptr, offs_n, 0,
            tl.where(has_key, n_frames, 0),
            stride_qm, stride_qd, stride_dom, stride_dod, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, rng_offset, bh, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_CLS, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, True,
        )
        f_lo, f_hi = _frame_span(start_n, Lk, n_frames, n_patches, BLOCK_N, True)
        for f in range(f_lo, tl.where(has_key, f_hi + 1, f_lo)):  # each frame alone: its key rows see it all
            lo = n_frames + f * n_patches
            bias = _row_bias(row_frame == f)
            dk, dv = _bwd_dkdv_inner(
                dk, dv, k, v, q_base, do_base, lse_base, delta_base, km_row_ptr, am_ptr, offs_n, lo,
                tl.minimum(lo + n_patches, Lq),
                stride_qm, stride_qd, stride_dom, stride_dod, stride_km_n, stride_am_m, stride_am_n,
                Lq, Lk, n_frames, n_patches, row_frame, bias, qk_scale, seed, rng_offset, bh, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_M, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, False,
            )
    else:
        if IS_CAUSAL:  # the query tiles before this key block's diagonal see none of its keys
            lo = _causal_start(start_n, BLOCK_M)
        else:
            lo = 0
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, km_row_ptr, am_ptr, offs_n, lo,
            tl.where(has_key, Lq, lo),
            stride_qm, stride_qd, stride_dom, stride_dod, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, rng_offset, bh, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_M, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, False,
        )
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q_ptr,  # (B, H, Lq, D)
    K_ptr,  # (B, Hkv, Lk, D), H = Hkv * kv_group
    V_ptr,  # (B, Hkv, Lk, D)
    DO_ptr,  # (B, H, Lq, D)
    LSE_ptr,  # (B, H, Lq) fp32, natural log
    DELTA_ptr,  # (B, H, Lq) fp32
    DK_ptr,  # (B, Hkv, Lk, D)
    DV_ptr,  # (B, Hkv, Lk, D)
    KM_ptr,  # (B, Lk) u8
    AM_ptr,  # broadcast view of (B, H, Lq, Lk) u8
    RNG_ptr,  # (2,) i64: dropout's Philox seed and offset
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_km_b, stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, kv_group, Lq, Lk, n_frames, n_patches, qk_scale, sm_scale, dropout_p,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs K >= 16: pad the head dim")
    tl.static_assert(not (HAS_FRAMES and IS_CAUSAL), "frames is a self-attention pattern of its own")
    pid_n = tl.program_id(0)
    h_kv = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    row_frame = _frame_id(offs_n, n_frames, n_patches)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K_ptr + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kn
                   + offs_d[None, :] * stride_kd, offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)  # (BLOCK_N, BLOCK_D)
    v = _load_tile(V_ptr + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vn
                   + offs_d[None, :] * stride_vd, offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    km_row_ptr = KM_ptr + b * stride_km_b
    seed, rng_offset = _load_rng(RNG_ptr, HAS_DROPOUT)
    if HAS_KEY_MASK:  # a key tile of padding only: no query sees it, dK = dV = 0 without a loop
        has_key = tl.max(tl.load(km_row_ptr + offs_n * stride_km_n, mask=offs_n < Lk, other=0), 0) != 0
    else:
        has_key = True
    for g in range(0, kv_group):  # the query heads reading this K/V head, summed in a fixed order
        dk, dv = _bwd_dkdv_head(
            dk, dv, k, v, Q_ptr, DO_ptr, LSE_ptr, DELTA_ptr, AM_ptr, km_row_ptr, offs_n, start_n, has_key, b,
            h_kv * kv_group + g,
            stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom, stride_dod,
            stride_km_n, stride_am_b, stride_am_h, stride_am_m, stride_am_n,
            H, Lq, Lk, n_frames, n_patches, row_frame, qk_scale, seed, rng_offset, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL,
        )
    # ds above is the gradient of the natural-scale logits q.k * sm_scale; the chain rule adds sm_scale once
    _store_tile(DK_ptr + b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dkn
                + offs_d[None, :] * stride_dkd, dk * sm_scale, offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)
    _store_tile(DV_ptr + b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvn
                + offs_d[None, :] * stride_dvd, dv, offs_n < Lk, offs_d, HEAD_DIM, BLOCK_D)


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
                      n_frames, n_patches, row_frame, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, IS_CAUSAL, False,
                      CLS_PASS)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, rng_offset, bh, offs_m, offs_n, Lk, dropout_p, False)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds.to(k.dtype), k)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q_ptr,  # (B, H, Lq, D)
    K_ptr,  # (B, Hkv, Lk, D), H = Hkv * kv_group
    V_ptr,  # (B, Hkv, Lk, D)
    O_ptr,  # (B, H, Lq, D): the forward's output, for delta
    DO_ptr,  # (B, H, Lq, D)
    LSE_ptr,  # (B, H, Lq) fp32, natural log
    DLSE_ptr,  # (B, H, Lq) fp32: the returned lse's gradient (HAS_DLSE only)
    DELTA_ptr,  # (B, H, Lq) fp32, written here for the dK/dV pass
    DQ_ptr,  # (B, H, Lq, D)
    KM_ptr,  # (B, Lk) u8
    AM_ptr,  # broadcast view of (B, H, Lq, Lk) u8
    RNG_ptr,  # (2,) i64: dropout's Philox seed and offset
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_km_b, stride_km_n,
    stride_am_b, stride_am_h, stride_am_m, stride_am_n,
    H, kv_group, Lq, Lk, n_frames, n_patches, qk_scale, sm_scale, dropout_p,
    LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HAS_FRAMES: tl.constexpr,
    HAS_ATTN_MASK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs K >= 16: pad the head dim")
    tl.static_assert(not (HAS_FRAMES and IS_CAUSAL), "frames is a self-attention pattern of its own")
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    h_kv = h // kv_group  # once per program; kv_group == 1 (no GQA) is specialised by Triton and folds away
    bh = b * H + h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_frame = _frame_id(offs_m, n_frames, n_patches)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom
                    + offs_d[None, :] * stride_dod, offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.load(LSE_ptr + bh * Lq + offs_m, mask=offs_m < Lq, other=float("inf")) * LOG2E  # base 2
    # delta = rowsum(dO * O), the softmax-Jacobian term of both gradient passes: this pass needs it for its own
    # rows only, so it computes it (one O tile more) and stores it for the dK/dV pass, launched after this one,
    # instead of a preprocess kernel launched before both
    o = _load_tile(O_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                   offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:  # the returned lse's gradient (module docstring)
        delta -= tl.load(DLSE_ptr + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
    tl.store(DELTA_ptr + bh * Lq + offs_m, delta, mask=offs_m < Lq)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K_ptr + b * stride_kb + h_kv * stride_kh
    v_base = V_ptr + b * stride_vb + h_kv * stride_vh
    km_row_ptr = KM_ptr + b * stride_km_b
    am_ptr = AM_ptr + b * stride_am_b + h * stride_am_h
    seed, rng_offset = _load_rng(RNG_ptr, HAS_DROPOUT)
    if HAS_KEY_MASK:
        key_end = _key_end(km_row_ptr, stride_km_n, Lk, BLOCK_N)
    else:
        key_end = Lk
    if IS_CAUSAL:  # the key tiles past this block's diagonal are never visited
        key_end = _causal_end(pid_m * BLOCK_M, key_end, BLOCK_M)
    is_cls = offs_m < n_frames
    no_bias = tl.zeros([BLOCK_M], tl.float32)  # passes other than a frame pass take no row bias
    if HAS_FRAMES:
        dq = _bwd_dq_inner(
            dq, q, do, lse, delta, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, n_frames,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, rng_offset, bh, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_CLS, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, True,
        )
        f_lo, f_hi = _frame_span(pid_m * BLOCK_M, Lq, n_frames, n_patches, BLOCK_M, False)
        for f in range(f_lo, f_hi + 1):  # each frame alone, as in the forward
            lo = n_frames + f * n_patches
            bias = _row_bias(is_cls | (row_frame == f))
            dq = _bwd_dq_inner(
                dq, q, do, lse, delta, k_base, v_base, km_row_ptr, am_ptr, offs_m, lo,
                tl.minimum(lo + n_patches, key_end),
                stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
                Lq, Lk, n_frames, n_patches, row_frame, bias, qk_scale, seed, rng_offset, bh, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, False,
            )
    else:
        dq = _bwd_dq_inner(
            dq, q, do, lse, delta, k_base, v_base, km_row_ptr, am_ptr, offs_m, 0, key_end,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_km_n, stride_am_m, stride_am_n,
            Lq, Lk, n_frames, n_patches, row_frame, no_bias, qk_scale, seed, rng_offset, bh, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_N, HAS_KEY_MASK, HAS_FRAMES, HAS_ATTN_MASK, HAS_DROPOUT, IS_CAUSAL, False,
        )
    _store_tile(DQ_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
                dq * sm_scale, offs_m < Lq, offs_d, HEAD_DIM, BLOCK_D)
