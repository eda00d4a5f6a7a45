"""``ModelConfig.init_std``: the std every from-scratch weight is drawn with, and why the demo preset raises it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from scl_fast.model.config import ModelConfig, model_preset
from scl_fast.model.scl import SCLModel
from tests.model import tiny_batch, tiny_config


def _weights(model: nn.Module) -> torch.Tensor:
    """Every Linear/Conv2d/Embedding weight of ``model`` flattened into one vector (the padding row left out)."""
    parts = []
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            parts.append(m.weight.detach().flatten())
        elif isinstance(m, nn.Embedding):
            w = m.weight.detach()
            if m.padding_idx is not None:
                w = torch.cat([w[: m.padding_idx], w[m.padding_idx + 1:]])
            parts.append(w.flatten())
    return torch.cat(parts)


@pytest.mark.parametrize("std", [0.02, 0.13])
def test_weights_drawn_at_init_std(std: float) -> None:
    torch.manual_seed(0)
    model = SCLModel(dataclasses.replace(tiny_config(), init_std=std))
    w = _weights(model)
    assert w.numel() > 10_000
    assert abs(w.std().item() / std - 1) < 0.03, f"weights drawn with std {w.std().item():.4f}, asked for {std}"
    assert abs(w.mean().item()) < 0.05 * std
    for m in model.modules():  # the rest of BERT's rule is kept: zero biases, unit LayerNorms
        if isinstance(m, nn.Linear) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            assert torch.count_nonzero(m.weight[m.padding_idx]) == 0
    # the vision encoder's own parameters keep their rule (temporal zero: images start as CLIP would)
    assert torch.count_nonzero(model.vision.temporal_embedding) == 0
    assert model.vision.class_embedding.std().item() < 0.04


def test_init_std_must_be_positive() -> None:
    with pytest.raises(ValueError, match="init_std"):
        ModelConfig(init_std=0.0)
    with pytest.raises(ValueError, match="init_std"):
        ModelConfig(init_std=-0.1)


def test_demo_preset_draws_one_over_sqrt_width() -> None:
    cfg = model_preset("demo")
    assert cfg.init_std == pytest.approx(cfg.fusion.width ** -0.5)
    assert model_preset("paper").init_std == 0.02  # pretrained encoders; heads and fusion as in METER


def _itc_spread(cfg: ModelConfig) -> float:
    """Mean cosine between the ITC text features of different captions at initialisation (1 = identical)."""
    torch.manual_seed(0)
    model = SCLModel(cfg).eval()
    _, ids, attention, _ = tiny_batch(cfg, batch=8, length=12)
    with torch.no_grad():
        t = model.encode_text(ids, attention)
    sim = t @ t.T
    return sim[~torch.eye(len(t), dtype=torch.bool)].mean().item()


def test_wider_init_separates_samples_at_start() -> None:
    """The reason for the demo's init: with BERT's 0.02 in a narrow model the CLS features of different inputs are
    nearly parallel (contrastive losses see no signal); at 1/sqrt(width) they are clearly apart."""
    base = tiny_config(init_std=0.02)
    narrow = _itc_spread(base)
    wide = _itc_spread(dataclasses.replace(base, init_std=base.fusion.width ** -0.5))
    assert narrow > 0.98, narrow
    assert wide < narrow - 0.05, (narrow, wide)
