"""Fused contrastive losses: InfoNCE (ITC and SCL) and the cosine recovery loss.

``info_nce`` never builds the N x N similarity matrix. A small pre-kernel computes each row's inverse L2 norm;
the forward kernel streams column tiles of ``b`` past a row block of ``a``, computes raw dot products with
``tl.dot`` (fp32 accumulation) and scales them by ``inv_a_i * inv_b_j / T`` afterwards, so the normalised rows
are never written out and fp16/bf16 inputs lose nothing to a rounded normalisation. Each row keeps an online
log-sum-exp; the transposed direction is the same kernel with ``a`` and ``b`` swapped (the column LSE of
``s`` is the row LSE of ``s^T``). What the backward needs is six length-N fp32 vectors (inverse norms, the
two LSEs and the two ``q``, below): memory is O(N*D) at any N.

Diagonal precision: with a matched pair at T = 0.01 the diagonal logit is ~100 and ``p_ii`` rounds to 1, so
``G_ii = p_ii - 1 = exp(s_ii - lse_i) - 1`` would be pure rounding (``lse`` carries ~100 * 2^-24), and through
``dL/dT = -sum G_ij s_ij / T`` that noise (x100 per row) swamps a true gradient of ~1e-22. The forward therefore
also keeps the off-diagonal part of the running sum and stores ``q_i = 1 - p_ii`` from it (exact in relative
terms); the backward uses ``G_ii = -q_i``, and the per-row loss is ``-log1p(-q_i)`` where that does not cancel.
The C++ CPU kernel (``csrc/info_nce.cpp``) keeps the same statistics.

Backward, with ``G`` the gradient of the loss w.r.t. the logits ``s = (a_i . b_j) inv_a_i inv_b_j / T``
(``G = g/N (softmax_row(s) + softmax_col(s) - 2I)`` when symmetric):

- ``dL/da_i = inv_a_i (sum_j G_ij inv_b_j b_j / T - inv_a_i r_i a_i)`` with ``r_i = sum_j G_ij s_ij``: the
  projection through the normalisation needs only the scalar ``r_i``, which the tile loop accumulates, so no
  separate normalisation-backward pass is needed;
- ``dL/db`` is the same kernel on the swapped problem (``G^T`` has the same form with the terms exchanged);
- ``dL/dT = -sum_i r_i / T``.

The backward kernel recomputes the similarity tiles (FlashAttention's trade: FLOPs for memory); its output
block is split over D on the grid (``BLOCK_DO``) so a wide feature (512 for ITC, 768 for SCL) never needs a
(BLOCK_M, D) fp32 accumulator in registers.

Dtypes: the Triton kernels take fp16, bf16 and fp32 (fp32 dots run in full IEEE precision, not tf32: at
T = 0.01 a tf32 rounding of the cosine moves a logit by ~0.05). Every backend returns the loss in float32
(float64 for float64 inputs): the accumulation is fp32, and rounding a scalar loss to fp16 only loses digits.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import reference
from ._compile import CompileSpec, contiguous_strides, specs_from_configs
from ._dispatch import interpreting, record, resolve
from ._launch import autotune_enabled, cdiv, dot_block

_EPS = 1e-12  # F.normalize's eps: a row is divided by max(||x||, eps)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _configs(gpu: list[triton.Config], interp: triton.Config) -> list[triton.Config]:
    """The autotuner benchmarks on a GPU only: one config under the interpreter."""
    return [interp] if interpreting() else gpu


def _prune_by_d(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """Drop configs whose D-blocks are wider than the (padded) feature dimension: they only add masked work.
    Only the first that is left under SCL_KERNELS_AUTOTUNE=0."""
    limit = dot_block(named_args["D"])
    kept = [c for c in configs if c.kwargs["BLOCK_K"] <= limit and c.kwargs.get("BLOCK_DO", 0) <= max(limit, 64)]
    kept = kept or configs[:1]
    return kept if autotune_enabled() else kept[:1]


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # the argument only affects fp32 operands


# --------------------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------------------


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
def _info_nce_fwd_kernel(
    X_ptr,  # (N, D): the rows whose log-sum-exp this launch computes
    Y_ptr,  # (N, D): the other side, streamed as column tiles
    INV_X_ptr,  # (N,) fp32
    INV_Y_ptr,  # (N,) fp32
    T_ptr,  # () temperature
    LSE_ptr,  # (N,) fp32 out: logsumexp_j s_ij
    Q_ptr,  # (N,) fp32 out: 1 - softmax(s_i)_i, the off-diagonal probability mass
    LOSS_ptr,  # (N,) fp32 out: lse_i - s_ii = -log(1 - q_i)
    N,
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
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    inv_t = 1.0 / tl.load(T_ptr).to(tl.float32)
    # 1/T, the row's inverse norm and log2(e) folded into one per-row factor: one multiply per logit, then exp2
    row_scale = tl.load(INV_X_ptr + offs_m, mask=row_ok, other=0.0) * (inv_t * 1.4426950408889634)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    l_off = tl.zeros([BLOCK_M], dtype=tl.float32)  # the off-diagonal part of l_i
    diag = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        s = _dot_tile(
            X_ptr, Y_ptr, offs_m, offs_n, row_ok, col_ok, D,
            stride_x_n, stride_x_d, stride_y_n, stride_y_d, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
        )  # fmt: skip
        inv_y = tl.load(INV_Y_ptr + offs_n, mask=col_ok, other=0.0)
        s = s * row_scale[:, None] * inv_y[None, :]  # logits in log2 units
        s = tl.where(col_ok[None, :], s, float("-inf"))
        on_diag = offs_m[:, None] == offs_n[None, :]
        diag += tl.sum(tl.where(on_diag, s, 0.0), 1)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        l_off = l_off * alpha + tl.sum(tl.where(on_diag, 0.0, p), 1)
        m_i = m_new
    # q = 1 - p_ii from the off-diagonal mass, exact in relative terms even when p_ii rounds to 1 (T = 0.01, a
    # matched pair: q ~ 1e-20); the backward uses -q as G_ii instead of exp(s_ii - lse_i) - 1, which would carry
    # lse's rounding (~|s| * 2^-24) into every dL/dT summand
    q = l_off / l_i
    # -log(1 - q) by Kahan's log1p (u = 1 - q): accurate for small q, where lse_i - s_ii would cancel
    # (1 - u is exact for u in [0.5, 1], Sterbenz); the clamps only keep rows past N and q >= 0.5 (unused) finite
    u = 1.0 - q
    small = tl.where(u == 1.0, q, -tl.log(tl.maximum(u, 0.5)) * q / tl.where(u == 1.0, 1.0, 1.0 - u))
    large = (m_i + tl.log2(l_i) - diag) * 0.6931471805599453
    tl.store(LSE_ptr + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)
    tl.store(Q_ptr + offs_m, q, mask=row_ok)
    tl.store(LOSS_ptr + offs_m, tl.where(q < 0.5, small, large), mask=row_ok)


@triton.jit
def _info_nce_bwd_kernel(
    X_ptr,  # (N, D): the side whose gradient this launch writes
    Y_ptr,  # (N, D): the other side
    INV_X_ptr,  # (N,) fp32
    INV_Y_ptr,  # (N,) fp32
    LSE_X_ptr,  # (N,) fp32: logsumexp over each row of s = x y^T (this launch's rows)
    LSE_Y_ptr,  # (N,) fp32: logsumexp over each column of s
    Q_X_ptr,  # (N,) fp32: 1 - softmax over row i of s at (i, i)
    Q_Y_ptr,  # (N,) fp32: 1 - softmax over column j of s at (j, j)
    T_ptr,  # () temperature
    DLOSS_ptr,  # () fp32 upstream gradient
    DX_ptr,  # (N, D) out, X's dtype
    R_ptr,  # (N,) fp32 out: r_i = sum_j G_ij s_ij (the temperature gradient's summands)
    N,
    D,
    stride_x_n,
    stride_x_d,
    stride_y_n,
    stride_y_d,
    stride_dx_n,
    stride_dx_d,
    ROW_TERM: tl.constexpr,  # G holds softmax over each row of s, minus I
    COL_TERM: tl.constexpr,  # G holds softmax over each column of s, minus I
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tl.static_assert(ROW_TERM or COL_TERM)
    pid_m = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)  # this program's slice of the output features
    do_ok = offs_do < D
    inv_t = 1.0 / tl.load(T_ptr).to(tl.float32)
    inv_x = tl.load(INV_X_ptr + offs_m, mask=row_ok, other=0.0)
    row_scale = inv_x * inv_t
    lse_x = tl.load(LSE_X_ptr + offs_m, mask=row_ok, other=0.0)
    q_x = tl.load(Q_X_ptr + offs_m, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)  # sum_j G_ij inv_y_j y_j
    r = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        s = _dot_tile(
            X_ptr, Y_ptr, offs_m, offs_n, row_ok, col_ok, D,
            stride_x_n, stride_x_d, stride_y_n, stride_y_d, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
        )  # fmt: skip
        inv_y = tl.load(INV_Y_ptr + offs_n, mask=col_ok, other=0.0)
        s = s * row_scale[:, None] * inv_y[None, :]  # natural-unit logits
        on_diag = offs_m[:, None] == offs_n[None, :]
        g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        # on the diagonal G = p - 1 = -q, taken from the forward (see _info_nce_fwd_kernel)
        if ROW_TERM:
            g += tl.where(on_diag, -q_x[:, None], tl.exp(s - lse_x[:, None]))  # exponent <= 0: lse bounds the row
        if COL_TERM:
            lse_y = tl.load(LSE_Y_ptr + offs_n, mask=col_ok, other=0.0)
            q_y = tl.load(Q_Y_ptr + offs_n, mask=col_ok, other=0.0)
            g += tl.where(on_diag, -q_y[None, :], tl.exp(s - lse_y[None, :]))
        g = tl.where(col_ok[None, :], g, 0.0)
        r += tl.sum(g * s, 1)
        y = tl.load(
            Y_ptr + offs_n[:, None] * stride_y_n + offs_do[None, :] * stride_y_d,
            mask=col_ok[:, None] & do_ok[None, :],
            other=0.0,
        )
        # G is in [-2, 2] and scaled by g/N only in the epilogue, so casting it to fp16/bf16 for the tensor
        # cores loses relative precision only (as FlashAttention's P), never underflows at large N
        acc = tl.dot((g * inv_y[None, :]).to(y.dtype), y, acc, input_precision=PRECISION)
    coef = tl.load(DLOSS_ptr).to(tl.float32) / N
    x = tl.load(
        X_ptr + offs_m[:, None] * stride_x_n + offs_do[None, :] * stride_x_d,
        mask=row_ok[:, None] & do_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    dx = (coef * inv_x)[:, None] * (acc * inv_t - (inv_x * r)[:, None] * x)
    tl.store(
        DX_ptr + offs_m[:, None] * stride_dx_n + offs_do[None, :] * stride_dx_d,
        dx.to(DX_ptr.dtype.element_ty),
        mask=row_ok[:, None] & do_ok[None, :],
    )
    if pid_d == 0:
        tl.store(R_ptr + offs_m, coef * r, mask=row_ok)


_FWD_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
    for bm, bn, bk, w, st in [
        (128, 128, 32, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 4),
        (64, 64, 32, 4, 2),
    ]
]
_BWD_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_DO": bdo}, num_warps=w, num_stages=st)
    for bm, bn, bk, bdo, w, st in [
        (64, 64, 32, 128, 4, 3),
        (64, 64, 32, 256, 8, 2),
        (128, 64, 32, 128, 8, 2),
        (64, 128, 32, 256, 8, 2),
        (64, 64, 64, 64, 4, 3),
    ]
]

_fwd_tuned = triton.autotune(
    # interpreter: 64-wide tiles (N = 127 still spans two, the second ragged); each program costs NumPy overhead
    configs=_configs(_FWD_GPU_CONFIGS, triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128})),
    key=["D"],
    prune_configs_by={"early_config_prune": _prune_by_d},
)(_info_nce_fwd_kernel)

_bwd_tuned = triton.autotune(
    configs=_configs(_BWD_GPU_CONFIGS, triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "BLOCK_DO": 256})),
    key=["D"],
    prune_configs_by={"early_config_prune": _prune_by_d},
)(_info_nce_bwd_kernel)

STATS_ROWS = 6  # rows of the (STATS_ROWS, N) fp32 stats that the kernels (Triton and C++) pass to the backward
_ROWS_BLOCK_M = 32  # rows per program of the O(N*D) row kernels: 2048 programs at N = 65,536


def _row_blocks(d: int) -> tuple[int, int]:
    return _ROWS_BLOCK_M, min(128, dot_block(d))


# --------------------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------------------


def _check_pair(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{op}: a and b must both be (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{op}: N and D must be positive, got {tuple(a.shape)}")
    if a.dtype != b.dtype or not a.is_floating_point():
        raise ValueError(f"{op}: a and b must share one float dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: a and b must be on one device, got {a.device} and {b.device}")


def _check_triton_dtype(op: str, x: torch.Tensor) -> None:
    if x.dtype not in _TRITON_DTYPES:
        raise ValueError(f"{op}: the triton backend takes fp16, bf16 or fp32 (use 'reference'), got {x.dtype}")


def _row_stats(a: torch.Tensor, b: torch.Tensor, inv_a: torch.Tensor, inv_b: torch.Tensor, cos: torch.Tensor | None):
    n, d = a.shape
    block_m, block_k = _row_blocks(d)
    _row_stats_kernel[(cdiv(n, block_m),)](
        a, b, inv_a, inv_b, inv_a if cos is None else cos, n, d,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        EPS=_EPS, HAS_COS=cos is not None, BLOCK_M=block_m, BLOCK_K=block_k,
    )  # fmt: skip


def _info_nce_fwd_triton(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and the (STATS_ROWS, N) fp32 stats [inv_a, inv_b, lse_a, lse_b, q_a, q_b] the backward needs (lse_b
    and q_b are 0 if asymmetric)."""
    _check_triton_dtype("info_nce", a)
    n, d = a.shape
    stats = torch.empty(STATS_ROWS, n, device=a.device, dtype=torch.float32)
    inv_a, inv_b, lse_a, lse_b, q_a, q_b = stats.unbind(0)
    row_loss = torch.empty(2, n, device=a.device, dtype=torch.float32)
    _row_stats(a, b, inv_a, inv_b, None)
    directions = [(a, b, inv_a, inv_b, lse_a, q_a, row_loss[0])]
    if symmetric:
        directions.append((b, a, inv_b, inv_a, lse_b, q_b, row_loss[1]))
    else:
        lse_b.zero_()
        q_b.zero_()
    for x, y, inv_x, inv_y, lse, q, rl in directions:
        _fwd_tuned[lambda meta: (cdiv(n, meta["BLOCK_M"]),)](
            x, y, inv_x, inv_y, temperature, lse, q, rl, n, d,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1), PRECISION=_precision(a.dtype),
        )  # fmt: skip
    loss = row_loss[: len(directions)].sum(0).mean()
    return loss, stats


