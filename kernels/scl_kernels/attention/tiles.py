"""Triton helpers shared by the attention kernels: tile loads and stores, which (query, key) pairs a tile may
attend (``_visible``), and the frame-block pattern's bookkeeping (``_frame_id``, ``_frame_span``, ``_row_bias``),
plus the key-padding bound (``_key_end``) and the causal bounds (``_causal_end``, ``_causal_start``).

``frames=F`` (the flexible vision encoder's frame-block + global-CLS pattern) is generated from indices. Keys a query
block cannot see are never visited: a block computes the F CLS keys in one 16-wide tile (``BLOCK_CLS``), then each
frame it touches from that frame's first patch on, so with 64 x 64 tiles the patch rows of a 4-frame 224 px video
(L = 788) compute 0.40 of dense attention's key columns (its visible pairs are 0.25: the rest is tile rounding,
ceil(196 / 64) tiles per frame). Within a frame's pass a row sees all of the frame or none of it, so the mask is one
bias per row, with no per-element frame arithmetic.
"""

import triton
import triton.language as tl

# tile width of the CLS pass under ``frames`` (F is small; tl.dot needs >= 16)
BLOCK_CLS = tl.constexpr(16)
# the log-sum-exp is stored in natural log (what ``return_lse`` gives); the kernels' softmax runs in base 2
LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)


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
    IS_CAUSAL: tl.constexpr,
    KEY_MAJOR: tl.constexpr,
    CLS_PASS: tl.constexpr,
):
    """Which (query, key) pairs of a tile may attend: (len(q), len(k)), or (len(k), len(q)) if KEY_MAJOR.

    The dK/dV pass works on transposed tiles (keys as rows), so the mask is built in either orientation. A loop
    visits [lo, it_end) of the other axis in whole tiles; the tail of its last tile past ``it_end`` belongs to
    another pass (the CLS pass of ``frames`` stops at F, the frame pass takes over) and is masked here so that
    no pair is counted twice. ``IS_CAUSAL`` is SDPA's top-left alignment: query i sees keys 0..i, whatever Lq and
    Lk (the loops already stop at the diagonal's last tile; this masks the pairs above it inside that tile).
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
    if IS_CAUSAL:
        ok = ok & (ki <= qi)
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
def _causal_end(start_m, end, BLOCK_M: tl.constexpr):
    """One past the last key a query block [start_m, start_m + BLOCK_M) may see under ``is_causal`` (SDPA's
    top-left alignment: query i sees keys 0..i), capped at ``end``: the key tiles after it are never visited."""
    return tl.minimum(end, start_m + BLOCK_M)


@triton.jit
def _causal_start(start_n, BLOCK_M: tl.constexpr):
    """The first query tile (a multiple of BLOCK_M, as the loop's tiles are) that may see a key of the block
    starting at ``start_n`` under ``is_causal``: no query before key j sees key j."""
    return (start_n // BLOCK_M) * BLOCK_M
