"""Drop-in: make Hugging Face encoders (BERT, RoBERTa, ViT, CLIP vision, ...) attend through ``masked_attention``.

    import scl_kernels
    scl_kernels.patch_hf(model)  # BertModel / RobertaModel / ViTModel / CLIPVisionModel / ...

transformers (5.x; tested with 5.24) routes every attention call of these models through a registry
(``AttentionInterface``) selected by ``config._attn_implementation``, and builds the padding mask through a
second registry (``AttentionMaskInterface``). ``patch_hf`` registers one attention function and one mask builder
per backend under the name ``"scl_masked"`` (``"scl_masked_triton"``, ...) and switches the model to it. An
encoder's padding mask stays (B, 1, 1, Lk) and reaches the kernel as ``key_mask`` (read per key block, never a
dense matrix); other masks are built as for SDPA (bool, True = may attend) and go in as ``attn_mask``. Nothing
in the model's weights or modules changes, so ``unpatch_hf`` (or ``model.set_attn_implementation("sdpa")``) restores it.

Decoders work too: grouped-query K/V heads reach the kernel as they are (indexed there, never repeated), causal
attention without a mask is the op's ``is_causal`` (tiles above the diagonal skipped), and a causal mask with padding
arrives as a dense bool ``attn_mask``. Attention dropout in training mode is fused in the kernel.

transformers is imported lazily: ``scl_kernels`` depends on torch and triton only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._dispatch import BACKENDS
from .attention import masked_attention

__all__ = ["patch_hf", "unpatch_hf"]

ATTN_NAME = "scl_masked"


def _registered_name(backend: str | None) -> str:
    return ATTN_NAME if backend in (None, "auto") else f"{ATTN_NAME}_{backend}"


def _split_mask(mask: torch.Tensor | None, b: int, lk: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """HF's mask -> (key_mask (B, Lk), attn_mask) in the True = may attend convention.

    Bool masks come from the SDPA mask builder; a float mask is additive (0 = attend, dtype-min = masked), from
    models that build their own; only 0 / large-negative values are representable.
    """
    if mask is None:
        return None, None
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1 and mask.shape[0] == b and mask.shape[3] == lk:
        return mask[:, 0, 0, :], None  # (B, Lk): the padding mask, read per key block
    return None, mask


def _make_attention_fn(backend: str | None):  # noqa: ANN202 (the AttentionInterface signature)
    def scl_attention_forward(
        module: nn.Module,
        query: torch.Tensor,  # (B, H, Lq, D)
        key: torch.Tensor,  # (B, Hkv, Lk, D), Hkv dividing H (grouped-query attention)
        value: torch.Tensor,  # (B, Hkv, Lk, D)
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """Returns ((B, Lq, H, D), None): HF's attention-function contract (no attention weights)."""
        b, _, lq, _ = query.shape
        lk = key.shape[2]
        # grouped K/V heads go in as they are: the kernel indexes head h // (H // Hkv), no repeat_interleave copy
        key_mask, attn_mask = _split_mask(attention_mask, b, lk)
        # HF's SDPA rule: is_causal only with no mask and more than one query (a mask carries the causal pattern
        # itself, cache offset included); then Lq == Lk, where SDPA's top-left alignment, the op's, is the usual one
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
        causal = bool(is_causal) and lq > 1 and attention_mask is None
        drop = dropout if module.training else 0.0
        out = masked_attention(query, key, value, key_mask=key_mask, attn_mask=attn_mask, is_causal=causal,
                               dropout_p=drop, scale=scaling, backend=backend)  # fmt: skip
        return out.transpose(1, 2).contiguous(), None

    return scl_attention_forward


def _padding_aware_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The AttentionMaskInterface entry: an encoder's padding-only mask stays (B, 1, 1, Lk) (the kernel reads it
    per key block as ``key_mask``); anything else is SDPA's bool mask, (B, 1, Lq, Lk), True = may attend."""
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    padding_only = mask_function is bidirectional_mask_function and kv_offset == 0
    if padding_only and attention_mask is not None and attention_mask.dim() == 2 and (
        attention_mask.shape[-1] >= kv_length
    ):
        return attention_mask[:, None, None, :kv_length].bool()
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask, **kwargs)


def _register(backend: str | None) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = _registered_name(backend)
    AttentionInterface.register(name, _make_attention_fn(backend))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, _padding_aware_mask)
    return name


def _set_impl(model: nn.Module, name: str) -> None:
    """Point the model and every sub-config (CLIP's vision_config, ...) at the attention function ``name``."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    seen = set()
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation"):
            seen.add(id(cfg))
            cfg._attn_implementation = name


def patch_hf(model: nn.Module, *, backend: str | None = None) -> nn.Module:
    """Make a Hugging Face model's attention run through ``scl_kernels.masked_attention``, in place.

    Args:
        model: a transformers ``PreTrainedModel`` whose attention uses the attention-function registry (BERT,
            RoBERTa, ViT, CLIP, and most models of transformers >= 4.48).
        backend: ``masked_attention``'s backend: None/"auto" (on CUDA the faster of Triton and SDPA for each call, by
            the measured table of ``scl_kernels.attention.auto``; the reference on CPU), "triton", "sdpa",
            "reference".

    Returns:
        ``model`` itself.
    """
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if not hasattr(getattr(model, "config", None), "_attn_implementation"):
        raise ValueError(f"patch_hf expects a transformers PreTrainedModel, got {type(model).__name__}")
    _set_impl(model, _register(backend))
    return model


def unpatch_hf(model: nn.Module, attn_implementation: str = "sdpa") -> nn.Module:
    """Switch a patched model back to a stock attention implementation (default SDPA)."""
    _set_impl(model, attn_implementation)
    return model
