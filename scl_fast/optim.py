"""Optimizer and learning-rate schedule of the method: AdamW with per-group LR multipliers, warm-up, decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from scl_fast.config import TrainConfig

APEX_HINT = (
    "NVIDIA apex (https://github.com/NVIDIA/apex), built from source with its CUDA extensions "
    "(pip install -v --no-build-isolation --config-settings '--build-option=--cuda_ext' ./apex); "
    "the PyPI package called 'apex' is unrelated"
)


def build_optimizer(
    param_groups: Iterable[dict[str, Any]], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` over ``param_groups`` (each with its own ``lr``/``weight_decay``).

    ``adamw`` is torch's fused AdamW, on CUDA and on the CPU: one kernel for all parameters, which also skips an
    update on the device when told to (``found_inf``: the step's non-finite check needs no host read, see
    ``step.py``); elementwise, so bit-reproducible, which the resume test relies on. ``apex_*`` need NVIDIA apex and
    CUDA (and cost a host read per step to skip a non-finite one).
    """
    groups = list(param_groups)
    if not groups:
        raise ValueError("build_optimizer got no parameter groups")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
    try:
        import apex.optimizers as apex_optim
    except ImportError as err:
        raise ImportError(f"train.optimizer={cfg.optimizer!r} needs {APEX_HINT}") from err
    if device.type != "cuda":
        raise ValueError(f"train.optimizer={cfg.optimizer!r} runs on CUDA only, got device {device}")
    if cfg.optimizer == "apex_adam":
        return apex_optim.FusedAdam(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, adam_w_mode=True)
    if cfg.optimizer == "apex_lamb":
        return apex_optim.FusedLAMB(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown train.optimizer {cfg.optimizer!r}")


class WarmupDecay:
    """LR factor for optimizer step ``s`` (0-based): linear warm-up to 1, then linear/cosine decay or constant.

    Warm-up starts at 1/warmup rather than 0, so the first step is not wasted. Decay reaches 0 after the last
    step. A callable object (not a lambda) so ``LambdaLR.state_dict()`` carries it.
    """

    def __init__(self, total_steps: int, warmup_frac: float, kind: str) -> None:
        if kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule must be 'linear', 'cosine' or 'constant', got {kind!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.warmup = min(int(round(warmup_frac * total_steps)), total_steps - 1)
        self.kind = kind

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        progress = min(progress, 1.0)
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Scales every group's own LR (so the head multiplier survives) by ``WarmupDecay``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(cfg.steps, cfg.warmup_frac, cfg.lr_schedule))
