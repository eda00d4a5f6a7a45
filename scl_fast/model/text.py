"""BERT/RoBERTa-compatible text encoder (post-LN) with HF ``BertModel`` parameter names.

The names mirror ``BertModel`` (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ...)
so BERT, MiniLM and RoBERTa checkpoints load with a trivial mapping (``scl_fast/convert.py``). The attention
and FFN sub-blocks are reused by the co-attention fusion encoder (``fusion.py``), which is how METER builds its
cross layers too.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .attention import attention
from .config import TextConfig
from .layers import activation, init_weights


class BertSelfAttention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself for self-attention), through the dispatch point."""

    def __init__(self, width: int, heads: int, *, dropout: float = 0.0, attn_backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attn_backend = attn_backend
        self.query = nn.Linear(width, width, device=device, dtype=dtype)
        self.key = nn.Linear(width, width, device=device, dtype=dtype)
        self.value = nn.Linear(width, width, device=device, dtype=dtype)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)  # (B, H, N, D)

    def forward(self, x: torch.Tensor, *, key_mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Lq, W), context (B, Lk, W) or None, key_mask (B, Lk) bool True = real key -> (B, Lq, W)."""
        context = x if context is None else context
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = attention(q, k, v, backend=self.attn_backend, key_mask=key_mask,
                        dropout_p=self.dropout if self.training else 0.0)  # (B, H, Lq, D)
        return out.transpose(1, 2).flatten(2)


class BertSelfOutput(nn.Module):
    """Output projection, dropout, residual and post-LayerNorm of an attention sub-block."""

    def __init__(self, width: int, *, eps: float, dropout: float, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width, device=device, dtype=dtype)
        self.LayerNorm = nn.LayerNorm(width, eps=eps, device=device, dtype=dtype)  # HF name
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    """Attention sub-block: ``self`` (query/key/value) + ``output`` (dense, LayerNorm); cross-attention when a
    ``context`` is given."""

    def __init__(self, width: int, heads: int, *, eps: float, dropout: float, attn_backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.self = BertSelfAttention(width, heads, dropout=dropout, attn_backend=attn_backend, device=device,
                                      dtype=dtype)
        self.output = BertSelfOutput(width, eps=eps, dropout=dropout, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, *, key_mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.self(x, key_mask=key_mask, context=context), x)


class BertIntermediate(nn.Module):
    """First FFN layer and its activation."""

    def __init__(self, width: int, intermediate: int, *, act: str, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(width, intermediate, device=device, dtype=dtype)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    """Second FFN layer, dropout, residual and post-LayerNorm."""

    def __init__(self, width: int, intermediate: int, *, eps: float, dropout: float,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate, width, device=device, dtype=dtype)
        self.LayerNorm = nn.LayerNorm(width, eps=eps, device=device, dtype=dtype)  # HF name
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertLayer(nn.Module):
    """Post-LN transformer layer: attention, then FFN."""

    def __init__(self, cfg: TextConfig, *, attn_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.attention = BertAttention(cfg.width, cfg.heads, eps=cfg.layer_norm_eps, dropout=cfg.dropout,
                                       attn_backend=attn_backend, **kw)
        self.intermediate = BertIntermediate(cfg.width, cfg.intermediate, act=cfg.act, **kw)
        self.output = BertOutput(cfg.width, cfg.intermediate, eps=cfg.layer_norm_eps, dropout=cfg.dropout, **kw)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.attention(x, key_mask=key_mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    """The stack of layers (``encoder.layer.N``)."""

    def __init__(self, cfg: TextConfig, *, attn_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(cfg, attn_backend=attn_backend, device=device, dtype=dtype) for _ in range(cfg.layers)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, key_mask)
        return x


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: TextConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=cfg.pad_token_id, **kw)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.width, **kw)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.width, **kw)
        self.LayerNorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, **kw)  # HF name
        self.dropout = nn.Dropout(cfg.dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """BERT: 0..L-1. RoBERTa (``position_offset`` > 0): counted over non-pad tokens from the offset, padding
        at ``pad_token_id``, as HF's ``create_position_ids_from_input_ids``."""
        if self.cfg.position_offset == 0:
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, L)
        real = (input_ids != self.cfg.pad_token_id).long()
        return (real.cumsum(dim=1) + self.cfg.position_offset - 1) * real + self.cfg.pad_token_id * (1 - real)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.position_ids(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class TextEncoder(nn.Module):
    """``embeddings`` + ``encoder``: HF ``BertModel`` without its pooler (SCL pools in the fusion encoder)."""

    def __init__(self, cfg: TextConfig, *, attn_backend: str = "auto", init_std: float = 0.02,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, device=device, dtype=dtype)
        self.encoder = BertEncoder(cfg, attn_backend=attn_backend, device=device, dtype=dtype)
        self.apply(functools.partial(init_weights, std=init_std))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, L) int64, attention_mask (B, L) bool/int (True/1 = real token) -> (B, L, width)."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (B, L), got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        if input_ids.shape[1] > self.cfg.max_positions - self.cfg.position_offset:
            raise ValueError(f"text length {input_ids.shape[1]} exceeds max_positions={self.cfg.max_positions}"
                             f" (offset {self.cfg.position_offset})")
        return self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask.bool())
