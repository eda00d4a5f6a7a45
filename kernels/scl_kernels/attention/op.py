"""``masked_attention``: the public function, its input checks, and the ``torch.library`` op (one opaque op for
torch.compile, autograd through a second op for the backward) over the triton and reference backends.
"""

from __future__ import annotations

import math

import torch

from .._dispatch import Backend, record, resolve
from ..reference import attention_mask_ref, masked_attention_ref
from .launch import _attention_backward, _attention_forward

_OP = "masked_attention"
_MAX_HEAD_DIM = 128
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _reference_grads(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense backward written out (P recomputed, dS = P * (dP - rowsum(dP * P))). Not autograd: inside a custom
    op's implementation the dispatcher has already passed the autograd key, so a recorded graph would be empty."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    mask = attention_mask_ref(q.shape[0], q.shape[-2], k.shape[-2], key_mask=key_mask, frames=frames,
                              attn_mask=attn_mask, device=q.device)  # fmt: skip
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # rows with no key: zero, not NaN
    dv = torch.matmul(probs.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2))
    ds = probs * (dp - (dp * probs).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    return dq, dk, dv


def _seed_int(seed: torch.Tensor | None) -> int:
    # a CPU tensor (drawn outside the op so torch.compile draws a new one every call): no device sync
    return int(seed.item()) if seed is not None else 0


def _forward_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out, lse). lse is (B, H, Lq) fp32 for the triton backend and empty for the reference.

    Dropout is fused on the triton backend only (the public function runs the reference's dropout outside the op,
    where autograd keeps its mask)."""
    record(_OP, backend)
    if backend == "triton":
        out, lse, _ = _attention_forward(q, k, v, key_mask, attn_mask, frames, scale, dropout_p=dropout_p,
                                         seed=_seed_int(seed))  # fmt: skip
        return out, lse
    if dropout_p > 0.0:
        raise ValueError(f"the reference op runs without dropout, got dropout_p={dropout_p}")
    out = masked_attention_ref(q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask, scale=scale)
    return out, q.new_empty(0, dtype=torch.float32)


_masked_attention_op = torch.library.custom_op("scl::masked_attention", mutates_args=())(_forward_impl)


@_masked_attention_op.register_fake
def _(q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend):  # noqa: ANN001, ANN202
    # layouts as the real backends give them: triton copies q's strides, the reference returns contiguous tensors
    if backend == "triton":
        return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    return q.new_empty(q.shape), q.new_empty(0, dtype=torch.float32)


def _backward_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv). The triton passes recompute P (and the dropout mask, from the same seed) from lse; the
    reference recomputes the dense forward."""
    if backend == "triton":
        return _attention_backward(dout, q, k, v, out, lse, key_mask, attn_mask, frames, scale, dropout_p,
                                   _seed_int(seed))  # fmt: skip
    return _reference_grads(dout, q, k, v, key_mask, attn_mask, frames, scale)


_masked_attention_backward_op = torch.library.custom_op("scl::masked_attention_backward", mutates_args=())(
    _backward_impl
)


@_masked_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, key_mask, attn_mask, frames, scale, dropout_p, seed, backend):  # noqa: ANN001, ANN202
    if backend == "triton":
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask, attn_mask, seed)
    ctx.frames, ctx.scale, ctx.dropout_p, ctx.backend = frames, scale, dropout_p, backend


def _backward(ctx, dout, dlse):  # noqa: ANN001, ANN202
    q, k, v, out, lse, key_mask, attn_mask, seed = ctx.saved_tensors
    dq, dk, dv = _masked_attention_backward_op(
        dout, q, k, v, out, lse, key_mask, attn_mask, ctx.frames, ctx.scale, ctx.dropout_p, seed, ctx.backend
    )
    # lse is an internal output with no gradient (dlse unused); masks, frames, scale, dropout_p, seed and
    # backend take none
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("scl::masked_attention", _backward, setup_context=_setup_context)


