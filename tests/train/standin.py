"""A small model with ``SCLModel``'s training API, for trainer tests that must not depend on the full model's speed.

It has dropout (global RNG), uses the step generator (random masking of text tokens) and a learnable temperature,
so checkpoint/resume and DDP tests exercise every kind of state the real model has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from scl_fast.config import Config


@dataclass
class StepOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class StandInModel(nn.Module):
    def __init__(self, cfg: Config, dim: int = 32) -> None:
        super().__init__()
        size = cfg.model.vision.image_size
        self.patch = nn.Conv2d(3, dim, kernel_size=16, stride=16)
        self.frame_pos = nn.Parameter(torch.randn(8, dim) * 0.02)
        self.tok = nn.Embedding(cfg.model.text.vocab_size, dim)
        self.drop = nn.Dropout(0.1)
        self.img_proj = nn.Linear(dim, dim)
        self.txt_proj = nn.Linear(dim, dim)
        self.head = nn.Linear(2 * dim, 1)
        self.log_temp = nn.Parameter(torch.tensor(-2.0))
        self.mask_id = cfg.model.text.mask_token_id
        self.size = size

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        b, f = pixels.shape[:2]
        x = self.patch(pixels.flatten(0, 1)).flatten(2).mean(-1).view(b, f, -1)
        if f > 1:
            x = x + self.frame_pos[:f]
        return F.normalize(self.img_proj(self.drop(x.mean(1))), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        x = (self.tok(ids) * m).sum(1) / m.sum(1)
        return F.normalize(self.txt_proj(self.drop(x)), dim=-1)

    def itm_scores(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encode_image(pixels), self.encode_text(ids, mask)], -1)).squeeze(-1)

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
        head = list(self.head.parameters())
        rest = [p for n, p in self.named_parameters() if not n.startswith("head.")]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
                {"params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay}]

    def forward(self, pixels, input_ids, attention_mask, special_mask, *, generator=None, schedule=None):
        noise = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        masked = torch.where((noise < 0.2) & ~special_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        v, t = self.encode_image(pixels), self.encode_text(masked, attention_mask)
        logits = v @ t.T / self.log_temp.exp()
        target = torch.arange(len(v), device=v.device)
        itc = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
        perm = torch.randperm(len(v), generator=generator, device=v.device)
        pos = self.head(torch.cat([v, t], -1)).squeeze(-1)
        neg = self.head(torch.cat([v[perm], t], -1)).squeeze(-1)
        itm = F.binary_cross_entropy_with_logits(torch.cat([pos, neg]),
                                                 torch.cat([torch.ones_like(pos), (perm == target).float()]))
        return StepOutput(itc + itm, {"itc": itc, "itm": itm})


def make_standin(cfg: Config) -> StandInModel:
    return StandInModel(cfg)