def _info_nce_bwd_triton(
    grad: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    stats: torch.Tensor,
    symmetric: bool,
    need_a: bool,
    need_b: bool,
    need_t: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d = a.shape
    inv_a, inv_b, lse_a, lse_b, q_a, q_b = stats.unbind(0)
    grad = grad.float().contiguous()
    r = torch.empty(n, device=a.device, dtype=torch.float32)
    da, db = _no_grad(a), _no_grad(b)
    # (x, y, inv_x, inv_y, lse over x's rows, lse over y's rows, row term, column term); the b side is the
    # transposed problem, in which the original column softmax is the row softmax
    sides = []
    if need_a or (need_t and not need_b):
        da = torch.empty_like(a, memory_format=torch.contiguous_format)
        sides.append((a, b, inv_a, inv_b, lse_a, lse_b, q_a, q_b, da, True, symmetric))
    if need_b:
        db = torch.empty_like(b, memory_format=torch.contiguous_format)
        sides.append((b, a, inv_b, inv_a, lse_b, lse_a, q_b, q_a, db, symmetric, True))
    for x, y, inv_x, inv_y, lse_x, lse_y, q_x, q_y, dx, row_term, col_term in sides:
        _bwd_tuned[lambda meta: (cdiv(n, meta["BLOCK_M"]), cdiv(d, meta["BLOCK_DO"]))](
            x, y, inv_x, inv_y, lse_x, lse_y, q_x, q_y, temperature, grad, dx, r, n, d,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1), dx.stride(0), dx.stride(1),
            ROW_TERM=row_term, COL_TERM=col_term, PRECISION=_precision(a.dtype),
        )  # fmt: skip
    # every side leaves the same total in r: sum_i r_i = sum_ij G_ij s_ij
    dt = (-r.sum() / temperature.float()).to(temperature.dtype) if need_t else _no_grad(temperature)
    return (da if need_a else _no_grad(a)), db, dt