class _EagerMaskedAttention(torch.autograd.Function):
    """The op's forward and backward without torch.library's dispatch, for eager mode. That dispatch (schema
    defaults, autograd redispatch) took ~70% of the host time of one call (cProfile, kernel launches stubbed out:
    ~160 us of Python per forward on the CI CPU), and on a GPU short sequences are host-bound: padded text at 50
    tokens ran 0.33 ms against SDPA's 0.09 on an H200. torch.compile still traces the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend):  # noqa: ANN001, ANN205
        out, lse = _forward_impl(q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend)
        _setup_context(ctx, (q, k, v, key_mask, attn_mask, frames, scale, dropout_p, seed, backend), (out, lse))
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001, ANN205
        q, k, v, out, lse, key_mask, attn_mask, seed = ctx.saved_tensors
        dq, dk, dv = _backward_impl(dout, q, k, v, out, lse, key_mask, attn_mask, ctx.frames, ctx.scale,
                                    ctx.dropout_p, seed, ctx.backend)
        return dq, dk, dv, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    frames: int | None,
    attn_mask: torch.Tensor | None,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, lq, d = q.shape
    if k.shape[:2] != (b, h) or k.shape[3] != d or v.shape != k.shape:
        raise ValueError(
            f"k and v must be (B, H, Lk, D) = ({b}, {h}, Lk, {d}) like q, got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    lk = k.shape[2]
    if key_mask is not None and (key_mask.shape != (b, lk) or key_mask.dtype != torch.bool):
        raise ValueError(f"key_mask must be bool (B, Lk) = ({b}, {lk}), got {key_mask.dtype} {tuple(key_mask.shape)}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
        try:
            full = torch.broadcast_shapes(attn_mask.shape, (b, h, lq, lk))
        except RuntimeError:
            full = None
        if full != (b, h, lq, lk):
            raise ValueError(
                f"attn_mask must broadcast to (B, H, Lq, Lk) = {(b, h, lq, lk)}, got {tuple(attn_mask.shape)}"
            )
    if frames is not None:
        if lq != lk:
            raise ValueError(f"frames is for self-attention, got Lq={lq} != Lk={lk}")
        if frames < 1 or lk % frames:
            raise ValueError(f"L must be a positive multiple of frames, got L={lk}, frames={frames}")


def _check_triton(q: torch.Tensor) -> None:
    if q.dtype not in _DTYPES:
        raise ValueError(f"masked_attention (triton) supports {_DTYPES}, got {q.dtype}")
    if q.shape[-1] > _MAX_HEAD_DIM:
        raise ValueError(f"masked_attention (triton) supports head dims up to {_MAX_HEAD_DIM}, got {q.shape[-1]}")


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    frames: int | None = None,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v, fused (FlashAttention-2 style) on CUDA. True = may attend.

    Args:
        q: (B, H, Lq, D) queries; any strides (e.g. a (B, L, H, D) tensor permuted to (B, H, L, D)).
        k: (B, H, Lk, D) keys; Lk may differ from Lq (cross-attention).
        v: (B, H, Lk, D) values.
        key_mask: (B, Lk) bool, True for real keys (HF ``attention_mask`` convention).
        frames: F for the flexible vision encoder's pattern over [CLS_1..CLS_F, patches of frame 1, ...,
            patches of frame F] (self-attention, L a multiple of F): CLS rows see every token, a patch row of
            frame f sees CLS_f and the patches of frame f. Combines with the other masks.
        attn_mask: bool, broadcastable to (B, H, Lq, Lk), True = may attend (SDPA convention).
        dropout_p: dropout on the attention probabilities (training). Fused in the triton kernels: the mask is
            drawn by Philox from a seed and regenerated in the backward, never stored.
        scale: logit scale, default 1/sqrt(D).
        backend: "triton", "reference" or None/"auto" (triton on CUDA, reference on CPU; see ``use_backend``).

    Returns:
        (B, H, Lq, D) in q's dtype (and q's memory layout where q is dense). A query row that sees no key
        returns zeros and passes zero gradients.
    """
    _check_inputs(q, k, v, key_mask, frames, attn_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    choice = resolve(_OP, q.device, backend)  # "native" raises there: attention has no C++ kernel
    if choice == "triton":
        _check_triton(q)
    elif dropout_p > 0.0:
        # dropout draws from torch's generator: plain autograd keeps the one mask for forward and backward
        record(_OP, choice)
        return masked_attention_ref(
            q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
        )
    # the seed is drawn from torch's CPU generator (seeded by torch.manual_seed), as a tensor so that a compiled
    # graph draws a fresh one per call instead of baking one in
    seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64) if dropout_p > 0.0 else None
    if torch.compiler.is_compiling():
        out, _ = _masked_attention_op(q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), seed, choice)
        return out
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        # inference (evaluation, retrieval): no graph to record, so no autograd.Function either
        return _forward_impl(q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), seed, choice)[0]
    return _EagerMaskedAttention.apply(q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), seed, choice)
