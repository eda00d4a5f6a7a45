"""The one attention dispatch point of the model.

Every encoder calls ``attention(q, k, v, backend=..., key_mask=..., frames=...)`` with its mask *semantics*
(text padding as ``key_mask``, the vision encoder's frame-block pattern as ``frames``), never a dense mask it
built itself: the fused Triton kernel generates the pattern from indices and skips whole blocks, and only the
backends that need a dense mask (``sdpa``, ``xformers``) get one, built here.

Backends:
    ``eager``: ``scl_kernels.reference.masked_attention_ref`` (dense, the numerics oracle).
    ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (no mask at all for unmasked images, so
        PyTorch can pick its flash kernel).
    ``triton``: ``scl_kernels.masked_attention`` (FlashAttention-2 style with in-kernel masks and fused
        attention dropout).
    ``flash_attn``: flash-attn's kernels; key padding through ``flash_attn_varlen_func`` (keys packed, every
        query kept). It has no structured masks: ``frames`` raises.
    ``xformers``: ``xformers.ops.memory_efficient_attention`` with the mask as an additive bias.
    ``auto``: triton on CUDA, sdpa elsewhere.

Modules that attend hold an ``attn_backend`` attribute; ``set_attn_backend`` flips it on a whole model, so
one instance can be run through two backends and compared (timm's fused-attention test).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

import scl_kernels
from scl_kernels.reference import attention_mask_ref, masked_attention_ref

BACKENDS: tuple[str, ...] = ("auto", "eager", "sdpa", "triton", "flash_attn", "xformers")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device`` (``auto`` -> triton on CUDA, sdpa elsewhere).

    Raises:
        ValueError: unknown name, or triton requested while ``scl_kernels.masked_attention`` is missing.
        ImportError: flash_attn / xformers requested but not installed (the message names the package).
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and hasattr(scl_kernels, "masked_attention") else "sdpa"
    if backend == "triton" and not hasattr(scl_kernels, "masked_attention"):
        raise ValueError(
            "attention backend 'triton' needs scl_kernels.masked_attention, which this build of scl_kernels "
            "does not provide; use 'sdpa' or 'eager'"
        )
    if backend in ("flash_attn", "xformers") and importlib.util.find_spec(backend) is None:
        package = "flash-attn" if backend == "flash_attn" else "xformers"
        raise ImportError(f"attention backend {backend!r} needs the package {package}: pip install {package}")
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "auto",
    key_mask: torch.Tensor | None = None,
    frames: int | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v through the chosen backend.

    Args:
        q: (B, H, Lq, D); k, v: (B, H, Lk, D).
        backend: one of ``BACKENDS``.
        key_mask: (B, Lk) bool, True for real keys (HF ``attention_mask`` convention).
        frames: F > 1 selects the frame-block + global-CLS pattern of the vision encoder (self-attention over
            [CLS_1..CLS_F, patches of frame 1, ..., patches of frame F]); None or 1 means no pattern.
        dropout_p: dropout on the attention probabilities (pass 0 in eval mode).
        scale: defaults to 1/sqrt(D).

    Returns:
        (B, H, Lq, D); a query row that sees no key is zeros, not NaN, on every backend.
    """
    frames = frames if frames is not None and frames > 1 else None
    name = resolve_backend(backend, q.device)
    if name == "eager":
        return masked_attention_ref(q, k, v, key_mask=key_mask, frames=frames, dropout_p=dropout_p, scale=scale)
    if name == "triton":
        return scl_kernels.masked_attention(q, k, v, key_mask=key_mask, frames=frames, dropout_p=dropout_p,
                                            scale=scale, backend="triton")  # fmt: skip
    if name == "flash_attn":
        return _flash_attn(q, k, v, key_mask=key_mask, frames=frames, dropout_p=dropout_p, scale=scale)
    # sdpa and xformers take a dense mask. A row with no visible key would give NaN (or backend-dependent
    # garbage): such rows attend to every key instead and are zeroed afterwards, so gradients stay finite.
    b, _, lq, _ = q.shape
    lk = k.shape[-2]
    visible = None
    if key_mask is not None:
        if key_mask.shape != (b, lk):
            raise ValueError(f"key_mask must be (B, Lk)=({b}, {lk}), got {tuple(key_mask.shape)}")
        has_key = key_mask.any(dim=-1)  # (B,)
        key_mask = key_mask | ~has_key[:, None]
        visible = has_key[:, None, None, None]  # (B, 1, 1, 1)
    mask = attention_mask_ref(b, lq, lk, key_mask=key_mask, frames=frames, device=q.device)
    if name == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    else:
        out = _xformers(q, k, v, mask=mask, dropout_p=dropout_p, scale=scale)
    return out if visible is None else out * visible


def _flash_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None,
    frames: int | None,
    dropout_p: float,
    scale: float | None,
) -> torch.Tensor:
    """flash-attn: the dense kernel without a mask, the varlen kernel for key padding.

    Key padding: the real keys of every sample are packed into one (total_k, H, D) tensor with cumulative
    lengths ``cu_seqlens_k`` (keys need not be a prefix: attention does not depend on key order), queries stay
    (B * Lq, H, D). A sample with no real key gets zeros, as on every backend.
    """
    if frames is not None:
        raise ValueError("attention backend 'flash_attn' has no frame-block mask; use 'triton' (generated in the "
                         "kernel, blocks skipped) or 'sdpa'")
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    b, h, lq, d = q.shape
    lk = k.shape[-2]
    if key_mask is None:
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
                              softmax_scale=scale)  # (B, Lq, H, D)
        return out.transpose(1, 2)
    if key_mask.shape != (b, lk):
        raise ValueError(f"key_mask must be (B, Lk)=({b}, {lk}), got {tuple(key_mask.shape)}")
    lengths = key_mask.sum(dim=1, dtype=torch.int32)  # (B,)
    cu_k = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    k_packed = k.transpose(1, 2)[key_mask]  # (total_k, H, D)
    v_packed = v.transpose(1, 2)[key_mask]
    max_k = int(lengths.max())  # host sync: the varlen API takes the longest segment as an int
    out = flash_attn_varlen_func(q.transpose(1, 2).reshape(b * lq, h, d), k_packed, v_packed, cu_q, cu_k, lq,
                                 max(max_k, 1), dropout_p=dropout_p, softmax_scale=scale)  # (B * Lq, H, D)
    out = out.view(b, lq, h, d).transpose(1, 2)
    return torch.where((lengths > 0)[:, None, None, None], out, 0.0)  # not a product: 0 * NaN is NaN


def _xformers(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    dropout_p: float,
    scale: float | None,
) -> torch.Tensor:
    """xformers' memory-efficient kernel with the mask as an additive bias."""
    import xformers.ops as xops

    b, h, lq, _ = q.shape
    lk = k.shape[-2]
    bias = None
    if mask is not None:
        # xformers wants the bias's last dim 16-byte aligned: allocate it padded to a multiple of 8, then slice
        lk_pad = -(-lk // 8) * 8
        bias = torch.zeros(b, h, lq, lk_pad, dtype=q.dtype, device=q.device)[..., :lk]
        bias.masked_fill_(~mask.expand(b, h, lq, lk), float("-inf"))
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias, p=dropout_p, scale=scale)  # (B, Lq, H, D)
    return out.transpose(1, 2)


def set_attn_backend(module: nn.Module, backend: str) -> None:
    """Switch every attending submodule of ``module`` (those with an ``attn_backend`` attribute) to ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    for m in module.modules():
        if hasattr(m, "attn_backend"):
            m.attn_backend = backend
