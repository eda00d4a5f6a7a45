"""What a GPU launches of the attention kernels, for the compile check (``scl_kernels._compile``)."""

from __future__ import annotations

from .._compile import CompileSpec, contiguous_strides, specs_from_configs
from .._launch import dot_block
from .backward import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from .configs import _fitting, _own_list, _reg_budget
from .forward import _attn_fwd_kernel

_KERNELS = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel}
# variant name -> the flags it turns on (all others off)
_FLAGS = {
    "none": (),
    "key": ("HAS_KEY_MASK",),
    "frames": ("HAS_FRAMES",),
    "key+frames": ("HAS_KEY_MASK", "HAS_FRAMES"),
    "attn": ("HAS_ATTN_MASK",),
    "key+dropout": ("HAS_KEY_MASK", "HAS_DROPOUT"),
    "key+causal": ("HAS_KEY_MASK", "IS_CAUSAL"),
    "key+gqa": ("HAS_KEY_MASK",),  # kv_group a runtime integer (> 1), not the constant 1
    "key+lse": ("HAS_KEY_MASK", "HAS_DLSE"),  # the returned lse's gradient: the dQ pass only reads it
}
_ALL_FLAGS = ("HAS_KEY_MASK", "HAS_FRAMES", "HAS_ATTN_MASK", "HAS_DROPOUT", "IS_CAUSAL")


def _compile_specs() -> list[CompileSpec]:
    """Kernel specialisations to compile for sm_80/sm_90 without a GPU.

    Every autotune config at the production case (bf16, D=64, key mask: the text encoder), the default config
    of each dtype and head dim (up to 256, whose tiles have lists of their own), and the default config of the
    other mask variants (frames: the video encoder; key+frames covers both generated masks; causal; grouped-query;
    the returned lse's gradient). The interpreter accepts what these catch: ``tl.dot`` shapes, shared-memory
    overflow. Strides are as on a real launch (last dims 1, the others multiples of 16: Triton specialises on
    both), and so is ``kv_group``: Triton compiles the value 1 as a constant, so every variant but ``key+gqa`` has
    it folded, and the register counts match the kernels that run.
    """
    specs: list[CompileSpec] = []
    variants = [("bf16", 64, "key", "all")]
    # each dtype and each head dim once (the compile check runs on 2 CPU cores: ~1 s per spec and arch, several for
    # D=256, on an empty Triton cache)
    variants += [(dt, d, "key", "default") for dt, d in (("fp16", 32), ("bf16", 128), ("fp32", 64), ("fp32", 128),
                                                         ("bf16", 160), ("bf16", 192), ("bf16", 256), ("fp32", 256))]
    variants += [("bf16", 64, m, "default")
                 for m in ("none", "frames", "key+frames", "attn", "key+dropout", "key+causal", "key+gqa", "key+lse")]
    for dt, d, mask, which in variants:
        flags = _FLAGS[mask]
        types = {"qk_scale": "fp32", "sm_scale": "fp32", "dropout_p": "fp32", "KM_ptr": "*u8", "AM_ptr": "*u8",
                 "CNT_ptr": "*i32", "LSE_ptr": "*fp32", "DLSE_ptr": "*fp32", "DELTA_ptr": "*fp32",
                 "RNG_ptr": "*i64"}  # fmt: skip
        for name in ("Q_ptr", "K_ptr", "V_ptr", "O_ptr", "DO_ptr", "DQ_ptr", "DK_ptr", "DV_ptr"):
            types[name] = f"*{dt}"
        consts: dict[str, int | bool | None] = {"HEAD_DIM": d, "BLOCK_D": dot_block(d)}
        consts.update({flag: flag in flags for flag in _ALL_FLAGS})
        if mask != "key+gqa":
            consts["kv_group"] = 1
        elt = {"fp16": 2, "bf16": 2, "fp32": 4}[dt]
        for kname, kernel in _KERNELS.items():
            if "HAS_DLSE" in flags and kname != "dq":
                continue  # the same kernels as "key"
            configs = _own_list(kname, elt, dot_block(d))
            kconsts = dict(consts)
            if kname == "fwd":
                kconsts["COUNT_BLOCKS"] = False
            if kname == "dq":
                kconsts["HAS_DLSE"] = "HAS_DLSE" in flags
            unit, divisible = contiguous_strides(kernel, unknown=("stride_km", "stride_am"))
            kconsts.update(unit)
            # what the pruner lets a GPU launch: every config a Hopper tunes over (its budget is the wider), or
            # the default of each budget (the first fitting config, the one SCL_KERNELS_AUTOTUNE=0 launches)
            fit = _fitting(configs, kname, dot_block(d), elt, _reg_budget(True, elt, dot_block(d)))
            ampere = _fitting(configs, kname, dot_block(d), elt, _reg_budget(False, elt, dot_block(d)))
            groups = [fit] if which == "all" else [[c] for c in dict.fromkeys(ampere[:1] + fit[:1])]
            for chosen in groups:
                specs += specs_from_configs(kernel, f"attention.{kname}/{dt}-d{d}-{mask}", types, kconsts, chosen,
                                            divisible=divisible)  # fmt: skip
    return specs


COMPILE_SPECS: list[CompileSpec] = _compile_specs()
