"""What a GPU launches, for the sm_80 / sm_90 compile check (``scl_kernels/_compile.py``).

Every autotune config of the two tile kernels in fp16 (the AMP case) and in fp32 (its own lists), the first one
for the one-direction loss in fp16, one spec per dtype of the fixed-tile kernels, and bf16's tile-kernel
defaults (bf16 compiles as fp16 does: the same registers). The first config of each list is a default (what
SCL_KERNELS_AUTOTUNE=0 launches). D = 512 (ITC), so no config is pruned. Features are contiguous, as on a real
launch (Triton specialises on it): feature strides 1, row strides multiples of 16, so the loads vectorise and
the register counts are those of the kernels that run.
"""

from __future__ import annotations

from .._compile import CompileSpec, contiguous_strides, specs_from_configs
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
from .launch import EPS

D = 512
DTYPES = ("fp16", "bf16", "fp32")


def _add(specs: list[CompileSpec], kernel, name: str, types: dict[str, str], consts: dict, configs=(),  # noqa: ANN001
         default: bool = True, unit: dict | None = None, divisible: tuple[str, ...] | None = None, **kw) -> None:
    auto_unit, auto_divisible = contiguous_strides(kernel)
    unit = auto_unit if unit is None else unit
    divisible = auto_divisible if divisible is None else divisible
    specs.extend(specs_from_configs(kernel, name, types, {**consts, **unit}, configs, default=default,
                                    divisible=divisible, **kw))  # fmt: skip


def compile_specs() -> list[CompileSpec]:
    specs: list[CompileSpec] = []
    row_m, row_k = C.ROW_STATS_TILE
    rows_m, rows_d = C.ROWS_TILE
    for dt in DTYPES:
        precision = "ieee" if dt == "fp32" else "tf32"
        half = dt != "fp32"
        every = dt != "bf16"  # bf16 compiles as fp16 does (same registers): its tile kernels' defaults only
        if every:  # the O(N*D) kernels, no tiles to tune
            for has_cos in (False, True):
                _add(specs, _row_stats_kernel, f"contrastive.row_stats/{dt}" + ("-cos" if has_cos else ""),
                     {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32",
                      "COS_ptr": "*fp32"},
                     {"EPS": EPS, "HAS_COS": has_cos, "BLOCK_M": row_m, "BLOCK_K": row_k})  # fmt: skip
            _add(specs, _cosine_bwd_kernel, f"contrastive.cosine_bwd/{dt}",
                 {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32",
                  "COS_ptr": "*fp32", "DLOSS_ptr": "*fp32", "DX_ptr": f"*{dt}"},
                 {"BLOCK_M": row_m, "BLOCK_K": row_k})  # fmt: skip
            _add(specs, _scale_rows_kernel, f"contrastive.scale_rows/{dt}",
                 {"X_ptr": f"*{dt}", "INV_ptr": "*fp32", "OUT_ptr": f"*{dt}"},
                 {"BLOCK_M": rows_m, "BLOCK_D": rows_d})  # fmt: skip

        fwd_configs = C._FWD_GPU_CONFIGS if half else C._FWD_GPU_CONFIGS_FP32
        fwd_types = {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32",
                     "T_ptr": "*fp32", "DIAG_ptr": "*fp32", "ROW_PART_ptr": "*fp32", "COL_PART_ptr": "*fp32"}
        grad_configs = C._BWD_GPU_CONFIGS if half else C._BWD_GPU_CONFIGS_FP32
        grad_types = {"X_ptr": f"*{dt}", "Y_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "INV_Y_ptr": "*fp32",
                      "LSE_X_ptr": "*fp32", "LSE_Y_ptr": "*fp32", "Q_X_ptr": "*fp32", "Q_Y_ptr": "*fp32",
                      "T_ptr": "*fp32", "G_ptr": f"*{dt}", "RPART_ptr": "*fp32", "CPART_ptr": "*fp32"}
        # the symmetric loss (the default) with every config, the one-direction one in fp16 with the first
        for both in (True, False) if dt == "fp16" else (True,):
            _add(specs, _info_nce_fwd_kernel, f"contrastive.info_nce_fwd/{dt}-d{D}" + ("" if both else "-rows"),
                 fwd_types, {"COLUMNS": both, "PRECISION": precision},
                 fwd_configs if both and every else fwd_configs[:1])  # fmt: skip
            _add(specs, _info_nce_grad_kernel, f"contrastive.info_nce_grad/{dt}-d{D}" + ("" if both else "-rows"),
                 grad_types, {"COL_TERM": both, "PRECISION": precision},
                 grad_configs if both and every else grad_configs[:1])  # fmt: skip

        if not every:
            continue
        gemm_types = {"G_ptr": f"*{dt}", "X_ptr": f"*{dt}", "ACC_ptr": "*fp32"}
        # the gradient of a reads G row-major (stride along K 1), that of b its transpose (stride along M 1)
        for side, unit_stride, other, accumulate in (("a", "stride_g_k", "stride_g_m", False),
                                                     ("b", "stride_g_m", "stride_g_k", True)):
            bm, bd, bk, warps, stages = C.GEMM_TILES[("half" if half else "fp32", side)]
            _add(specs, _info_nce_gemm_kernel, f"contrastive.info_nce_gemm/{dt}-d{D}-grad_{side}", gemm_types,
                 {"PRECISION": precision, "BLOCK_M": bm, "BLOCK_D": bd, "BLOCK_K": bk, "ACCUMULATE": accumulate},
                 unit={"stride_x_d": 1, unit_stride: 1}, divisible=(other, "stride_x_k", "K_SPLIT"),
                 num_warps=warps, num_stages=stages)  # fmt: skip
        _add(specs, _info_nce_dx_kernel, f"contrastive.info_nce_dx/{dt}",
             {"ACC_ptr": "*fp32", "X_ptr": f"*{dt}", "INV_X_ptr": "*fp32", "R_ptr": "*fp32", "T_ptr": "*fp32",
              "DLOSS_ptr": "*fp32", "DX_ptr": f"*{dt}"},
             {"BLOCK_M": rows_m, "BLOCK_D": rows_d})  # fmt: skip
    block_p, block_n = C.COL_TILE
    _add(specs, _info_nce_lse_kernel, "contrastive.info_nce_lse",
         {"PART_ptr": "*fp32", "DIAG_ptr": "*fp32", "LSE_ptr": "*fp32", "Q_ptr": "*fp32", "LOSS_ptr": "*fp32"},
         {"BLOCK_P": block_p, "BLOCK_N": block_n})
    return specs


COMPILE_SPECS: list[CompileSpec] = compile_specs()