def _cosine_fwd_triton(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and the (3, N) fp32 stats [inv_a, inv_b, cos]."""
    _check_triton_dtype("cosine_recovery", a)
    stats = torch.empty(3, a.shape[0], device=a.device, dtype=torch.float32)
    inv_a, inv_b, cos = stats.unbind(0)
    _row_stats(a, b, inv_a, inv_b, cos)
    return 1.0 - cos.mean(), stats


def _cosine_bwd_triton(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, stats: torch.Tensor, need_a: bool, need_b: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = a.shape
    inv_a, inv_b, cos = stats.unbind(0)
    grad = grad.float().contiguous()
    block_m, block_k = _row_blocks(d)
    outs = []
    for x, y, inv_x, inv_y, needed in ((a, b, inv_a, inv_b, need_a), (b, a, inv_b, inv_a, need_b)):
        if not needed:
            outs.append(a.new_empty(0))
            continue
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        _cosine_bwd_kernel[(cdiv(n, block_m),)](
            x, y, inv_x, inv_y, cos, grad, dx, n, d,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1), dx.stride(0), dx.stride(1),
            BLOCK_M=block_m, BLOCK_K=block_k,
        )  # fmt: skip
        outs.append(dx)
    return outs[0], outs[1]


# --------------------------------------------------------------------------------------------------------------
# dense PyTorch backward of the reference backend (autograd does not reach inside a custom op)
# --------------------------------------------------------------------------------------------------------------


def _no_grad(like: torch.Tensor) -> torch.Tensor:
    """The (0,) placeholder for a gradient nobody asked for: a fresh tensor each time, since a custom op's
    outputs may not alias one another."""
    return like.new_empty(0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _info_nce_bwd_dense(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same gradients as the kernels, with the N x N matrices materialised."""
    ct = _compute_dtype(a.dtype)
    n = a.shape[0]
    t = temperature.to(ct)
    inv_a = 1.0 / a.to(ct).norm(dim=1, keepdim=True).clamp_min(_EPS)
    inv_b = 1.0 / b.to(ct).norm(dim=1, keepdim=True).clamp_min(_EPS)
    an, bn = a.to(ct) * inv_a, b.to(ct) * inv_b
    s = an @ bn.t() / t  # (N, N)
    eye = torch.eye(n, device=a.device, dtype=ct)
    g = torch.softmax(s, dim=1) - eye
    if symmetric:
        g = g + torch.softmax(s, dim=0) - eye
    g = g * (grad.to(ct) / n)
    ga, gb = g @ bn / t, g.t() @ an / t  # gradients w.r.t. the normalised rows
    da = inv_a * (ga - an * (an * ga).sum(1, keepdim=True))
    db = inv_b * (gb - bn * (bn * gb).sum(1, keepdim=True))
    dt = -(g * s).sum() / t
    return da.to(a.dtype), db.to(b.dtype), dt.to(temperature.dtype)


def _cosine_bwd_dense(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ct = _compute_dtype(a.dtype)
    inv_a = 1.0 / a.to(ct).norm(dim=1, keepdim=True).clamp_min(_EPS)
    inv_b = 1.0 / b.to(ct).norm(dim=1, keepdim=True).clamp_min(_EPS)
    an, bn = a.to(ct) * inv_a, b.to(ct) * inv_b
    cos = (an * bn).sum(1, keepdim=True)
    coef = -grad.to(ct) / a.shape[0]
    return (coef * inv_a * (bn - an * cos)).to(a.dtype), (coef * inv_b * (an - bn * cos)).to(b.dtype)


# --------------------------------------------------------------------------------------------------------------
# torch.library ops
# --------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("scl::info_nce", mutates_args=())
def _info_nce_op(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, symmetric: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): stats is (STATS_ROWS, N) fp32 [inv_a, inv_b, lse_a, lse_b, q_a, q_b] for the kernels (q: the
    off-diagonal softmax mass of each row of s and of s^T), (0, N) for the reference."""
    record("info_nce", backend)
    if backend == "triton":
        return _info_nce_fwd_triton(a, b, temperature, symmetric)
    if backend == "native":
        return torch.ops.scl.info_nce_native(a, b, temperature, symmetric)
    loss = reference.info_nce_ref(a, b, temperature, symmetric=symmetric)
    return loss, a.new_empty((0, a.shape[0]), dtype=torch.float32)


@_info_nce_op.register_fake
def _(a, b, temperature, symmetric, backend):
    rows = 0 if backend == "reference" else STATS_ROWS
    return a.new_empty((), dtype=_compute_dtype(a.dtype)), a.new_empty((rows, a.shape[0]), dtype=torch.float32)


@torch.library.custom_op("scl::info_nce_backward", mutates_args=())
def _info_nce_backward_op(
    grad: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    stats: torch.Tensor,
    symmetric: bool,
    need_a: bool,
    need_b: bool,
    need_t: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, db, dtemperature); an input whose gradient is not needed gets an empty (0,) tensor."""
    if backend == "triton":
        return _info_nce_bwd_triton(grad, a, b, temperature, stats, symmetric, need_a, need_b, need_t)
    if backend == "native":
        return torch.ops.scl.info_nce_native_backward(grad, a, b, temperature, stats, symmetric, need_a, need_b, need_t)
    da, db, dt = _info_nce_bwd_dense(grad, a, b, temperature, symmetric)
    return (da if need_a else _no_grad(a)), (db if need_b else _no_grad(b)), (dt if need_t else _no_grad(temperature))


@_info_nce_backward_op.register_fake
def _(grad, a, b, temperature, stats, symmetric, need_a, need_b, need_t, backend):
    return (
        torch.empty_like(a) if need_a else _no_grad(a),
        torch.empty_like(b) if need_b else _no_grad(b),
        torch.empty_like(temperature) if need_t else _no_grad(temperature),
    )


def _info_nce_setup_context(ctx, inputs, output) -> None:
    a, b, temperature, symmetric, backend = inputs
    ctx.symmetric, ctx.backend = symmetric, backend
    ctx.save_for_backward(a, b, temperature, output[1])


def _info_nce_autograd(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor | None):
    a, b, temperature, stats = ctx.saved_tensors
    need_a, need_b, need_t = ctx.needs_input_grad[:3]
    da, db, dt = torch.ops.scl.info_nce_backward(
        grad_loss, a, b, temperature, stats, ctx.symmetric, need_a, need_b, need_t, ctx.backend
    )
    return (
        da if need_a else None,
        db if need_b else None,
        dt if need_t else None,
        None,  # symmetric
        None,  # backend
    )


torch.library.register_autograd("scl::info_nce", _info_nce_autograd, setup_context=_info_nce_setup_context)


@torch.library.custom_op("scl::cosine_recovery", mutates_args=())
def _cosine_op(a: torch.Tensor, b: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): stats is (3, N) fp32 [inv_a, inv_b, cos] for the kernel, (0, N) for the reference."""
    record("cosine_recovery", backend)
    if backend == "triton":
        return _cosine_fwd_triton(a, b)
    loss = reference.cosine_recovery_ref(a, b, detach_b=False)
    return loss, a.new_empty((0, a.shape[0]), dtype=torch.float32)


@_cosine_op.register_fake
def _(a, b, backend):
    rows = 0 if backend == "reference" else 3
    return a.new_empty((), dtype=_compute_dtype(a.dtype)), a.new_empty((rows, a.shape[0]), dtype=torch.float32)


@torch.library.custom_op("scl::cosine_recovery_backward", mutates_args=())
def _cosine_backward_op(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, stats: torch.Tensor, need_a: bool, need_b: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(da, db); an input whose gradient is not needed gets an empty (0,) tensor."""
    if backend == "triton":
        return _cosine_bwd_triton(grad, a, b, stats, need_a, need_b)
    da, db = _cosine_bwd_dense(grad, a, b)
    return (da if need_a else _no_grad(a)), (db if need_b else _no_grad(b))


@_cosine_backward_op.register_fake
def _(grad, a, b, stats, need_a, need_b, backend):
    return (torch.empty_like(a) if need_a else _no_grad(a)), (torch.empty_like(b) if need_b else _no_grad(b))


def _cosine_setup_context(ctx, inputs, output) -> None:
    a, b, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(a, b, output[1])


def _cosine_autograd(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor | None):
    a, b, stats = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[:2]
    da, db = torch.ops.scl.cosine_recovery_backward(grad_loss, a, b, stats, need_a, need_b, ctx.backend)
    return (da if need_a else None), (db if need_b else None), None  # None: backend


torch.library.register_autograd("scl::cosine_recovery", _cosine_autograd, setup_context=_cosine_setup_context)


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


def _pick_backend(op: str, a: torch.Tensor, backend: str | None, *, has_native: bool) -> str:
    """resolve(), except that float64 inputs fall back to the reference unless the caller named a backend (the
    kernels compute in fp32; float64 is for checking, where the reference is the point)."""
    choice = resolve(op, a.device, backend, has_native=has_native)
    if choice in ("triton", "native") and a.dtype not in _TRITON_DTYPES and backend in (None, "auto"):
        return "reference"
    return choice


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    detach_b: bool = False,
    symmetric: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matched rows, without ever forming the N x N logits.

    ``loss = mean_i CE(s[i], i) + mean_j CE(s[:, j], j)`` (the second term only if ``symmetric``), with
    ``s = normalize(a) normalize(b)^T / temperature`` and rows L2-normalised over D (``F.normalize``'s eps).
    The two directions are summed, as ITC and SCL do.

    Args:
        a: (N, D) fp16/bf16/fp32 (float64 runs the reference), one row per sample.
        b: (N, D), same dtype and device; row i is a's positive.
        temperature: a float, or a 0-dim tensor that receives a gradient (ITC's learnable temperature).
            Clamping it to a sane range is the caller's job.
        detach_b: stop the gradient into ``b`` (SCL's targets): ``b`` then gets no gradient at all from this
            op (its ``.grad`` stays None), not a zero tensor, and the kernels skip that half of the backward.
        symmetric: add the b -> a direction.
        backend: ``"triton"``, ``"native"`` (C++ CPU), ``"reference"`` or None/``"auto"`` (see ``_dispatch``).

    Returns:
        0-dim float32 loss (float64 for float64 inputs), whatever the input dtype.
    """
    _check_pair("info_nce", a, b)
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"info_nce: temperature must be a scalar, got shape {tuple(temperature.shape)}")
        t = temperature.reshape(())
    else:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"info_nce: temperature must be a positive number, got {temperature!r}")
        # float64 inputs keep a float64 temperature: 0.07 rounded to fp32 moves the loss by ~1e-9
        t = torch.full((), float(temperature), device=a.device, dtype=_compute_dtype(a.dtype))
    choice = _pick_backend("info_nce", a, backend, has_native=True)
    loss, _ = torch.ops.scl.info_nce(a, b.detach() if detach_b else b, t, symmetric, choice)
    return loss


def cosine_recovery(
    a: torch.Tensor, b: torch.Tensor, *, detach_b: bool = True, backend: str | None = None
) -> torch.Tensor:
    """``mean_i (1 - cos(a_i, b_i))``: the plain cosine form of SCL's recovery objective, fused.

    Args:
        a: (N, D) recovered features (fp16/bf16/fp32; float64 runs the reference).
        b: (N, D) targets, same dtype and device.
        detach_b: stop the gradient into ``b`` (the default, as SCL's targets): ``b`` gets no gradient.
        backend: ``"triton"``, ``"reference"`` or None/``"auto"`` (no C++ kernel: an O(N*D) op that the
            reference already runs at memory speed on a CPU).

    Returns:
        0-dim float32 loss (float64 for float64 inputs).
    """
    _check_pair("cosine_recovery", a, b)
    choice = _pick_backend("cosine_recovery", a, backend, has_native=False)
    loss, _ = torch.ops.scl.cosine_recovery(a, b.detach() if detach_b else b, choice)
    return loss


# --------------------------------------------------------------------------------------------------------------
# what a GPU launches, for the sm_80 / sm_90 compile check (kernels/scl_kernels/_compile.py)
# --------------------------------------------------------------------------------------------------------------


def _compile_specs() -> list[CompileSpec]:
    """Every autotune config of the two tile kernels in fp16 (the AMP case, symmetric backward), the first config
    for the other dtypes and backward flag sets, and the O(N*D) row kernels per dtype; D = 512 (ITC), so no
    config is pruned. Features are contiguous, as on a real launch (Triton specialises on it): feature strides 1,
    row strides multiples of 16, so the loads vectorise and the register counts are those of the kernels that
    run."""
    specs: list[CompileSpec] = []

    def add(kernel, name: str, types: dict[str, str], consts: dict, configs=(), default: bool = True) -> None:  # noqa: ANN001
        unit, divisible = contiguous_strides(kernel)
        consts = {**consts, **unit}
        specs.extend(specs_from_configs(kernel, name, types, consts, configs, default=default, divisible=divisible))

    d = 512
    row_m, row_k = _row_blocks(d)
    for dt in ("fp16", "bf16", "fp32"):
        precision = "ieee" if dt == "fp32" else "tf32"
        for has_cos in (False, True):
            add(_row_stats_kernel, f"contrastive.row_stats/{dt}" + ("-cos" if has_cos else ""),
                {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32", "COS_ptr": "*fp32"},
                {"EPS": _EPS, "HAS_COS": has_cos, "BLOCK_M": row_m, "BLOCK_K": row_k},
                default=dt == "fp16")  # fmt: skip
        add(_cosine_bwd_kernel, f"contrastive.cosine_bwd/{dt}",
            {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32", "COS_ptr": "*fp32",
             "DLOSS_ptr": "*fp32", "DX_ptr": f"*{dt}"},
            {"BLOCK_M": row_m, "BLOCK_K": row_k}, default=dt == "fp16")  # fmt: skip
        add(_info_nce_fwd_kernel, f"contrastive.info_nce_fwd/{dt}-d{d}",
            {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32", "T_ptr": "*fp32",
             "LSE_ptr": "*fp32", "Q_ptr": "*fp32", "LOSS_ptr": "*fp32"},
            {"PRECISION": precision}, _FWD_GPU_CONFIGS if dt == "fp16" else _FWD_GPU_CONFIGS[:1])  # fmt: skip
        bwd_types = {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32",
                     "LSE_X_ptr": "*fp32", "LSE_Y_ptr": "*fp32", "Q_X_ptr": "*fp32", "Q_Y_ptr": "*fp32",
                     "T_ptr": "*fp32", "DLOSS_ptr": "*fp32", "DX_ptr": f"*{dt}", "R_ptr": "*fp32"}  # fmt: skip
        for row_term, col_term in ((True, True), (True, False), (False, True)):
            every = dt == "fp16" and row_term and col_term
            tag = "sym" if row_term and col_term else ("row" if row_term else "col")
            add(_info_nce_bwd_kernel, f"contrastive.info_nce_bwd/{dt}-d{d}-{tag}", bwd_types,
                {"ROW_TERM": row_term, "COL_TERM": col_term, "PRECISION": precision},
                _BWD_GPU_CONFIGS if every else _BWD_GPU_CONFIGS[:1], default=row_term and col_term)  # fmt: skip
    return specs


COMPILE_SPECS: list[CompileSpec] = _compile_specs()
