"""Heads of the pre-training objectives: ITC projections + temperature, ITM poolers + classifier, MLM head.

Each head computes its logits/features only; the losses (and the gather across ranks) live in ``scl.py`` so the
two step schedules share one definition of every loss.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .config import LossConfig
from .layers import activation, init_weights


class ITCHead(nn.Module):
    """Projection MLPs (width -> width -> itc_dim) of the unimodal CLS features and the learnable temperature."""

    def __init__(self, width: int, cfg: LossConfig, *, init_std: float = 0.02,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.temperature_range = tuple(cfg.itc_temperature_range)
        self.text = nn.Sequential(nn.Linear(width, width, **kw), nn.GELU(), nn.Linear(width, cfg.itc_dim, **kw))
        self.image = nn.Sequential(nn.Linear(width, width, **kw), nn.GELU(), nn.Linear(width, cfg.itc_dim, **kw))
        self.apply(functools.partial(init_weights, std=init_std))
        # (1,), not 0-dim: FSDP2 shards parameters along dim 0 and refuses 0-dim ones
        self.temperature = nn.Parameter(torch.full((1,), cfg.itc_temperature, **kw))

    def temp(self) -> torch.Tensor:
        """The temperature, clamped into ``itc_temperature_range`` first (ALBEF: in place, without gradient, so
        an optimizer step past a bound is undone and the parameter never sits in a zero-gradient region)."""
        with torch.no_grad():
            self.temperature.clamp_(*self.temperature_range)
        return self.temperature[0]


class ITMHead(nn.Module):
    """Poolers (Linear + tanh) on text[:, 0] and on mean(image[:, :F]), then Linear(2 * width, 2)."""

    def __init__(self, width: int, *, init_std: float = 0.02, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.text_pooler = nn.Linear(width, width, **kw)
        self.image_pooler = nn.Linear(width, width, **kw)
        self.classifier = nn.Linear(2 * width, 2, **kw)
        self.apply(functools.partial(init_weights, std=init_std))

    def pool(self, text: torch.Tensor, image: torch.Tensor, frames: int) -> torch.Tensor:
        """text (B, L, W), image (B, N, W) fusion outputs -> (B, 2W) global feature: the ITM classifier's input,
        and the downstream heads' (METER's VQA and NLVR2 classifiers read the same pooled feature)."""
        t = torch.tanh(self.text_pooler(text[:, 0]))  # (B, W)
        v = torch.tanh(self.image_pooler(image[:, :frames].mean(dim=1)))  # (B, W)
        return torch.cat([t, v], dim=-1)

    def forward(self, text: torch.Tensor, image: torch.Tensor, frames: int) -> torch.Tensor:
        """text (B, L, W), image (B, N, W) fusion outputs -> (B, 2) logits (index 1 = matched)."""
        return self.classifier(self.pool(text, image, frames))


class MLMHead(nn.Module):
    """BERT's prediction head: transform (Linear, activation, LayerNorm) and the vocabulary decoder.

    Run on the masked positions only (``scl.py`` gathers them first): the decoder is the largest GEMM of the
    text side (width x vocab), and 85% of its rows would be thrown away."""

    def __init__(self, width: int, vocab_size: int, *, act: str = "gelu", eps: float = 1e-12,
                 tied_weight: nn.Parameter | None = None, init_std: float = 0.02,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.dense = nn.Linear(width, width, **kw)
        self.act = activation(act)
        self.LayerNorm = nn.LayerNorm(width, eps=eps, **kw)
        self.decoder = nn.Linear(width, vocab_size, **kw)
        self.apply(functools.partial(init_weights, std=init_std))
        if tied_weight is not None:
            if tied_weight.shape != self.decoder.weight.shape:
                raise ValueError(f"a tied MLM decoder needs a (vocab, width)={tuple(self.decoder.weight.shape)} "
                                 f"weight, got {tuple(tied_weight.shape)}")
            self.decoder.weight = tied_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, W) hidden states at the masked positions -> (M, vocab) logits."""
        return self.decoder(self.LayerNorm(self.act(self.dense(x))))
