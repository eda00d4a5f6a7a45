"""Tile configurations of the attention kernels: explicit lists autotuned on a GPU, the pruner that keeps what
fits the GPU's shared memory and registers, one config under the interpreter.

Four lists per kernel: by the inputs' precision (16-bit on tensor cores, fp32 on FMA units) and by head width
(``BLOCK_D`` up to 128, or 256 for head dims 129-256). A launch's pruner keeps the one list that fits its inputs.
"""

from __future__ import annotations

import torch
import triton

from .._dispatch import interpreting
from .._launch import TunedLaunch, autotune_enabled, next_pow2


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
# Head dims 129-256 (BLOCK_D = 256): each resident (rows, 256) tile costs twice D=128's registers, so the lists above
# spill (the forward's 64 x 64 4-warp tile on 255 registers +152 B on sm_90, dK/dV's 32 x 64 +336 B). These lists
# hold tiles that compiled spill-free on both sm_80 and sm_90 at BLOCK_D = 256 with the key mask (a sweep of 28
# tiles, 2026-12: 8 warps over 32-64 rows for 16-bit inputs, 16-32 rows for fp32), largest tile first: not yet
# timed on a GPU, so the autotuner chooses among them. flash-attn's head-dim-256 kernels make the same trade
# (64 x 64 tiles and 8 warps on sm_80, against 128 x 128 at D=64).
FWD_WIDE_CONFIGS = _configs([(64, 32, 8, 2), (64, 32, 8, 3), (32, 32, 4, 2)])
DKDV_WIDE_CONFIGS = _configs([(32, 32, 8, 2), (16, 32, 4, 2)])
DQ_WIDE_CONFIGS = _configs([(32, 64, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 4, 2)])
FWD_WIDE_FP32_CONFIGS = _configs([(32, 16, 8, 2), (16, 32, 8, 2), (16, 16, 4, 2)])
DKDV_WIDE_FP32_CONFIGS = _configs([(32, 16, 8, 2), (16, 32, 8, 2), (16, 16, 8, 2)])
DQ_WIDE_FP32_CONFIGS = _configs([(32, 16, 8, 2), (16, 16, 4, 2)])
# kind -> {(fp32 inputs, BLOCK_D > 128): list}; an autotuner gets all four, its pruner keeps the inputs' own
_CONFIG_LISTS = {
    "fwd": {(False, False): FWD_CONFIGS, (True, False): FWD_FP32_CONFIGS,
            (False, True): FWD_WIDE_CONFIGS, (True, True): FWD_WIDE_FP32_CONFIGS},
    "dkdv": {(False, False): DKDV_CONFIGS, (True, False): DKDV_FP32_CONFIGS,
             (False, True): DKDV_WIDE_CONFIGS, (True, True): DKDV_WIDE_FP32_CONFIGS},
    "dq": {(False, False): DQ_CONFIGS, (True, False): DQ_FP32_CONFIGS,
           (False, True): DQ_WIDE_CONFIGS, (True, True): DQ_WIDE_FP32_CONFIGS},
}  # fmt: skip
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
# the wide lists: every tile compiled spill-free at BLOCK_D = 256, the only width they serve; the estimate (made for
# D <= 128 tiles) would only drop some of them on sm_80, so it does not apply (shared memory still does)
_REG_BUDGET_WIDE = 1 << 30


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


def _reg_budget(hopper: bool, elt: int, block_d: int = 128) -> int:
    """The pruner's register budget: sm_90's for 16-bit inputs on a Hopper (or newer) GPU, sm_80's for 16-bit
    inputs otherwise, fp32's own on both (see ``_REG_BUDGET_FP32``); none beyond shared memory for the wide lists
    (``_REG_BUDGET_WIDE``)."""
    if block_d > 128:
        return _REG_BUDGET_WIDE
    if elt == 4:
        return _REG_BUDGET_FP32
    return _REG_BUDGET_SM90 if hopper else _REG_BUDGET


def _tile(cfg: triton.Config) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): a config as the lists spell it."""
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages


def _own_list(kind: str, elt: int, block_d: int) -> list[triton.Config]:
    """``kind``'s list for ``elt``-byte inputs and a ``block_d`` head block."""
    return _CONFIG_LISTS[kind][(elt == 4, block_d > 128)]


def _all_configs(kind: str) -> list[triton.Config]:
    """All of ``kind``'s lists, each tile once: what its autotuner gets on a GPU."""
    tiles: dict[tuple[int, int, int, int], triton.Config] = {}
    for configs in _CONFIG_LISTS[kind].values():
        for c in configs:
            tiles.setdefault(_tile(c), c)
    return list(tiles.values())


def _own_configs(configs: list[triton.Config], kind: str, elt: int, block_d: int) -> list[triton.Config]:
    """Those of ``configs`` (an autotuner's: all lists of ``kind``) that the list for ``elt``-byte inputs and a
    ``block_d`` head block holds, in that list's order: its first fitting entry is the default the compile report
    lists."""
    given = {_tile(c): c for c in configs}
    return [given[_tile(c)] for c in _own_list(kind, elt, block_d) if _tile(c) in given]


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _make_prune(kind: str):  # noqa: ANN202 (triton's early_config_prune callback)
    def prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
        """Drop configs whose tiles would not fit shared memory or the GPU's registers, or are wider than the
        sequence (a 64-row tile already covers short text). Always keeps at least one; only one with
        SCL_KERNELS_AUTOTUNE=0."""
        args = {**named_args, **kwargs}
        q, block_d = args["Q_ptr"], args["BLOCK_D"]
        elt = q.element_size()
        fit = _fitting(_own_configs(configs, kind, elt, block_d), kind, block_d, elt,
                       _reg_budget(_is_hopper(q.device), elt, block_d))
        lq, lk = max(64, next_pow2(args["Lq"])), max(64, next_pow2(args["Lk"]))
        narrow = [c for c in fit if c.kwargs["BLOCK_M"] <= lq and c.kwargs["BLOCK_N"] <= lk] or fit
        return narrow if autotune_enabled() else narrow[:1]

    return prune


_KEY = ["LQ_BUCKET", "LK_BUCKET", "BLOCK_D", "HAS_KEY_MASK", "HAS_FRAMES", "HAS_ATTN_MASK", "HAS_DROPOUT", "IS_CAUSAL"]


def _autotuned(kernel: triton.JITFunction, kind: str) -> TunedLaunch:
    """Autotune over ``kind``'s configs on a GPU (the pruner keeps the list of the inputs' dtype and head width);
    one config under the interpreter (the autotuner needs a GPU to time)."""
    if interpreting():
        tuner = triton.autotune(_INTERPRET_CONFIGS, key=_KEY)(kernel)
    else:
        prune = {"early_config_prune": _make_prune(kind)}
        tuner = triton.autotune(_all_configs(kind), key=_KEY, prune_configs_by=prune)(kernel)
    return TunedLaunch(tuner, key_args=("LQ_BUCKET", "LK_BUCKET"))
