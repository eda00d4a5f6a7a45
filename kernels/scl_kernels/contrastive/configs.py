"""Tiles of the contrastive kernels: the autotune lists and their pruner, the fixed tiles of the GEMM and row
kernels, the interpreter's tiles, and the backward's chunk and split-K sizes.

fp32 inputs have lists of their own: their dots run in full IEEE precision (FMA, not tensor cores) on operands
twice as wide (the earlier backward's fp32 defaults, on 16-bit tiles, spilled 1.4-2.0 KB a thread: compile report
of 2026-11-30). The compile test fails on any default config spilling over 64 B.
"""

from __future__ import annotations

import functools

import torch
import triton

from .._launch import autotune_enabled, cdiv, dot_block, next_pow2
from .kernels import _info_nce_fwd_kernel, _info_nce_grad_kernel


def _tile_configs(rows: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in rows]  # fmt: skip


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of the forward (similarity tiles, the online row statistics and the
# per-block column statistics); the first fitting one is what SCL_KERNELS_AUTOTUNE=0 launches. One BLOCK_M per
# dtype: the column statistics' buffer, (N / BLOCK_M, N), is allocated before the autotuner picks a config.
FWD_BLOCK_M = {"half": 128, "fp32": 64}
_FWD_GPU_CONFIGS = _tile_configs([(128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (128, 64, 64, 4, 3),
                                  (128, 128, 64, 8, 3)])  # fmt: skip
_FWD_GPU_CONFIGS_FP32 = _tile_configs([(64, 64, 16, 4, 3), (64, 32, 32, 4, 2), (64, 64, 32, 4, 2)])
# the backward's tile kernel: one similarity tile, G stored, its row and column sums of G * s
_BWD_GPU_CONFIGS = _tile_configs([(128, 128, 32, 8, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 4),
                                  (128, 128, 64, 8, 2)])  # fmt: skip
_BWD_GPU_CONFIGS_FP32 = _tile_configs([(64, 64, 32, 4, 2), (64, 64, 16, 4, 3), (32, 64, 32, 4, 2)])

# the GEMMs reducing G, per side (fixed tiles: the gradient of b accumulates in place over the chunks, which an
# autotuner's repeated timing launches would corrupt), (BLOCK_M, BLOCK_D, BLOCK_K, warps, stages). The gradient
# of b reads G transposed and adds to its fp32 output: 128 x 128 tiles spilled 72 B on sm_80 there.
GEMM_TILES = {("half", "a"): (128, 128, 32, 8, 3), ("half", "b"): (128, 64, 32, 8, 3),
              ("fp32", "a"): (64, 64, 32, 4, 2), ("fp32", "b"): (64, 64, 32, 4, 2)}  # fmt: skip
ROWS_TILE = (32, 128)  # (BLOCK_M, BLOCK_D) of the O(N*D) kernels: scale rows, the gradient epilogue
COL_TILE = (32, 128)  # (BLOCK_R, BLOCK_N) of the column statistics' reduction
ROW_STATS_TILE = (32, 64)  # (BLOCK_M, BLOCK_K) of the norm kernels: 128-wide K spilled 80 B on sm_80 (ptxas)

# the backward's G chunk: at most max(CHUNK_INPUTS * N * D, CHUNK_MIN) elements (O(N*D) memory, and enough rows per
# chunk that the launches of a chunk stay shorter than its work), and never all N rows of an N > 128 batch
CHUNK_INPUTS = 4
CHUNK_MIN = 1 << 24
CHUNK_ALIGN = 128  # chunk starts stay multiples of the largest BLOCK_M
# split-K of the gradient-of-a GEMM: enough programs for two waves, each split at least this many K tiles
SPLIT_MIN_TILES = 8


def _is_fp32(named_args: dict) -> bool:
    x = named_args.get("X_ptr")
    return x is not None and x.dtype == torch.float32


def _prune_by_d(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """The dtype's own list (fp32 or 16-bit; 16-bit when no tensor is given), without the configs whose K-blocks
    are wider than the padded feature dimension (they only add masked work), in list order. Only the first that
    is left under SCL_KERNELS_AUTOTUNE=0."""
    own = {id(c) for c in (_FWD_GPU_CONFIGS_FP32 + _BWD_GPU_CONFIGS_FP32 if _is_fp32(named_args)
                           else _FWD_GPU_CONFIGS + _BWD_GPU_CONFIGS)}  # fmt: skip
    pool = [c for c in configs if id(c) in own] or configs[:1]
    limit = dot_block(named_args["D"])
    kept = [c for c in pool if c.kwargs["BLOCK_K"] <= limit] or pool[:1]
    return kept if autotune_enabled() else kept[:1]


def interp_block(n: int) -> int:
    """Interpreter tiles: each program and each reduction costs NumPy overhead (not per element), so they grow
    with the problem (a 4099-row batch in 1024-wide tiles), while small problems still span several ragged
    tiles (37 rows in two 32-wide ones)."""
    return min(1024, max(32, next_pow2(cdiv(n, 8))))


def interp_k_block(d: int) -> int:
    return min(128, dot_block(d))


# the autotuned kernels; under the interpreter they are launched directly with interp_* tiles instead
# (an autotuner with more than one config needs a GPU to time them)
_fwd_tuned = triton.autotune(
    configs=_FWD_GPU_CONFIGS + _FWD_GPU_CONFIGS_FP32, key=["D"], prune_configs_by={"early_config_prune": _prune_by_d}
)(_info_nce_fwd_kernel)
_bwd_tuned = triton.autotune(
    configs=_BWD_GPU_CONFIGS + _BWD_GPU_CONFIGS_FP32, key=["D"], prune_configs_by={"early_config_prune": _prune_by_d}
)(_info_nce_grad_kernel)


def default_config(tuner: triton.runtime.Autotuner, named_args: dict) -> dict[str, int]:
    """The config ``tuner`` launches under SCL_KERNELS_AUTOTUNE=0 (the compile report's default): constexprs plus
    ``num_warps`` / ``num_stages``."""
    return config_dict(_prune_by_d(tuner.configs, named_args)[0])


def config_dict(config: triton.Config) -> dict[str, int]:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def dtype_kind(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "half"


def fwd_block_m(dtype: torch.dtype, n: int, interp: bool) -> int:
    return interp_block(n) if interp else FWD_BLOCK_M[dtype_kind(dtype)]


def fwd_splits(n: int, block_m: int, sms: int, interp: bool) -> int:
    """Column ranges of the forward's grid: enough programs for two waves of the GPU, each range at least 512
    columns. (A ragged N can leave the last range empty: its programs store -inf partial sums, harmless.)"""
    if interp:  # more programs only cost time here; two ranges still check the combining
        return min(2, cdiv(n, block_m))
    return max(1, min(cdiv(2 * sms, cdiv(n, block_m)), n // 512))


def grad_min_tiles(dtype: torch.dtype, n: int, interp: bool) -> tuple[int, int]:
    """The smallest (BLOCK_M, BLOCK_N) the backward's tile kernel may run with: its partial sums are allocated
    for them before the autotuner picks."""
    if interp:
        return interp_block(n), interp_block(n)
    configs = _BWD_GPU_CONFIGS_FP32 if dtype == torch.float32 else _BWD_GPU_CONFIGS
    return min(c.kwargs["BLOCK_M"] for c in configs), min(c.kwargs["BLOCK_N"] for c in configs)


def gemm_tiles(dtype: torch.dtype, side: str, m: int, d: int, k: int, interp: bool) -> dict[str, int]:
    """The tiles of the GEMM giving the gradient of ``side`` ("a" or "b"): the fixed GPU ones, or
    grown-with-the-problem ones under the interpreter."""
    if interp:
        return {"BLOCK_M": interp_block(m), "BLOCK_D": interp_k_block(d), "BLOCK_K": interp_block(k)}
    bm, bd, bk, warps, stages = GEMM_TILES[(dtype_kind(dtype), side)]
    return {"BLOCK_M": bm, "BLOCK_D": bd, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}


def chunk_rows(n: int, d: int) -> int:
    """Rows of a of one backward chunk: the chunk's G is (rows, N). Balanced chunks, starts aligned."""
    budget = max(CHUNK_INPUTS * n * d, CHUNK_MIN) // n
    rows = max(CHUNK_ALIGN, min(budget, cdiv(n, 2)))
    if rows >= n:
        return n
    chunks = cdiv(n, rows)
    return cdiv(cdiv(n, chunks), CHUNK_ALIGN) * CHUNK_ALIGN


def split_k(programs: int, k_tiles: int, sms: int, interp: bool) -> int:
    """How many K ranges the gradient-of-a GEMM splits into: its output is one chunk (rows x D), often fewer tiles
    than two waves of the GPU, while K = N is long."""
    if interp:  # more programs only cost time here; two splits still check the summation
        return min(2, k_tiles)
    want = cdiv(2 * sms, programs)
    return max(1, min(want, k_tiles // SPLIT_MIN_TILES))


@functools.lru_cache(maxsize=8)
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
