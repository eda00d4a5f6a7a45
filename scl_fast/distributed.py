"""Process group, device and data-parallel wrapping on PyTorch's own engine (torchrun + DDP or FSDP2).

Ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it the run is a
single process and nothing here touches ``torch.distributed``. NCCL on GPUs, gloo on CPU. The contrastive
losses all-gather their negatives inside the model (``scl_kernels.all_gather_with_grad``), so the wrapper
only has to average gradients.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun job if there is one and pick this rank's device.

    ``device``: "auto" = this rank's GPU when CUDA is available, else the CPU; "cpu" forces the CPU (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # A generous timeout: rank 0 evaluates and writes checkpoints while the others wait at a barrier.
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
            device_id=dev if use_cuda else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def close_distributed() -> None:
    """Leave the process group (idempotent).

    First a short pause that releases the GIL: gloo's worker thread frees each finished collective, and that
    needs the GIL. If the main thread reaches the process group's C++ destructor first (when the DDP reducer
    that holds it is freed), it joins that worker while holding the GIL, and the process never exits: a rank of
    the 2-process gradient test hung so after its last all-reduce in about one run of four (PyTorch issue
    56297 describes the destructor). No collective is pending by now, so the pause is all the worker needs."""
    global _HOST_GROUP
    if dist.is_initialized():
        time.sleep(0.2)
        dist.destroy_process_group()
    _HOST_GROUP = None


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run folder, whose default name holds rank 0's clock)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (RNG states and data positions for checkpoints)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


_HOST_GROUP: Any = None


def any_rank(flags: list[bool], info: DistInfo) -> list[bool]:
    """Each flag True where it is True on some rank, through a CPU (gloo) group: agreeing on host-side flags (the
    stop signals, every step) without a device read that would stall a GPU's launch queue."""
    if not info.distributed:
        return flags
    global _HOST_GROUP
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return [bool(v > 0) for v in t.tolist()]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op for one process); returns ``t``."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap_model(
    model: nn.Module, info: DistInfo, engine: Literal["ddp", "fsdp"], *, find_unused_parameters: bool = False
) -> nn.Module:
    """The module the training loop calls: ``model`` itself (one process), DDP, or FSDP2-sharded in place.

    FSDP2 shards each transformer layer (every element of an ``nn.ModuleList``: layers are only called through
    their ``forward``, so their parameters are gathered just while they run) and then the root, which owns the
    rest (embeddings, modality projections, heads: small, and also reached through methods other than
    ``forward``, which are registered with FSDP so they gather the root's parameters too). It changes ``model``
    in place (its parameters become DTensors); checkpoints then go through ``torch.distributed.checkpoint``.
    """
    if not info.distributed:
        return model
    if engine == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    if engine == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for layer in module:
                    if any(p.requires_grad for p in layer.parameters()):
                        fully_shard(layer)
        fully_shard(model)
        for name in ("encode_image", "encode_text", "itm_scores"):
            if callable(getattr(model, name, None)):
                register_fsdp_forward_method(model, name)
        return model
    raise ValueError(f"engine must be 'ddp' or 'fsdp', got {engine!r}")


def is_fsdp(model: nn.Module) -> bool:
    """True when ``model`` was sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
