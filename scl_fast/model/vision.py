"""Flexible vision encoder: a CLIP-style ViT for images and videos, with MAE-style patch dropping for SCL.

Every input is (B, F, 3, H, W) (an image is a 1-frame video; (B, 3, H, W) is accepted as F = 1). Tokens are
ordered [CLS_1..CLS_F, patches of frame 1, ..., patches of frame F]; each frame has its own CLS (the shared
``class_embedding``), every token gets the spatial position embedding of its place in the frame plus the
learnable temporal embedding of its frame. For F > 1 every block attends with the frame-block + global-CLS
pattern (``frames=F`` at the attention dispatch point): CLS rows see everything, a patch sees its own frame's
CLS and patches. Parameter names follow OpenAI CLIP where it has the part (``class_embedding``,
``positional_embedding``, ``ln_pre``, ``ln_post``, ``blocks.N.ln_1``, ``blocks.N.attn.in_proj`` = CLIP's packed
``in_proj_weight``), so CLIP and HF ViT checkpoints load with a renaming (``scl_fast/convert.py``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import VisionConfig
from .layers import activation, init_weights
from .ops import random_masking


class Attention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (one GEMM) and the frame-block pattern."""

    def __init__(self, dim: int, heads: int, *, attn_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.attn_backend = attn_backend
        self.in_proj = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, *, frames: int | None = None) -> torch.Tensor:
        """x (B, L, dim) -> (B, L, dim); ``frames`` selects the frame-block pattern."""
        b, n, d = x.shape
        qkv = self.in_proj(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D)
        out = attention(qkv[0], qkv[1], qkv[2], backend=self.attn_backend, frames=frames)  # (B, H, L, D)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, *, act: str = "gelu", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (CLIP's ResidualAttentionBlock)."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-5,
                 attn_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.ln_1 = nn.LayerNorm(dim, eps=eps, **kw)
        self.attn = Attention(dim, heads, attn_backend=attn_backend, **kw)
        self.ln_2 = nn.LayerNorm(dim, eps=eps, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, **kw)

    def forward(self, x: torch.Tensor, *, frames: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), frames=frames)
        return x + self.mlp(self.ln_2(x))


class VisionEncoder(nn.Module):
    """CLIP-style ViT over images and videos; see the module docstring for the token layout."""

    def __init__(self, cfg: VisionConfig, *, attn_backend: str = "auto", init_std: float = 0.02,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        w = cfg.width
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size, bias=False, **kw)
        self.class_embedding = nn.Parameter(torch.empty(w, **kw))
        self.positional_embedding = nn.Parameter(torch.empty(1 + self.grid**2, w, **kw))
        self.temporal_embedding = nn.Parameter(torch.empty(cfg.max_frames, w, **kw))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.layer_norm_eps, **kw) if cfg.ln_pre else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(w, cfg.heads, mlp_ratio=cfg.mlp_ratio, act=cfg.act, eps=cfg.layer_norm_eps,
                  attn_backend=attn_backend, **kw)
            for _ in range(cfg.layers)
        )
        self.ln_post = nn.LayerNorm(w, eps=cfg.layer_norm_eps, **kw)
        self.apply(functools.partial(init_weights, std=init_std))
        nn.init.normal_(self.class_embedding, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.02)
        # zero: a checkpoint trained on images (CLIP) starts out exactly as it was, for videos too
        nn.init.zeros_(self.temporal_embedding)

    def patch_positions(self, gh: int, gw: int) -> torch.Tensor:
        """(gh*gw, width) spatial position embedding of the patches: the stored grid, resized bicubically when
        the input resolution differs from ``image_size`` (the CLS position is never resized)."""
        pos = self.positional_embedding[1:]
        if (gh, gw) == (self.grid, self.grid):
            return pos
        grid = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, W, g, g)
        # fp16/bf16 upsampling is not implemented on every device: resize those in fp32
        work = grid.float() if grid.dtype in (torch.float16, torch.bfloat16) else grid
        grid = F.interpolate(work, size=(gh, gw), mode="bicubic", align_corners=False).to(pos.dtype)
        return grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)

    def forward(self, pixels: torch.Tensor, *, mask_noise: torch.Tensor | None = None,
                keep: int | None = None) -> torch.Tensor:
        """Encode images or videos, optionally keeping only ``keep`` patch positions per frame.

        Args:
            pixels: (B, F, 3, H, W) or (B, 3, H, W) float; H and W multiples of ``patch_size``.
            mask_noise: (B, P) random keys for SCL's masked-vision pass: the ``keep`` positions with the smallest
                keys are kept, the same ones in every frame (the caller owns the keys, so two schedules can use the
                same subset).
            keep: K, kept positions per frame; required with ``mask_noise``.

        Returns:
            (B, F * (1 + K), width) with K = P when nothing is dropped: [CLS_1..CLS_F, patches of frame 1, ...].
        """
        if pixels.dim() == 4:
            pixels = pixels[:, None]
        if pixels.dim() != 5 or pixels.shape[2] != 3:
            raise ValueError(f"pixels must be (B, F, 3, H, W) or (B, 3, H, W), got {tuple(pixels.shape)}")
        b, nf, _, h, w = pixels.shape
        p = self.cfg.patch_size
        if nf > self.cfg.max_frames:
            raise ValueError(f"at most max_frames={self.cfg.max_frames} frames, got {nf} in {tuple(pixels.shape)}")
        if h % p or w % p:
            raise ValueError(f"H and W must be multiples of patch_size={p}, got {tuple(pixels.shape)}")
        if (mask_noise is None) != (keep is None):
            raise ValueError("mask_noise and keep go together")
        gh, gw = h // p, w // p
        x = self.patch_embed(pixels.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*F, P, W)
        x = x.view(b, nf, gh * gw, -1) + self.temporal_embedding[:nf, None]  # (B, F, P, W)
        pos = self.patch_positions(gh, gw)  # (P, W)
        if mask_noise is None:
            x = (x + pos).flatten(1, 2)  # (B, F*P, W)
        else:
            if mask_noise.shape != (b, gh * gw):
                raise ValueError(f"mask_noise must be (B, P)=({b}, {gh * gw}), got {tuple(mask_noise.shape)}")
            x = random_masking(x.flatten(1, 2), mask_noise, keep, frames=nf, pos=pos)  # (B, F*K, W)
        cls = self.class_embedding + self.positional_embedding[0] + self.temporal_embedding[:nf]  # (F, W)
        x = torch.cat([cls.expand(b, -1, -1).to(x.dtype), x], dim=1)  # (B, F*(1+K), W)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x, frames=nf)
        return self.ln_post(x)
