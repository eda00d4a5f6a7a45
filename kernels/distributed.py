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
        ctx.group = group
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)  # (world * N, ...), rank order

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()  # all_reduce works in place; the incoming gradient may be shared
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None  # None: group


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, with the gradient summed over ranks in the backward.

    Args:
        x: (N, ...) local rows. Every rank must pass the same shape (equal N per rank; not checked: a
            mismatch fails or hangs inside the collective, as with ``torch.distributed.all_gather``).
        group: the process group (default: the world).

    Returns:
        (world_size * N, ...) rows in rank order (rank r's rows at ``[r*N, (r+1)*N)``). Without an
        initialised process group, or with world size 1, ``x`` itself (identity, no copy).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)
