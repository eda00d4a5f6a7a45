"""One optimizer step with no host synchronisation: forward, backward, clipping, a device-side skip, update.

On a GPU the training step was bound by the host: the kernels waited on Python between them, and every step read
device values on the host (a non-finite check, the gradient norm, the number of masked tokens), each read a full
stall of the launch queue. Here nothing in the step reads the device:

- the batch has one shape per frame count (the loader pads it; ``Batch.valid``), the MLM head a fixed number of
  rows, so the step compiles once per frame count and every launch is known in advance;
- the gradient is clipped on the device (``clip_grad_norm_``'s coefficient is a tensor);
- a non-finite loss or gradient skips the update on the device: the fused AdamW kernel reads ``found_inf`` and
  leaves parameters, moments and its step count untouched (with fp16 the grad scaler does the same and lowers the
  scale), while the counts of skipped steps stay device tensors that the trainer reads every ``log_every`` steps;
- the losses of the step stay device tensors (summed over the log window on the device).

``train.cuda_graphs`` replays that compiled forward and backward from CUDA graphs (inductor's CUDA-graph trees:
warm-up and autotuning before capture, one graph per shape, inputs copied into static buffers), which is why the
shapes must be static and the graph free of host reads.

``train.compile`` compiles the forward and loss (one graph per frame count, no graph break; the backward is compiled
with it by AOTAutograd). The optimizer update is already one fused kernel for all parameters (torch refuses to trace
into a fused optimizer, by design: nothing to gain), and the clipping a few foreach kernels. The step's random
choices (masks, kept patches, negatives) are drawn from the step generator on the device just before the graph
runs (a generator object cannot be an input of a graph).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scl_fast import distributed as dist_util
from scl_fast.errors import ConfigError


@dataclass
class StepResult:
    """What one step leaves on the device (0-dim tensors; nothing here has been read by the host)."""

    losses: dict[str, torch.Tensor]
    """The step's mean loss over its micro-batches, "total" and the task's named parts (float32)."""
    applied: torch.Tensor
    """bool: the update was applied (finite loss and gradient)."""
    bad: torch.Tensor
    """bool: the step counts as skipped (a non-finite loss; or a non-finite gradient without fp16's scaler, for
    which an infinite gradient is its normal signal to lower the scale)."""
    grad_norm: torch.Tensor
    """The global gradient norm before clipping (inf or nan on a skipped step)."""


class TrainStep:
    """Runs steps of one training run: ``step(batches)`` with ``grad_accum`` micro-batches already on the device."""

    def __init__(self, *, task: Any, module: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, info: dist_util.DistInfo, clip_grad: float,
                 autocast: Callable[[], contextlib.AbstractContextManager], generator: torch.Generator,
                 compile: bool = False, cuda_graphs: bool = False) -> None:
        self.task, self.module, self.model = task, module, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.info, self.autocast, self.generator = info, autocast, generator
        self.max_norm = clip_grad if clip_grad > 0 else math.inf
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Fused AdamW skips an update on the device (found_inf); another optimizer needs the host to decide.
        self.device_skip = bool(optimizer.defaults.get("fused")) and not scaler.is_enabled()
        self.forward_module = module
        if cuda_graphs:
            device = next(model.parameters()).device
            if device.type != "cuda":
                raise ConfigError(f"train.cuda_graphs needs a CUDA device, the model is on {device}")
            if info.distributed:
                raise ConfigError("train.cuda_graphs runs on one process for now (not under DDP/FSDP): leave it off "
                                  "with torchrun")
            self.forward_module = torch.compile(module, mode="reduce-overhead")
        elif compile:
            self.forward_module = torch.compile(module)

    def __call__(self, batches: list[Any]) -> StepResult:
        accum = len(batches)
        sums: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(batches):
            last = micro == accum - 1
            sync = last or not self.info.distributed or dist_util.is_fsdp(self.model)
            with contextlib.nullcontext() if sync else self.module.no_sync():
                # a batch padded to its size (rare: bad samples) runs uncompiled, so it never adds a compiled graph
                module = self.forward_module if batch.valid is None else self.module
                with self.autocast():
                    loss, parts = self.task.forward(module, self.model, batch, self.generator)
                self.scaler.scale(loss / accum).backward()
            for name, value in {"total": loss, **parts}.items():
                value = value.detach().float() / accum
                sums[name] = sums[name] + value if name in sums else value
        applied, bad, norm = self._step(sums["total"])
        self.scheduler.step()
        return StepResult(sums, applied, bad, norm)

    def _step(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.scaler.unscale_(self.optimizer)  # fp16: on the device (no-op otherwise)
        grads = [p for p in self.params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.clip_grad_norm_(grads, self.max_norm, foreach=True)
        else:
            norm = torch.zeros((), device=loss.device)
        finite_loss = torch.isfinite(loss)
        if self.info.distributed:  # the loss is per rank: every rank must take the same decision
            flag = (~finite_loss).float().reshape(1)
            dist_util.all_reduce_sum(flag, self.info)  # a device collective: no host read
            finite_loss = flag[0] == 0
        applied = finite_loss & torch.isfinite(norm)
        if self.scaler.is_enabled():
            # an infinite gradient is fp16's normal signal: the scaler skips the update and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
            bad = ~finite_loss
        else:
            self._apply(applied)
            bad = ~applied
        self.optimizer.zero_grad(set_to_none=True)
        return applied, bad, norm

    def _apply(self, applied: torch.Tensor) -> None:
        """The optimizer update where ``applied`` is True, left out on the device where it is False."""
        if self.device_skip:
            self.optimizer.found_inf = (~applied).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif bool(applied):  # sync: only for optimizers without a device-side skip (apex)
            self.optimizer.step()
