"""Downstream classifiers on the fusion encoder's pooled feature, METER's shape.

The pooled feature is the ITM head's input (``SCLModel.pooled_features``: Pooler_t(text CLS) and Pooler_v(mean
frame CLS), 2W = 1536 wide at the paper size). METER's VQA classifier maps it through Linear(2W, 2W), LayerNorm,
GELU and Linear(2W, answers); its NLVR2 classifier reads the two images' pooled features side by side (4W) through
Linear(4W, 2W), LayerNorm, GELU and Linear(2W, 2).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from scl_fast.model.layers import init_weights


class ClassifierHead(nn.Module):
    """Linear(in_dim, hidden), LayerNorm, GELU, Linear(hidden, classes), initialised as the backbone's layers."""

    def __init__(self, in_dim: int, hidden: int, classes: int, *, init_std: float = 0.02,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden, **kw), nn.LayerNorm(hidden, **kw), nn.GELU(),
                                 nn.Linear(hidden, classes, **kw))
        self.apply(functools.partial(init_weights, std=init_std))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, classes) logits."""
        return self.mlp(pooled)
