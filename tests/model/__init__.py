"""Shared helpers of the model tests."""

from __future__ import annotations

import torch

from scl_fast.model.config import FusionConfig, LossConfig, ModelConfig, TextConfig, VisionConfig


def tiny_config(*, dropout: float = 0.0, attn_backend: str = "eager", init_std: float = 32 ** -0.5,
                **loss: object) -> ModelConfig:
    """The demo model's shape at a size that runs a step in well under a second on 2 cores (16 patches of
    8 px, width 32, 2 layers everywhere, a 120-token vocabulary). Weights drawn with std 1/sqrt(width), as the demo
    preset's: with BERT's 0.02 at width 32 every sample's features are nearly equal (ITM sits at ln 2, the cosine
    SCL loss at 0), and a test comparing two schedules could not see a sample fused with the wrong partner."""
    return ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2),
        text=TextConfig(vocab_size=120, width=32, layers=2, heads=2, intermediate=64, max_positions=32,
                        mask_token_id=103, dropout=dropout),
        fusion=FusionConfig(width=32, layers=2, heads=2, intermediate=64, dropout=dropout),
        loss=LossConfig(itc_dim=16, **loss),
        attn_backend=attn_backend,
        init_std=init_std,
    )


def tiny_batch(cfg: ModelConfig, batch: int = 6, frames: int = 1, length: int = 11, *,
               dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random pixels (B, F, 3, H, W) and captions [CLS] w ... w [SEP] [PAD]... of varied lengths (the shortest
    4 tokens), with their attention and special masks."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    pixels = torch.randn(batch, frames, 3, size, size, generator=g, dtype=dtype)
    ids = torch.randint(104, cfg.text.vocab_size, (batch, length), generator=g)  # words: never [PAD] or [MASK]
    lengths = torch.linspace(4, length, batch).round().long()
    pos = torch.arange(length)[None]
    attention = pos < lengths[:, None]
    ids[:, 0] = 101  # [CLS]
    ids[pos == (lengths[:, None] - 1)] = 102  # [SEP]
    ids[~attention] = cfg.text.pad_token_id
    special = ~attention | (ids == 101) | (ids == 102)
    return pixels, ids, attention, special
