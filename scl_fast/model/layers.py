"""Small building blocks shared by the encoders: activations and the weight initialisation."""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation (its checkpoints are only exact with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The activation module for a config's ``act`` field."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; choose gelu, gelu_tanh, quick_gelu or relu")


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (normal(0, std) weights, zero biases, unit LayerNorm), used with ``Module.apply``.

    Pretrained checkpoints overwrite it; from scratch (the demo preset) it is what every encoder here starts
    from, so the three encoders and the heads share one rule.
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
