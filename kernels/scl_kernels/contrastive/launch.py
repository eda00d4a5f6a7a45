"""Host launchers of the contrastive kernels: validate, allocate, launch; and a record of what they launched.

``info_nce`` forward: the row norms, one pass over the similarity tiles, one combining launch (kernels.py).
Backward, per chunk of rows of a (``configs.chunk_rows``): the chunk's G by the tile kernel, then the gradient of
a by a GEMM over the chunk (split over K where the chunk has too few output tiles) and its epilogue, and the
gradient of b by a GEMM over the chunk's transpose, accumulated in fp32 over the chunks in order. Memory: the
chunk of G plus O(N * D) (the normalised rows, the fp32 gradient of b); no atomics, the same bits on every run.

``recorded_launches`` lists every launch (kernel, grid, tiles, integer arguments) of the calls inside it; with
``dry=True`` it launches nothing, so on meta tensors the host path runs at any size in no time: the FLOP-count
benchmark (``benchmarks/bench_contrastive.py``) counts what a GPU would run from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from .._dispatch import interpreting
from .._launch import cdiv, dot_block
from . import configs as C
from .kernels import (
    _cosine_bwd_kernel,
    _info_nce_dx_kernel,
    _info_nce_fwd_kernel,
    _info_nce_gemm_kernel,
    _info_nce_grad_kernel,
    _info_nce_lse_kernel,
    _row_stats_kernel,
    _scale_rows_kernel,
)

EPS = 1e-12  # F.normalize's eps: a row is divided by max(||x||, eps)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STATS_ROWS = 6  # rows of the (STATS_ROWS, N) fp32 stats that the kernels (Triton and C++) pass to the backward


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as the host issued it."""

    kernel: str  # the @triton.jit function's name
    grid: tuple[int, ...]
    meta: dict[str, Any]  # constexprs, num_warps, num_stages of the config it ran with
    ints: dict[str, int]  # its integer arguments by parameter name (N, D, K, ...)


@dataclasses.dataclass
class _Recording:
    launches: list[Launch]
    dry: bool
    sms: int


_recording: _Recording | None = None


@contextlib.contextmanager
def recorded_launches(*, dry: bool = False, sms: int = 132) -> Iterator[list[Launch]]:
    """Record the launches of the contrastive ops called inside the block.

    Args:
        dry: launch nothing. Autotuned kernels take their default config (what SCL_KERNELS_AUTOTUNE=0 launches)
            and the split-K / column-split choices assume ``sms`` streaming multiprocessors; outputs stay unwritten.
        sms: for ``dry``; 132 is an H100 SXM.
    """
    global _recording
    previous = _recording
    _recording = _Recording([], dry, sms)
    try:
        yield _recording.launches
    finally:
        _recording = previous


def gemm_flops(launch: Launch) -> float:
    """GEMM FLOPs of one recorded launch, as its programs loop: programs x tiles x 2 * BLOCK_M * BLOCK_N * the
    padded K (O(N * D) kernels count 0). What the FLOP-count benchmark sums."""
    meta, ints, grid = launch.meta, launch.ints, launch.grid
    if launch.kernel == "_info_nce_fwd_kernel":  # grid (column ranges, row blocks): each range whole tiles
        n, bn = ints["N"], meta["BLOCK_N"]
        span = cdiv(cdiv(n, bn), grid[0]) * bn
        tiles = sum(cdiv(max(0, min(span, n - s * span)), bn) for s in range(grid[0]))
        return 2.0 * grid[1] * tiles * meta["BLOCK_M"] * bn * cdiv(ints["D"], meta["BLOCK_K"]) * meta["BLOCK_K"]
    if launch.kernel == "_info_nce_grad_kernel":  # grid (column blocks, row blocks): one tile each
        per_tile = meta["BLOCK_M"] * meta["BLOCK_N"] * cdiv(ints["D"], meta["BLOCK_K"]) * meta["BLOCK_K"]
        return 2.0 * grid[0] * grid[1] * per_tile
    if launch.kernel == "_info_nce_gemm_kernel":  # grid (D blocks, M blocks, K splits)
        k, k_split, bk = ints["K"], ints["K_SPLIT"], meta["BLOCK_K"]
        k_steps = sum(cdiv(min(k_split, k - s * k_split), bk) for s in range(grid[2]))
        return 2.0 * grid[0] * grid[1] * k_steps * meta["BLOCK_M"] * meta["BLOCK_D"] * bk
    return 0.0


