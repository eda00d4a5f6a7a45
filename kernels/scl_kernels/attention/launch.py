"""Host launchers of the attention kernels: validate nothing (the op does), allocate the outputs, pass the masks as
strided u8 views, launch. Every buffer returned comes from ``_new_output`` (tests poison it).
"""

from __future__ import annotations

import torch

from .._launch import cdiv, dot_block, next_pow2
from .backward import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from .configs import _autotuned
from .forward import _attn_fwd_kernel

_LOG2E = 1.4426950408889634

_attn_fwd = _autotuned(_attn_fwd_kernel, "fwd")
_attn_bwd_dkdv = _autotuned(_attn_bwd_dkdv_kernel, "dkdv")
_attn_bwd_dq = _autotuned(_attn_bwd_dq_kernel, "dq")


def _new_output(
    like: torch.Tensor, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Every buffer the launchers return comes from here (tests poison it to catch unwritten elements).

    Without ``shape`` the buffer copies ``like``'s layout (a (B, L, H, D)-permuted q gives a (B, L, H, D)-permuted
    output, so the model's reshape to (B, L, H*D) stays free).
    """
    if shape is None:
        return torch.empty_like(like, dtype=dtype)
    return like.new_empty(shape, dtype=dtype or like.dtype)  # contiguous; ~2 us less host time than torch.empty


_PLACEHOLDERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 1-element buffer for a pointer argument that the kernel never reads or writes (its HAS_* or COUNT_BLOCKS
    flag is off), one per device and dtype: a fresh one per call cost ~10 us of host time each on the H200's
    host (cProfile, 2026-11-30), three per forward + backward."""
    key = (device, dtype)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = torch.empty(1, device=device, dtype=dtype)
    return _PLACEHOLDERS[key]


def _mask_args(
    q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None, attn_mask: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, tuple[int, int, int, int]]:
    """u8 views (no copies) of the masks and their strides; broadcast dims of attn_mask get stride 0.

    An absent mask is passed as a 1-byte placeholder that the kernel never reads (its HAS_* flag is off): the
    kernels offset every pointer argument once, which a None argument cannot take.
    """
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    placeholder = _placeholder(q.device, torch.uint8)
    km, km_strides = placeholder, (0, 0)
    if key_mask is not None:
        km = key_mask.view(torch.uint8)
        km_strides = (km.stride(0), km.stride(1))
    am, am_strides = placeholder, (0, 0, 0, 0)
    if attn_mask is not None:
        # expanded to the full shape: stride 0 on every broadcast dim, the key dim included
        am = attn_mask.view(torch.uint8).expand(b, h, lq, lk)
        am_strides = am.stride()
    return km, km_strides, am, am_strides


def _frame_args(frames: int | None, length: int) -> tuple[int, int]:
    if frames is None:
        return 0, 1
    # n_patches >= 1 keeps the kernel's integer division defined when every token is a CLS (P = 0)
    return frames, max(length // frames - 1, 1)


def _grid(rows: int, block_key: str, b: int, h: int):  # noqa: ANN202 (triton grid callback)
    return lambda meta: (cdiv(rows, meta[block_key]), h, b)


def _rng_arg(q: torch.Tensor, rng: torch.Tensor | None) -> torch.Tensor:
    """Dropout's (2,) int64 Philox pair as the kernels read it, or a placeholder they never read."""
    return rng if rng is not None else _placeholder(q.device, torch.int64)


def _attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    rng: torch.Tensor | None = None,
    count_blocks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel. Returns (out, lse (B, H, Lq) natural log, per-program key-block counts or None).

    k and v may have fewer heads than q (grouped-query attention: H a multiple of theirs)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    out = _new_output(q)
    lse = _new_output(q, (b, h, lq), torch.float32)
    # sized for the smallest BLOCK_M of any config; without COUNT_BLOCKS a placeholder the kernel never writes
    if count_blocks:
        counts = torch.zeros(b * h * cdiv(lq, 16), device=q.device, dtype=torch.int32)
    else:  # never written
        counts = _placeholder(q.device, torch.int32)
    km, km_strides, am, am_strides = _mask_args(q, k, key_mask, attn_mask)
    n_frames, n_patches = _frame_args(frames, lk)
    _attn_fwd[_grid(lq, "BLOCK_M", b, h)](
        q, k, v, out, lse, km, am, _rng_arg(q, rng), counts,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *km_strides, *am_strides,
        h, h // k.shape[1], lq, lk, n_frames, n_patches, scale * _LOG2E, dropout_p,
        next_pow2(lq), next_pow2(lk),
        HEAD_DIM=d, BLOCK_D=dot_block(d),
        HAS_KEY_MASK=key_mask is not None, HAS_FRAMES=frames is not None, HAS_ATTN_MASK=attn_mask is not None,
        HAS_DROPOUT=dropout_p > 0.0, IS_CAUSAL=is_causal, COUNT_BLOCKS=count_blocks,
    )  # fmt: skip
    return out, lse, (counts if count_blocks else None)


def _attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    rng: torch.Tensor | None = None,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the dQ pass (which also writes delta) and then the dK/dV pass (one program per key block and K/V
    head). ``dlse``: the gradient of the returned lse, or None when it has none. Returns (dq, dk, dv) in the
    layouts of q, k, v."""
    b, h, lq, d = q.shape
    h_kv, lk = k.shape[1], k.shape[2]
    delta = _new_output(q, (b, h, lq), torch.float32)
    dq, dk, dv = _new_output(q), _new_output(k), _new_output(v)
    km, km_strides, am, am_strides = _mask_args(q, k, key_mask, attn_mask)
    n_frames, n_patches = _frame_args(frames, lk)
    rng_arg = _rng_arg(q, rng)
    flags = {
        "HEAD_DIM": d,
        "BLOCK_D": dot_block(d),
        "HAS_KEY_MASK": key_mask is not None,
        "HAS_FRAMES": frames is not None,
        "HAS_ATTN_MASK": attn_mask is not None,
        "HAS_DROPOUT": dropout_p > 0.0,
        "IS_CAUSAL": is_causal,
    }
    sizes = (h, h // h_kv, lq, lk, n_frames, n_patches, scale * _LOG2E, scale, dropout_p, next_pow2(lq),
             next_pow2(lk))  # fmt: skip
    if dlse is not None:
        dlse = dlse.contiguous()  # read with the lse's (B, H, Lq) strides
    _attn_bwd_dq[_grid(lq, "BLOCK_M", b, h)](
        q, k, v, out, dout, lse, dlse if dlse is not None else _placeholder(q.device, torch.float32), delta, dq,
        km, am, rng_arg,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(), *km_strides,
        *am_strides, *sizes, **flags, HAS_DLSE=dlse is not None,
    )  # fmt: skip
    _attn_bwd_dkdv[_grid(lk, "BLOCK_N", b, h_kv)](
        q, k, v, dout, lse, delta, dk, dv, km, am, rng_arg,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *km_strides, *am_strides,
        *sizes, **flags,
    )  # fmt: skip
    return dq, dk, dv
