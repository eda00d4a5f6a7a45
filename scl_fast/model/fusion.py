"""METER co-attention fusion encoder: two post-LN streams that read each other at every layer.

Each modality is first mapped to the fusion width by its own Linear (``text_proj``, ``image_proj``); ITC reads
its unimodal CLS right after that Linear, which is why the projection is a separate step (``project_text`` /
``project_image``) from the layers (``forward``): the fused step schedule projects the intact image once and
reuses it for ITC and three fusion segments. ``forward`` adds the token-type embeddings (text 0, image 1) and runs
the layers; in layer n both streams read the other stream's layer n-1 output, so they update in parallel.
The attention and FFN sub-blocks are the text encoder's (``text.py``), as in METER's ``BertCrossLayer``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .config import FusionConfig
from .layers import init_weights
from .text import BertAttention, BertIntermediate, BertOutput


class CoAttentionLayer(nn.Module):
    """One stream's layer: self-attention, cross-attention to the other stream, FFN (each post-LN)."""

    def __init__(self, cfg: FusionConfig, *, attn_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        att = {"eps": cfg.layer_norm_eps, "dropout": cfg.dropout, "attn_backend": attn_backend}
        self.attention = BertAttention(cfg.width, cfg.heads, **att, **kw)
        self.crossattention = BertAttention(cfg.width, cfg.heads, **att, **kw)
        self.intermediate = BertIntermediate(cfg.width, cfg.intermediate, act=cfg.act, **kw)
        self.output = BertOutput(cfg.width, cfg.intermediate, eps=cfg.layer_norm_eps, dropout=cfg.dropout, **kw)

    def forward(self, x: torch.Tensor, other: torch.Tensor, *, self_mask: torch.Tensor | None,
                other_mask: torch.Tensor | None, rows: slice | None = None) -> torch.Tensor:
        """x (B, Lx, W) attends to itself (keys masked by ``self_mask``) and to ``other`` (B, Lo, W) (keys masked
        by ``other_mask``); masks are (B, L) bool, True = real token, None = all real. ``rows`` computes only
        those query rows (keys and values stay complete): (B, len(rows), W)."""
        q = x if rows is None else x[:, rows]
        h = self.attention(q, key_mask=self_mask, context=x)
        h = self.crossattention(h, key_mask=other_mask, context=other)
        return self.output(self.intermediate(h), h)


class FusionEncoder(nn.Module):
    """Modality projections, token-type embeddings and ``layers`` co-attention layers per stream."""

    def __init__(self, cfg: FusionConfig, *, text_width: int, vision_width: int, attn_backend: str = "auto",
                 init_std: float = 0.02, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.cfg = cfg
        self.text_proj = nn.Linear(text_width, cfg.width, **kw)
        self.image_proj = nn.Linear(vision_width, cfg.width, **kw)
        self.token_type_embeddings = nn.Embedding(2, cfg.width, **kw)
        self.text_layers = nn.ModuleList(
            CoAttentionLayer(cfg, attn_backend=attn_backend, **kw) for _ in range(cfg.layers)
        )
        self.image_layers = nn.ModuleList(
            CoAttentionLayer(cfg, attn_backend=attn_backend, **kw) for _ in range(cfg.layers)
        )
        self.apply(functools.partial(init_weights, std=init_std))

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text encoder output (B, L, text_width) -> (B, L, width)."""
        return self.text_proj(text)

    def project_image(self, image: torch.Tensor) -> torch.Tensor:
        """Vision encoder output (B, N, vision_width) -> (B, N, width)."""
        return self.image_proj(image)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, *,
                text_rows: slice | None = None, image_rows: slice | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse projected tokens.

        Args:
            text: (B, L, width) projected text tokens (``project_text``).
            text_mask: (B, L) bool, True = real token.
            image: (B, N, width) projected vision tokens (``project_image``), all real.
            text_rows, image_rows: the rows of the LAST layer's output the caller reads (``slice(0, 1)``: the text
                CLS; ``slice(0, F)``: the frame CLS tokens), None = all. Every other row of the last layer only
                feeds outputs nobody reads, so it is not computed: the last image layer of an ITM/SCL fusion
                call then costs F query rows instead of F * (1 + P). The rows computed are exact.

        Returns:
            (text (B, L', width), image (B, N', width)) after the last layer, L' / N' the selected rows.
        """
        if text.shape[0] != image.shape[0] or text_mask.shape != text.shape[:2]:
            raise ValueError(f"text (B, L, W), text_mask (B, L) and image (B, N, W) must agree, got "
                             f"{tuple(text.shape)}, {tuple(text_mask.shape)}, {tuple(image.shape)}")
        text_mask = text_mask.bool()
        x = text + self.token_type_embeddings.weight[0]
        y = image + self.token_type_embeddings.weight[1]
        last = len(self.text_layers) - 1
        for i, (text_layer, image_layer) in enumerate(zip(self.text_layers, self.image_layers, strict=True)):
            tr, ir = (text_rows, image_rows) if i == last else (None, None)
            # both read the previous layer's outputs: the streams update in parallel (METER)
            x, y = (text_layer(x, y, self_mask=text_mask, other_mask=None, rows=tr),
                    image_layer(y, x, self_mask=None, other_mask=text_mask, rows=ir))
        return x, y
