"""The model's calls into ``scl_kernels``: the fused op when the installed build provides it, else its reference.

The fused ops are being added to ``scl_kernels`` one by one; every call of the model goes through ``_op`` so
that switching an op from its reference to the kernel needs no model change (the lookup is per call, hence an
op that appears later is picked up without re-importing the model).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

import scl_kernels
from scl_kernels import reference

# A plain module flag, not a ContextVar: torch.compile cannot trace ContextVar.get (a graph break per op call)
# but guards on a global it reads.
_FORCE_REFERENCE = False


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Run every op of the model through its plain PyTorch reference inside the block (pure autograd, any dtype):
    the oracle path of the schedule tests and the "reference losses" side of the step benchmark."""
    global _FORCE_REFERENCE
    before, _FORCE_REFERENCE = _FORCE_REFERENCE, True
    try:
        yield
    finally:
        _FORCE_REFERENCE = before


def _op(name: str) -> Callable[..., Any]:
    """``scl_kernels.<name>`` if it exists, else ``scl_kernels.reference.<name>_ref`` (same arguments)."""
    fn = None if _FORCE_REFERENCE else getattr(scl_kernels, name, None)
    return fn if fn is not None else getattr(reference, f"{name}_ref")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor, *, detach_b: bool = False
             ) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows (both directions summed), rows L2-normalised over the feature dim."""
    return _op("info_nce")(a, b, temperature, detach_b=detach_b)


def row_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the rows (B,), the padding rows of a padded batch (``Batch.valid`` False) left out; computed on the
    device (a batch of padding only gives 0, not NaN)."""
    if valid is None:
        return values.mean()
    weight = valid.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1)


def info_nce_rows(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor, valid: torch.Tensor, *,
                  detach_b: bool = False) -> torch.Tensor:
    """``info_nce`` over the rows where ``valid`` (N,) is True only: the others are neither anchors nor negatives.

    Plain PyTorch (an N x N matrix) for the rare batch the loader padded to its fixed size (``Batch.valid``): the
    fused op has no row mask, and at these sizes the matrix is small. Equal to ``info_nce`` on the valid rows."""
    if detach_b:
        b = b.detach()
    dtype = torch.promote_types(a.dtype, torch.float32)  # fp16/bf16 upcast for the softmax; float64 kept
    an, bn = F.normalize(a.to(dtype), dim=-1), F.normalize(b.to(dtype), dim=-1)
    logits = (an @ bn.t() / temperature).masked_fill(~valid[None, :], float("-inf"))  # (N, N) invalid keys out
    diag = torch.arange(a.shape[0], device=a.device)
    per_row = F.cross_entropy(logits, diag, reduction="none") + F.cross_entropy(
        logits.t().masked_fill(~valid[None, :], float("-inf")), diag, reduction="none")
    weight = valid.to(per_row.dtype)
    return (per_row.nan_to_num() * weight).sum() / weight.sum().clamp_min(1)


def cosine_recovery(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean_i (1 - cos(a_i, sg(b_i)))."""
    return _op("cosine_recovery")(a, b, detach_b=True)


def mlm_mask(ids: torch.Tensor, special_mask: torch.Tensor, *, p: float, replace: tuple[float, float, float],
             vocab_size: int, mask_id: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT 80/10/10 masking -> (masked_ids, labels with -100 where not predicted)."""
    return _op("mlm_mask")(ids, special_mask, p=p, replace=replace, vocab_size=vocab_size, mask_id=mask_id,
                           generator=generator)


def scl_text_mask(ids: torch.Tensor, special_mask: torch.Tensor, *, ratio: float, mask_id: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """SCL's text masking: ``ratio`` of the real tokens, drawn without replacement, become [MASK]."""
    return _op("scl_text_mask")(ids, special_mask, ratio=ratio, mask_id=mask_id, generator=generator)


def random_masking(x: torch.Tensor, noise: torch.Tensor, keep: int, *, frames: int, pos: torch.Tensor | None
                   ) -> torch.Tensor:
    """Keep the ``keep`` patch positions with the smallest ``noise`` (same subset in every frame), adding ``pos``.

    The caller owns the random keys (so two schedules can use the same subset); the fused kernel is used when
    it accepts caller-given keys, otherwise the reference (an argsort and a gather: cheap next to a ViT).
    """
    fn = None if _FORCE_REFERENCE else getattr(scl_kernels, "random_masking", None)
    if fn is not None and "noise" in inspect.signature(fn).parameters:
        kept, _ = fn(x, keep / noise.shape[1], frames=frames, pos=pos, noise=noise)
    else:
        kept, _ = reference.random_masking_ref(x, noise, keep, frames=frames, pos=pos)
    return kept


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N_r, D) over ranks with a correct gradient (summed over ranks, this rank's rows back);
    identity on one process. One implementation for both schedules: it is a collective, not a kernel with a
    reference twin."""
    return scl_kernels.all_gather_with_grad(x)
