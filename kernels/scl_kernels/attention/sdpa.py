"""The ``sdpa`` backend: ``masked_attention``'s semantics on ``torch.nn.functional.scaled_dot_product_attention``.

What ``backend="auto"`` takes on CUDA where the measured table (``auto.py``) says PyTorch's kernels (cuDNN, flash,
memory-efficient) are faster: short dense or key-padded sequences. The call keeps the op's contract, so the answer
does not depend on the backend:

- no mask: SDPA as is (its flash/cuDNN kernels); ``is_causal`` and grouped K/V heads (``enable_gqa``) pass
  through, SDPA's causal alignment being the op's;
- ``key_mask`` alone: a (B, 1, 1, Lk) bool mask, the shape the GPU report times;
- anything else (frames, attn_mask, is_causal with a mask): the dense mask of ``reference.attention_mask_ref``;
- a row that sees no key would be NaN in SDPA: it attends to every key instead and is zeroed after, with
  ``torch.where``, so its output and its gradients are zeros, as the fused kernel gives. No host sync.

Dropout draws from torch's generator with SDPA's own mask: the same distribution as the fused kernels', not the
same mask. Runs on PyTorch's autograd, outside the ``scl::masked_attention`` op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference import attention_mask_ref


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None,
    frames: int | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float,
) -> torch.Tensor:
    """``masked_attention`` through SDPA (module docstring); the inputs are already checked."""
    gqa = k.shape[1] != q.shape[1]
    options = {"dropout_p": dropout_p, "scale": scale, "enable_gqa": gqa}
    if frames is None and attn_mask is None and key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, **options)
    if frames is None and attn_mask is None and not is_causal:
        has_key = key_mask.any(dim=-1)  # (B,)
        mask = (key_mask | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, Lk): empty rows see every key
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **options)
        return torch.where(has_key[:, None, None, None], out, 0.0)
    b, _, lq, _ = q.shape
    mask = attention_mask_ref(b, lq, k.shape[2], key_mask=key_mask, frames=frames, attn_mask=attn_mask,
                              is_causal=is_causal, device=q.device)  # fmt: skip
    empty = ~mask.any(dim=-1, keepdim=True)  # (..., Lq, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty, **options)
    return torch.where(empty, 0.0, out)
