"""What a GPU launches of the attention kernels, for the compile check (``scl_kernels._compile``)."""

from __future__ import annotations

from .._compile import CompileSpec, contiguous_strides, specs_from_configs
from .._launch import dot_block
from .backward import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from .configs import _CONFIG_LISTS, _fitting, _reg_budget
from .forward import _attn_fwd_kernel


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