def _interp() -> bool:
    """Interpreter tiles and rules: under TRITON_INTERPRET=1, unless a dry run stands in for a GPU."""
    return interpreting() and not (_recording is not None and _recording.dry)


def _sms(device: torch.device) -> int:
    return _recording.sms if _recording is not None and _recording.dry else C.sm_count(device)


def _launch(kernel: Any, grid: Any, args: tuple, meta: dict[str, Any], tuner: Any = None,
            interp_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """``kernel[grid](*args, **meta)``, through ``tuner`` (its autotuner) on a GPU; returns the meta it ran with.
    ``grid`` is a function of the meta."""
    dry = _recording is not None and _recording.dry
    if tuner is not None and dry:
        meta = {**meta, **C.default_config(tuner, dict(zip(kernel.arg_names, args, strict=False)))}
    elif tuner is not None and not interpreting():
        tuner[grid](*args, **meta)
        meta = {**meta, **C.config_dict(tuner.best_config)}
    else:
        meta = {**meta, **(interp_meta or {})}
        if not dry:
            kernel[grid(meta)](*args, **meta)
    if _recording is not None:
        ints = {name: v for name, v in zip(kernel.arg_names, args, strict=False) if isinstance(v, int)}
        _recording.launches.append(Launch(kernel.fn.__name__, tuple(grid(meta)), meta, ints))
    return meta


def _precision(dtype: torch.dtype) -> str:
    """fp32 dots in full IEEE precision, not tf32: at T = 0.01 a tf32 rounding of the cosine moves a logit by
    ~0.05. The argument only affects fp32 operands."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_triton_dtype(op: str, x: torch.Tensor) -> None:
    if x.dtype not in TRITON_DTYPES:
        raise ValueError(f"{op}: the triton backend takes fp16, bf16 or fp32 (use 'reference'), got {x.dtype}")


# --------------------------------------------------------------------------------------------------------------
# O(N * D) helpers
# --------------------------------------------------------------------------------------------------------------


def _row_blocks(n: int, d: int) -> tuple[int, int]:
    return C.interp_block(n) if _interp() else C.ROW_STATS_TILE[0], min(C.ROW_STATS_TILE[1], dot_block(d))


def _row_stats(a: torch.Tensor, b: torch.Tensor, inv_a: torch.Tensor, inv_b: torch.Tensor,
               cos: torch.Tensor | None) -> None:
    n, d = a.shape
    block_m, block_k = _row_blocks(n, d)
    _launch(_row_stats_kernel, lambda meta: (cdiv(n, block_m),),
            (a, b, inv_a, inv_b, inv_a if cos is None else cos, n, d, a.stride(0), a.stride(1), b.stride(0),
             b.stride(1)),
            {"EPS": EPS, "HAS_COS": cos is not None, "BLOCK_M": block_m, "BLOCK_K": block_k})  # fmt: skip


def _rows_tile(m: int, d: int) -> dict[str, int]:
    block_m, block_d = C.ROWS_TILE
    if _interp():
        block_m = C.interp_block(m)
    return {"BLOCK_M": block_m, "BLOCK_D": min(block_d, dot_block(d))}


def _scale_rows(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """x_i * inv_i, contiguous, in x's dtype: the GEMMs' operand (the normalised rows)."""
    n, d = x.shape
    out = torch.empty((n, d), device=x.device, dtype=x.dtype)
    _launch(_scale_rows_kernel, lambda meta: (cdiv(d, meta["BLOCK_D"]), cdiv(n, meta["BLOCK_M"])),
            (x, inv, out, n, d, x.stride(0), x.stride(1)), _rows_tile(n, d))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------------------------
# info_nce
# --------------------------------------------------------------------------------------------------------------


def info_nce_fwd(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor,
                 symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and the (STATS_ROWS, N) fp32 stats [inv_a, inv_b, lse_a, lse_b, q_a, q_b] the backward needs (lse_b
    and q_b are 0 if asymmetric)."""
    check_triton_dtype("info_nce", a)
    n, d = a.shape
    interp = _interp()
    stats = torch.empty(STATS_ROWS, n, device=a.device, dtype=torch.float32)
    inv_a, inv_b, lse, _, q, _ = stats.unbind(0)  # lse, q: the (2, N) rows 2-3 and 4-5
    _row_stats(a, b, inv_a, inv_b, None)
    block_m = C.fwd_block_m(a.dtype, n, interp)
    splits = C.fwd_splits(n, block_m, _sms(a.device), interp)
    row_blocks = cdiv(n, block_m) if symmetric else 0
    part = torch.empty(splits + row_blocks, n, device=a.device, dtype=torch.float32)
    diag = torch.empty(n, device=a.device, dtype=torch.float32)
    loss_rows = torch.empty(2 if symmetric else 1, n, device=a.device, dtype=torch.float32)
    _launch(_info_nce_fwd_kernel, lambda meta: (splits, cdiv(n, meta["BLOCK_M"])),
            (a, b, inv_a, inv_b, temperature, diag, part, part[splits:] if symmetric else part, n, d,
             a.stride(0), a.stride(1), b.stride(0), b.stride(1)),
            {"COLUMNS": symmetric, "PRECISION": _precision(a.dtype)}, tuner=C._fwd_tuned,
            interp_meta={"BLOCK_M": block_m, "BLOCK_N": block_m, "BLOCK_K": C.interp_k_block(d)})  # fmt: skip
    block_p, block_n = C.COL_TILE
    if interp:
        block_p, block_n = C.interp_block(splits + row_blocks), C.interp_block(n)
    _launch(_info_nce_lse_kernel, lambda meta: (cdiv(n, block_n), 2 if symmetric else 1),
            (part, diag, lse, q, loss_rows, n, splits, row_blocks), {"BLOCK_P": block_p, "BLOCK_N": block_n})
    if not symmetric:
        stats[3].zero_()
        stats[5].zero_()
    return loss_rows.sum(0).mean(), stats


def info_nce_bwd(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor,
                 stats: torch.Tensor, symmetric: bool, need_a: bool, need_b: bool,
                 need_t: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(da, db, dtemperature), None for those not needed."""
    n, d = a.shape
    dev, interp = a.device, _interp()
    inv_a, inv_b, lse_a, lse_b, q_a, q_b = stats.unbind(0)
    grad = grad.float().contiguous()
    rows = C.chunk_rows(n, d)
    min_m, min_n = C.grad_min_tiles(a.dtype, n, interp)
    g = torch.empty((rows, n), device=dev, dtype=a.dtype)  # one chunk of G, the GEMMs' operand
    rpart = torch.empty((rows, cdiv(n, min_n)), device=dev, dtype=torch.float32)
    cpart = torch.empty((cdiv(rows, min_m), n), device=dev, dtype=torch.float32)
    r = torch.empty(n, device=dev, dtype=torch.float32)  # r_i = sum_j G_ij s_ij
    da = db = acc_a = acc_b = c = None
    if need_a:
        b_hat = _scale_rows(b, inv_b)
        da = torch.empty((n, d), device=dev, dtype=a.dtype)
    if need_b:
        a_hat = _scale_rows(a, inv_a)
        db = torch.empty((n, d), device=dev, dtype=b.dtype)
        acc_b = torch.empty((1, n, d), device=dev, dtype=torch.float32)
        c = torch.empty(n, device=dev, dtype=torch.float32)  # c_j = sum_i G_ij s_ij
    precision = _precision(a.dtype)
    for row0 in range(0, n, rows):
        m = min(rows, n - row0)
        tiles = _launch(
            _info_nce_grad_kernel, lambda meta, m=m: (cdiv(n, meta["BLOCK_N"]), cdiv(m, meta["BLOCK_M"])),
            (a, b, inv_a, inv_b, lse_a, lse_b, q_a, q_b, temperature, g, rpart, cpart, row0, m, n, d,
             a.stride(0), a.stride(1), b.stride(0), b.stride(1), g.stride(0), rpart.stride(0)),
            {"COL_TERM": symmetric, "PRECISION": precision}, tuner=C._bwd_tuned,
            interp_meta={"BLOCK_M": min_m, "BLOCK_N": min_n, "BLOCK_K": C.interp_k_block(d)})  # fmt: skip
        # the partial sums in a fixed order (deterministic); only the blocks the chosen tiles wrote
        torch.sum(rpart[:m, : cdiv(n, tiles["BLOCK_N"])], dim=1, out=r[row0 : row0 + m])
        if need_b:
            chunk_c = cpart[: cdiv(m, tiles["BLOCK_M"])].sum(0)
            if row0 == 0:
                c.copy_(chunk_c)
            else:
                c.add_(chunk_c)
        if need_a:
            tile = C.gemm_tiles(a.dtype, "a", m, d, n, interp)
            programs = cdiv(m, tile["BLOCK_M"]) * cdiv(d, tile["BLOCK_D"])
            k_tiles = cdiv(n, tile["BLOCK_K"])
            k_split = cdiv(k_tiles, C.split_k(programs, k_tiles, _sms(dev), interp)) * tile["BLOCK_K"]
            splits = cdiv(n, k_split)
            if acc_a is None or acc_a.numel() < splits * m * d:
                acc_a = torch.empty(splits * m * d, device=dev, dtype=torch.float32)
            acc = acc_a[: splits * m * d].view(splits, m, d)  # contiguous, as the kernels index it
            _gemm(g[:m], b_hat, acc, m, d, n, k_split, splits, accumulate=False, tile=tile, precision=precision)
            _dx(acc, a[row0 : row0 + m], inv_a[row0 : row0 + m], r[row0 : row0 + m], temperature, grad,
                da[row0 : row0 + m], n)
        if need_b:
            tile = C.gemm_tiles(a.dtype, "b", n, d, m, interp)
            _gemm(g[:m].t(), a_hat[row0 : row0 + m], acc_b, n, d, m, cdiv(m, tile["BLOCK_K"]) * tile["BLOCK_K"], 1,
                  accumulate=row0 > 0, tile=tile, precision=precision)
    if need_b:
        _dx(acc_b, b, inv_b, c, temperature, grad, db, n)
    dt = None
    if need_t:  # every side leaves the same total: sum_i r_i = sum_ij G_ij s_ij = sum_j c_j
        dt = (-(grad / n) * r.sum() / temperature.float()).to(temperature.dtype)
    return da, db, dt


def _gemm(g: torch.Tensor, x: torch.Tensor, acc: torch.Tensor, m: int, d: int, k: int, k_split: int, splits: int,
          *, accumulate: bool, tile: dict[str, int], precision: str) -> None:
    """acc[s] (+)= g[:, s-th K range] @ x[s-th K range], fp32."""
    _launch(_info_nce_gemm_kernel, lambda meta: (cdiv(d, meta["BLOCK_D"]), cdiv(m, meta["BLOCK_M"]), splits),
            (g, x, acc, m, d, k, k_split, g.stride(0), g.stride(1), x.stride(0), x.stride(1)),
            {"ACCUMULATE": accumulate, "PRECISION": precision, **tile})  # fmt: skip


def _dx(acc: torch.Tensor, x: torch.Tensor, inv_x: torch.Tensor, r: torch.Tensor, temperature: torch.Tensor,
        grad: torch.Tensor, dx: torch.Tensor, n: int) -> None:
    splits, m, d = acc.shape
    _launch(_info_nce_dx_kernel, lambda meta: (cdiv(d, meta["BLOCK_D"]), cdiv(m, meta["BLOCK_M"])),
            (acc, x, inv_x, r, temperature, grad, dx, m, d, splits, n, x.stride(0), x.stride(1), dx.stride(0),
             dx.stride(1)), _rows_tile(m, d))  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# cosine_recovery
# --------------------------------------------------------------------------------------------------------------


def cosine_fwd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and the (3, N) fp32 stats [inv_a, inv_b, cos]."""
    check_triton_dtype("cosine_recovery", a)
    stats = torch.empty(3, a.shape[0], device=a.device, dtype=torch.float32)
    inv_a, inv_b, cos = stats.unbind(0)
    _row_stats(a, b, inv_a, inv_b, cos)
    return 1.0 - cos.mean(), stats


def cosine_bwd(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, stats: torch.Tensor, need_a: bool,
               need_b: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    n, d = a.shape
    inv_a, inv_b, cos = stats.unbind(0)
    grad = grad.float().contiguous()
    block_m, block_k = _row_blocks(n, d)
    outs = []
    for x, y, inv_x, inv_y, needed in ((a, b, inv_a, inv_b, need_a), (b, a, inv_b, inv_a, need_b)):
        if not needed:
            outs.append(None)
            continue
        dx = torch.empty((n, d), device=x.device, dtype=x.dtype)
        _launch(_cosine_bwd_kernel, lambda meta: (cdiv(n, block_m),),
                (x, y, inv_x, inv_y, cos, grad, dx, n, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                 dx.stride(0), dx.stride(1)), {"BLOCK_M": block_m, "BLOCK_K": block_k})  # fmt: skip
        outs.append(dx)
    return outs[0], outs[1]
