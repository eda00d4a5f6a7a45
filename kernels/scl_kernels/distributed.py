"""All-gather whose backward is correct: the gathered features' gradient is summed over ranks.

Contrastive losses (ITC, SCL) compare every local sample with the whole global batch. Each rank computes
the loss over the gathered (N * world, D) features, so the gradient of rank r's local rows has a share from
*every* rank's loss: the backward must all-reduce (sum) the gradient of the gathered tensor before slicing out
the local rows. The public SCL release returned only the local slice of its own rank's gradient, so under
DDP's averaging the contrastive gradients came out world_size times too small.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's rows. Backward: all-reduce (sum) the gradient, keep the local rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        x = x.contiguous()
        # ranks may hold different numbers of rows (a bad sample skipped on one of them): exchange the counts,
        # pad every rank to the largest, gather, and drop the padding
        count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        sizes = [int(c.item()) for c in counts]
        most = max(sizes)
        padded = x if x.shape[0] == most else torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.rows = x.shape[0]
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)  # rank order

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()  # all_reduce works in place; the incoming gradient may be shared
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.rows], None  # None: group


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, with the gradient summed over ranks in the backward.

    Args:
        x: (N_r, ...) local rows; N_r may differ between ranks (the trailing dims may not). The counts are
            exchanged first (one small collective), so a rank whose batch lost a bad sample still lines up.
        group: the process group (default: the world).

    Returns:
        (sum_r N_r, ...) rows in rank order. Without an initialised process group, or with world size 1, ``x``
        itself (identity, no copy).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)
