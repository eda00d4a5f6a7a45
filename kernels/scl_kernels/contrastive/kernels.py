"""The Triton kernels of ``info_nce`` and ``cosine_recovery``, readable on their own (the host side is launch.py).

Notation: ``x``/``y`` are the two sides, (N, D) each, rows not normalised; ``inv_x_i = 1 / max(||x_i||, eps)``;
the logits are ``s_ij = (x_i . y_j) inv_x_i inv_y_j / T``. The dot products are taken on the raw rows with fp32
accumulation and scaled afterwards, so fp16/bf16 inputs lose nothing to a rounded normalisation: at T = 0.01 a
cosine rounded to bf16 would move a logit by ~0.4.

Forward (``_info_nce_fwd_kernel``): one program per (block of rows, range of columns) streams its similarity
tiles once. Each tile feeds the rows' online log-sum-exp (registers) and, for the symmetric loss, the columns':
a column's statistics need every row block, so each program writes the log-sum-exp of each of its columns over
its own rows (one fp32 per row block and column: N^2 / BLOCK_M values, 1/128 of the logits) and
``_info_nce_lse_kernel`` combines those, and the rows' per-range ones, in a fixed order. Both directions keep the
diagonal out of the sums: what is stored is ``x = log sum_{j != i} e^{s_ij} - s_ii``, from which ``_lse_q_loss``
derives the log-sum-exp, the off-diagonal mass ``q_i = 1 - p_ii = sigmoid(x)`` and the loss
``-log p_ii = softplus(x)``.

Diagonal precision: with a matched pair at T = 0.01 the diagonal logit is ~100 and ``p_ii`` rounds to 1, so
``G_ii = p_ii - 1 = exp(s_ii - lse_i) - 1`` would be pure rounding (``lse`` carries ~100 * 2^-24), and through
``dL/dT = -sum G_ij s_ij / T`` that noise (x100 per row) swamps a true gradient of ~1e-22. ``q_i`` from ``x`` is
exact in relative terms, so the backward uses ``G_ii = -q_i``, and the loss is ``softplus(x)`` where ``lse - s_ii``
would cancel. The C++ CPU kernel (``csrc/info_nce.cpp``) keeps the same statistics.

Backward, with ``G`` the gradient of the loss w.r.t. the logits divided by ``g/N`` (g the upstream gradient):
``G = P_row + P_col - 2I`` when symmetric, ``P_row - I`` otherwise, entries in [-2, 2]:

- ``dL/dx_i = (g/N) inv_x_i (sum_j G_ij yhat_j / T - inv_x_i r_i x_i)`` with ``yhat_j = inv_y_j y_j`` and
  ``r_i = sum_j G_ij s_ij`` (the projection through the normalisation needs only the scalar ``r_i``);
- ``dL/dy_j`` the same with ``G^T`` (``c_j = sum_i G_ij s_ij``);
- ``dL/dT = -(g/N) sum_i r_i / T``.

``_info_nce_grad_kernel`` rebuilds one (rows, columns) tile of ``G`` from the saved statistics with one similarity
GEMM over D, stores it in the operand dtype and the tile's row and column sums of ``G * s`` in fp32 (``G`` in
fp32, not the rounded copy: ``r`` feeds the temperature gradient). ``_info_nce_gemm_kernel`` then reduces a chunk
of ``G`` against the normalised rows with fp32 accumulation (split over K when the output has too few tiles),
and ``_info_nce_dx_kernel`` applies the projection. FlashAttention's backward keeps its (rows, D) accumulator in
registers instead; at D = 512-768 that does not fit, and splitting D over programs recomputes the similarity
once per slice (what this module did before: 2 (D / 128 + 1) GEMM-equivalents for D = 512-768 where 3 suffice).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
# running maxima start here, not at -inf: a row (or column) with no off-diagonal entry keeps exp2(-inf - m) = 0
# instead of exp2(-inf + inf) = NaN; any real logit (|s| <= 1/T in log2 units) is far above it
M_FLOOR: tl.constexpr = tl.constexpr(-1.0e30)


@triton.jit
def _row_stats_kernel(
    X_ptr,  # (N, D)
    Y_ptr,  # (N, D)
    INV_X_ptr,  # (N,) fp32 out: 1 / max(||x_i||, eps)
    INV_Y_ptr,  # (N,) fp32 out
    COS_ptr,  # (N,) fp32 out: cos(x_i, y_i), written only when HAS_COS
    N,
    D,
    stride_x_n,
    stride_x_d,
    stride_y_n,
    stride_y_d,
    EPS: tl.constexpr,
    HAS_COS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 at N*D > 2^31
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    xx = tl.zeros([BLOCK_M], dtype=tl.float32)
    yy = tl.zeros([BLOCK_M], dtype=tl.float32)
    xy = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (offs_k[None, :] < D)
        x = tl.load(X_ptr + offs_m[:, None] * stride_x_n + offs_k[None, :] * stride_x_d, mask=mask, other=0.0)
        y = tl.load(Y_ptr + offs_m[:, None] * stride_y_n + offs_k[None, :] * stride_y_d, mask=mask, other=0.0)
        x = x.to(tl.float32)
        y = y.to(tl.float32)
        xx += tl.sum(x * x, 1)
        yy += tl.sum(y * y, 1)
        if HAS_COS:
            xy += tl.sum(x * y, 1)
    inv_x = 1.0 / tl.maximum(tl.sqrt(xx), EPS)
    inv_y = 1.0 / tl.maximum(tl.sqrt(yy), EPS)
    tl.store(INV_X_ptr + offs_m, inv_x, mask=row_ok)
    tl.store(INV_Y_ptr + offs_m, inv_y, mask=row_ok)
    if HAS_COS:
        tl.store(COS_ptr + offs_m, xy * inv_x * inv_y, mask=row_ok)


@triton.jit
def _cosine_bwd_kernel(
    X_ptr,  # (N, D): the side whose gradient this launch writes
    Y_ptr,  # (N, D): the other side
    INV_X_ptr,  # (N,) fp32
    INV_Y_ptr,  # (N,) fp32
    COS_ptr,  # (N,) fp32
    DLOSS_ptr,  # () fp32 upstream gradient
    DX_ptr,  # (N, D) out, X's dtype
    N,
    D,
    stride_x_n,
    stride_x_d,
    stride_y_n,
    stride_y_d,
    stride_dx_n,
    stride_dx_d,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # loss = mean_i (1 - cos_i);  d cos_i / d x_i = inv_x_i (y_i inv_y_i - x_i inv_x_i cos_i)
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    coef = -tl.load(DLOSS_ptr).to(tl.float32) / N
    inv_x = tl.load(INV_X_ptr + offs_m, mask=row_ok, other=0.0)
    inv_y = tl.load(INV_Y_ptr + offs_m, mask=row_ok, other=0.0)
    cos = tl.load(COS_ptr + offs_m, mask=row_ok, other=0.0)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (offs_k[None, :] < D)
        x = tl.load(X_ptr + offs_m[:, None] * stride_x_n + offs_k[None, :] * stride_x_d, mask=mask, other=0.0)
        y = tl.load(Y_ptr + offs_m[:, None] * stride_y_n + offs_k[None, :] * stride_y_d, mask=mask, other=0.0)
        dx = (coef * inv_x)[:, None] * (y.to(tl.float32) * inv_y[:, None] - x.to(tl.float32) * (inv_x * cos)[:, None])
        tl.store(
            DX_ptr + offs_m[:, None] * stride_dx_n + offs_k[None, :] * stride_dx_d,
            dx.to(DX_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def _dot_tile(
    X_ptr,
    Y_ptr,
    offs_m,
    offs_n,
    row_ok,
    col_ok,
    D,
    stride_x_n,
    stride_x_d,
    stride_y_n,
    stride_y_d,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Raw (unnormalised) x_i . y_j for a (BLOCK_M, BLOCK_N) tile, fp32 accumulation over D in BLOCK_K steps."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < D
        x = tl.load(
            X_ptr + offs_m[:, None] * stride_x_n + offs_k[None, :] * stride_x_d,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        yt = tl.load(  # loaded transposed, (BLOCK_K, BLOCK_N), so the dot needs no tl.trans
            Y_ptr + offs_k[:, None] * stride_y_d + offs_n[None, :] * stride_y_n,
            mask=k_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(x, yt, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _log2_sum(m, l_sum):
    """m + log2(l_sum): the log2-sum-exp2 of a running (max, sum) pair; -inf for an empty sum (no log2(0))."""
    return tl.where(l_sum > 0.0, m + tl.log2(tl.where(l_sum > 0.0, l_sum, 1.0)), float("-inf"))


@triton.jit
def _lse_q_loss(lse_off2, diag2):
    """From ``log2 sum_{j != i} 2^{s2_ij}`` and the diagonal ``s2_ii`` (logits in log2 units; the first is -inf
    when the row has no off-diagonal entry): the row's log-sum-exp (natural units), the off-diagonal mass
    ``q = 1 - p_ii = sigmoid(x)`` and the loss ``-log p_ii = softplus(x)``, with ``x = (lse_off2 - diag2) ln 2``.
    Both come from ``e = exp(-|x|)`` without cancellation: q stays exact in relative terms at q ~ 1e-30."""
    x = (lse_off2 - diag2) * LN2
    e = tl.exp(-tl.abs(x))  # in [0, 1]
    u = 1.0 + e
    log1p_e = tl.where(u == 1.0, e, tl.log(u) * e / tl.where(u == 1.0, 1.0, u - 1.0))  # Kahan's log1p
    softplus = tl.maximum(x, 0.0) + log1p_e
    q = tl.where(x < 0.0, e / u, 1.0 / u)
    return diag2 * LN2 + softplus, q, softplus


@triton.jit
def _info_nce_fwd_kernel(
    X_ptr,  # (N, D): a, the rows
    Y_ptr,  # (N, D): b, streamed as column tiles
    INV_X_ptr,  # (N,) fp32
    INV_Y_ptr,  # (N,) fp32
    T_ptr,  # () temperature
    DIAG_ptr,  # (N,) fp32 out: s_ii in log2 units, from the program whose columns hold the diagonal
    ROW_PART_ptr,  # (SPLITS, N) fp32 out: log2 sum_{j in split, j != i} 2^{s2_ij}, SPLITS = the grid's first axis
    COL_PART_ptr,  # (cdiv(N, BLOCK_M), N) fp32 out: log2 sum_{i in block, i != j} 2^{s2_ij}; written when COLUMNS
    N,
    D,
    stride_x_n,
    stride_x_d,
    stride_y_n,
    stride_y_d,
    COLUMNS: tl.constexpr,  # also produce the column statistics (the symmetric loss)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # one program per (split of the columns, block of rows): N / BLOCK_M row blocks alone are too few programs
    # to fill a GPU at N = 4096, so the columns are split too and the rows' statistics combined afterwards
    pid_s = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    span = tl.cdiv(tl.cdiv(N, BLOCK_N), tl.num_programs(0)) * BLOCK_N
    col_start = pid_s * span
    col_end = tl.minimum(col_start + span, N)
    inv_t = 1.0 / tl.load(T_ptr).to(tl.float32)
    # 1/T, the row's inverse norm and log2(e) folded into one per-row factor: one multiply per logit, then exp2
    row_scale = tl.load(INV_X_ptr + offs_m, mask=row_ok, other=0.0) * (inv_t * LOG2E)
    m_i = tl.full([BLOCK_M], M_FLOOR, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # off-diagonal sum, relative to m_i
    diag = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(col_start, col_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < col_end
        s = _dot_tile(
            X_ptr, Y_ptr, offs_m, offs_n, row_ok, col_ok, D,
            stride_x_n, stride_x_d, stride_y_n, stride_y_d, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
        )  # fmt: skip
        inv_y = tl.load(INV_Y_ptr + offs_n, mask=col_ok, other=0.0)
        s = s * row_scale[:, None] * inv_y[None, :]  # logits in log2 units
        on_diag = offs_m[:, None] == offs_n[None, :]
        diag += tl.sum(tl.where(on_diag, s, 0.0), 1)
        off = tl.where(on_diag | (~col_ok[None, :]), float("-inf"), s)
        m_new = tl.maximum(m_i, tl.max(off, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(off - m_new[:, None]), 1)
        m_i = m_new
        if COLUMNS:  # every (row block, column) pair is visited once over the whole grid: no combining here
            off = tl.where(row_ok[:, None], off, float("-inf"))
            m_col = tl.maximum(tl.max(off, 0), M_FLOOR)
            l_col = tl.sum(tl.exp2(off - m_col[None, :]), 0)
            tl.store(COL_PART_ptr + pid_m * N + offs_n, _log2_sum(m_col, l_col), mask=col_ok)
    tl.store(ROW_PART_ptr + pid_s * N + offs_m, _log2_sum(m_i, l_i), mask=row_ok)
    tl.store(DIAG_ptr + offs_m, diag, mask=row_ok & (offs_m >= col_start) & (offs_m < col_end))


@triton.jit
def _info_nce_lse_kernel(
    PART_ptr,  # (SPLITS + ROW_BLOCKS, N) fp32: the rows' partial sums, then the columns' (see the forward kernel)
    DIAG_ptr,  # (N,) fp32: s_ii in log2 units
    LSE_ptr,  # (2, N) fp32 out: logsumexp over each row of s, then over each column
    Q_ptr,  # (2, N) fp32 out: 1 - p_ii of each row's softmax, then of each column's
    LOSS_ptr,  # (2, N) fp32 out: -log p_ii, rows then columns
    N,
    SPLITS,
    ROW_BLOCKS,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    side = tl.program_id(1)  # 0: rows (the a -> b direction), 1: columns (b -> a)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    first = side * SPLITS
    count = SPLITS + side * (ROW_BLOCKS - SPLITS)
    m = tl.full([BLOCK_N], M_FLOOR, dtype=tl.float32)
    l_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for p0 in range(0, count, BLOCK_P):  # in order: the same sum on every run
        offs_p = p0 + tl.arange(0, BLOCK_P)
        part = tl.load(
            PART_ptr + (first + offs_p).to(tl.int64)[:, None] * N + offs_n[None, :],
            mask=(offs_p < count)[:, None] & n_ok[None, :],
            other=float("-inf"),
        )
        m_new = tl.maximum(m, tl.max(part, 0))
        l_sum = l_sum * tl.exp2(m - m_new) + tl.sum(tl.exp2(part - m_new[None, :]), 0)
        m = m_new
    diag = tl.load(DIAG_ptr + offs_n, mask=n_ok, other=0.0)
    lse, q, loss = _lse_q_loss(_log2_sum(m, l_sum), diag)
    out = side * N + offs_n
    tl.store(LSE_ptr + out, lse, mask=n_ok)
    tl.store(Q_ptr + out, q, mask=n_ok)
    tl.store(LOSS_ptr + out, loss, mask=n_ok)


@triton.jit
def _info_nce_grad_kernel(
    X_ptr,  # (N, D): a
    Y_ptr,  # (N, D): b
    INV_X_ptr,  # (N,) fp32
    INV_Y_ptr,  # (N,) fp32
    LSE_X_ptr,  # (N,) fp32: logsumexp over each row of s
    LSE_Y_ptr,  # (N,) fp32: logsumexp over each column of s, read when COL_TERM
    Q_X_ptr,  # (N,) fp32: 1 - softmax over row i of s at (i, i)
    Q_Y_ptr,  # (N,) fp32: 1 - softmax over column j of s at (j, j), read when COL_TERM
    T_ptr,  # () temperature
    G_ptr,  # (ROWS, N) out, the operand dtype: rows row0 .. row0 + ROWS - 1 of G
    RPART_ptr,  # (ROWS, >= cdiv(N, BLOCK_N)) fp32 out: sum over this program's columns of G * s, per row
    CPART_ptr,  # (>= cdiv(ROWS, BLOCK_M), N) fp32 out: sum over this program's rows of G * s, per column
    row0,
    ROWS,
    N,
    D,
    stride_x_n,
    stride_x_d,
    stride_y_n,
    stride_y_d,
    stride_g_m,
    stride_rpart_m,
    COL_TERM: tl.constexpr,  # G holds the column softmax too (the symmetric loss)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)  # column blocks vary fastest: the programs running together share their rows of a
    pid_m = tl.program_id(1).to(tl.int64)
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of the chunk
    r_ok = offs_r < ROWS
    offs_m = row0 + offs_r  # rows of a
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    s = _dot_tile(
        X_ptr, Y_ptr, offs_m, offs_n, r_ok, col_ok, D,
        stride_x_n, stride_x_d, stride_y_n, stride_y_d, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
    )  # fmt: skip
    inv_t = 1.0 / tl.load(T_ptr).to(tl.float32)
    row_scale = tl.load(INV_X_ptr + offs_m, mask=r_ok, other=0.0) * (inv_t * LOG2E)
    inv_y = tl.load(INV_Y_ptr + offs_n, mask=col_ok, other=0.0)
    s = s * row_scale[:, None] * inv_y[None, :]  # log2 units
    on_diag = offs_m[:, None] == offs_n[None, :]
    # on the diagonal G = p - 1 = -q, taken from the forward (see the module docstring); elsewhere the exponent
    # is <= 0 (the log-sum-exp bounds every logit of its row)
    lse_x = tl.load(LSE_X_ptr + offs_m, mask=r_ok, other=0.0) * LOG2E
    q_x = tl.load(Q_X_ptr + offs_m, mask=r_ok, other=0.0)
    g = tl.where(on_diag, -q_x[:, None], tl.exp2(s - lse_x[:, None]))
    if COL_TERM:
        lse_y = tl.load(LSE_Y_ptr + offs_n, mask=col_ok, other=0.0) * LOG2E
        q_y = tl.load(Q_Y_ptr + offs_n, mask=col_ok, other=0.0)
        g += tl.where(on_diag, -q_y[None, :], tl.exp2(s - lse_y[None, :]))
    valid = r_ok[:, None] & col_ok[None, :]
    g = tl.where(valid, g, 0.0)
    gs = g * s
    tl.store(RPART_ptr + offs_r * stride_rpart_m + pid_n, tl.sum(gs, 1) * LN2, mask=r_ok)
    tl.store(CPART_ptr + pid_m * N + offs_n, tl.sum(gs, 0) * LN2, mask=col_ok)
    # G is in [-2, 2] (the scale g/N comes in the epilogue), so fp16/bf16 storage loses relative precision only,
    # as FlashAttention's P, and never underflows at large N
    tl.store(G_ptr + offs_r[:, None] * stride_g_m + offs_n[None, :], g.to(G_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _info_nce_gemm_kernel(
    G_ptr,  # (M, K) through its strides: a chunk of G (gradient of a) or its transpose (gradient of b)
    X_ptr,  # (K, D): the other side's normalised rows
    ACC_ptr,  # (SPLIT, M, D) fp32 out, contiguous: one partial product per split of K
    M,
    D,
    K,
    K_SPLIT,  # the K range of one split: a multiple of BLOCK_K
    stride_g_m,
    stride_g_k,
    stride_x_k,
    stride_x_d,
    ACCUMULATE: tl.constexpr,  # add to what ACC holds (the gradient of b, summed over the chunks in order)
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_d = tl.program_id(0)  # D blocks vary fastest: the programs running together share their rows of G
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_s * K_SPLIT
    k_len = tl.minimum(K_SPLIT, K - k_start)
    # a 64-bit base per split and 32-bit offsets inside it (the transpose's K stride is N: k * N overflows int32
    # past N = 46,341, the offsets within one split do not); rows and columns past the edge read the last one
    # again (never stored), so only K needs a mask. Two 64-bit pointer tiles live across the loop spilled 72-96 B.
    g_base = G_ptr + k_start.to(tl.int64) * stride_g_k
    x_base = X_ptr + k_start.to(tl.int64) * stride_x_k
    g_offs = tl.minimum(offs_m, M - 1)[:, None] * stride_g_m + offs_k[None, :] * stride_g_k
    x_offs = offs_k[:, None] * stride_x_k + tl.minimum(offs_d, D - 1)[None, :] * stride_x_d
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, k_len, BLOCK_K):
        k_ok = offs_k < k_len - k0
        g = tl.load(g_base + g_offs, mask=k_ok[None, :], other=0.0)
        x = tl.load(x_base + x_offs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(g, x, acc, input_precision=PRECISION)
        g_base += BLOCK_K * stride_g_k
        x_base += BLOCK_K * stride_x_k
    out = ACC_ptr + pid_s.to(tl.int64) * M * D + offs_m[:, None] * D + offs_d[None, :]
    mask = (offs_m < M)[:, None] & (offs_d < D)[None, :]
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0)
    tl.store(out, acc, mask=mask)


@triton.jit
def _info_nce_dx_kernel(
    ACC_ptr,  # (SPLIT, M, D) fp32: sum_j G_ij yhat_j, in SPLIT parts
    X_ptr,  # (M, D): the rows whose gradient this launch writes
    INV_X_ptr,  # (M,) fp32
    R_ptr,  # (M,) fp32: r_i = sum_j G_ij s_ij
    T_ptr,  # () temperature
    DLOSS_ptr,  # () fp32 upstream gradient
    DX_ptr,  # (M, D) out, X's dtype
    M,
    D,
    SPLIT,
    N,  # the batch size: the loss is a mean over N rows
    stride_x_n,
    stride_x_d,
    stride_dx_n,
    stride_dx_d,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    mask = m_ok[:, None] & (offs_d[None, :] < D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    parts = ACC_ptr + offs_m[:, None] * D + offs_d[None, :]
    for _ in range(SPLIT):  # in order: the same sum on every run
        acc += tl.load(parts, mask=mask, other=0.0)
        parts += M * D
    inv_t = 1.0 / tl.load(T_ptr).to(tl.float32)
    coef = tl.load(DLOSS_ptr).to(tl.float32) / N
    inv_x = tl.load(INV_X_ptr + offs_m, mask=m_ok, other=0.0)
    r = tl.load(R_ptr + offs_m, mask=m_ok, other=0.0)
    x = tl.load(X_ptr + offs_m[:, None] * stride_x_n + offs_d[None, :] * stride_x_d, mask=mask, other=0.0)
    dx = (coef * inv_x)[:, None] * (acc * inv_t - (inv_x * r)[:, None] * x.to(tl.float32))
    tl.store(DX_ptr + offs_m[:, None] * stride_dx_n + offs_d[None, :] * stride_dx_d,
             dx.to(DX_ptr.dtype.element_ty), mask=mask)  # fmt: skip


@triton.jit
def _scale_rows_kernel(
    X_ptr,  # (N, D)
    INV_ptr,  # (N,) fp32
    OUT_ptr,  # (N, D) out, contiguous: x_i * inv_i, rounded once to OUT's dtype
    N,
    D,
    stride_x_n,
    stride_x_d,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_m = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    mask = m_ok[:, None] & (offs_d[None, :] < D)
    x = tl.load(X_ptr + offs_m[:, None] * stride_x_n + offs_d[None, :] * stride_x_d, mask=mask, other=0.0)
    inv = tl.load(INV_ptr + offs_m, mask=m_ok, other=0.0)
    out = x.to(tl.float32) * inv[:, None]
    tl.store(OUT_ptr + offs_m[:, None] * D + offs_d[None, :], out.to(OUT_ptr.dtype.element_ty), mask=mask)
