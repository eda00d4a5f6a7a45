"""``masked_attention``: the public function, its input checks, and the ``torch.library`` op (one opaque op for
torch.compile, autograd through a second op for the backward) over the triton and reference backends; the sdpa
backend (``sdpa.py``) runs outside the op, on PyTorch's own autograd.
"""

from __future__ import annotations

import math

import torch

from .._dispatch import Backend, record, resolve
from ..reference import attention_mask_ref, expand_kv_heads, masked_attention_ref
from . import auto
from .dropout import philox_state
from .launch import _attention_backward, _attention_forward
from .sdpa import sdpa_attention

_OP = "masked_attention"
_MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _reference_grads(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense backward written out (P recomputed, dS = P * (dP - rowsum(dP * P) + dlse)). Not autograd: inside a
    custom op's implementation the dispatcher has already passed the autograd key, so a recorded graph would be
    empty. Grouped K/V heads are expanded for the products and their gradients summed back over each group."""
    b, h, lq, _ = q.shape
    h_kv, lk = k.shape[1], k.shape[2]
    k_full, v_full = expand_kv_heads(k, h), expand_kv_heads(v, h)
    scores = torch.matmul(q, k_full.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    mask = attention_mask_ref(b, lq, lk, key_mask=key_mask, frames=frames, attn_mask=attn_mask, is_causal=is_causal,
                              device=q.device)  # fmt: skip
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # rows with no key: zero, not NaN
    dv = torch.matmul(probs.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v_full.transpose(-1, -2))
    row = (dp * probs).sum(dim=-1, keepdim=True)
    if dlse is not None:  # d lse_i / d s_ij = P_ij
        row = row - dlse.to(row.dtype)[..., None]
    ds = probs * (dp - row)
    dq = torch.matmul(ds, k_full) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    if h_kv != h:  # each K/V head's gradient: the sum over the query heads that read it
        dk = dk.view(b, h_kv, h // h_kv, lk, -1).sum(2)
        dv = dv.view(b, h_kv, h // h_kv, lk, -1).sum(2)
    return dq, dk, dv


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _forward_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    frames: int | None,
    scale: float,
    dropout_p: float,
    rng: torch.Tensor | None,
    is_causal: bool,
    return_lse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out, lse), lse (B, H, Lq) natural log (float32; float64 for float64 inputs on the reference).

    ``rng`` is dropout's Philox (seed, offset), a (2,) int64 tensor on q's device (``dropout.philox_state``).
    Dropout is fused on the triton backend only (the public function runs the reference's dropout outside the op,
    where autograd keeps its mask). ``return_lse`` changes nothing here: it says whether the lse's gradient
    reaches the backward."""
    record(_OP, backend)
    if backend == "triton":
        out, lse, _ = _attention_forward(q, k, v, key_mask, attn_mask, frames, scale, is_causal=is_causal,
                                         dropout_p=dropout_p, rng=rng)  # fmt: skip
        return out, lse
    if dropout_p > 0.0:
        raise ValueError(f"the reference op runs without dropout, got dropout_p={dropout_p}")
    return masked_attention_ref(q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask, is_causal=is_causal,
                                scale=scale, return_lse=True)  # fmt: skip


_masked_attention_op = torch.library.custom_op("scl::masked_attention", mutates_args=())(_forward_impl)


@_masked_attention_op.register_fake
def _(q, k, v, key_mask, attn_mask, frames, scale, dropout_p, rng, is_causal, return_lse, backend):  # noqa: ANN001, ANN202
    # layouts as the real backends give them: triton copies q's strides, the reference returns contiguous tensors
    lse = q.new_empty(q.shape[:3], dtype=_lse_dtype(q))
    if backend == "triton":
        return torch.empty_like(q), lse
    return q.new_empty(q.shape), lse


def _backward_impl(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
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
    rng: torch.Tensor | None,
    is_causal: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv). The triton passes recompute P (and the dropout mask, from the same Philox pair) from lse;
    the reference recomputes the dense forward. ``dlse``: the returned lse's gradient, None when not returned."""
    if backend == "triton":
        return _attention_backward(dout, q, k, v, out, lse, key_mask, attn_mask, frames, scale, is_causal=is_causal,
                                   dropout_p=dropout_p, rng=rng, dlse=dlse)  # fmt: skip
    return _reference_grads(dout, dlse, q, k, v, key_mask, attn_mask, frames, scale, is_causal)


_masked_attention_backward_op = torch.library.custom_op("scl::masked_attention_backward", mutates_args=())(
    _backward_impl
)


@_masked_attention_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, key_mask, attn_mask, frames, scale, dropout_p, rng, is_causal, backend):  # noqa: ANN001, ANN202
    if backend == "triton":
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, key_mask, attn_mask, frames, scale, dropout_p, rng, is_causal, return_lse, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask, attn_mask, rng)
    ctx.frames, ctx.scale, ctx.dropout_p, ctx.backend = frames, scale, dropout_p, backend
    ctx.is_causal, ctx.return_lse = is_causal, return_lse


def _backward(ctx, dout, dlse):  # noqa: ANN001, ANN202
    q, k, v, out, lse, key_mask, attn_mask, rng = ctx.saved_tensors
    # an lse the caller never saw has no gradient (torch.library hands in zeros for it): not read at all
    dlse = dlse if ctx.return_lse else None
    dq, dk, dv = _masked_attention_backward_op(dout, dlse, q, k, v, out, lse, key_mask, attn_mask, ctx.frames,
                                               ctx.scale, ctx.dropout_p, rng, ctx.is_causal, ctx.backend)  # fmt: skip
    # masks, frames, scale, dropout_p, rng, is_causal, return_lse and backend take no gradient
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("scl::masked_attention", _backward, setup_context=_setup_context)


class _EagerMaskedAttention(torch.autograd.Function):
    """The op's forward and backward without torch.library's dispatch, for eager mode. That dispatch (schema
    defaults, autograd redispatch) took ~70% of the host time of one call (cProfile, kernel launches stubbed out:
    ~160 us of Python per forward on the CI CPU), and on a GPU short sequences are host-bound: padded text at 50
    tokens ran 0.33 ms against SDPA's 0.09 on an H200. torch.compile still traces the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, attn_mask, frames, scale, dropout_p, rng, is_causal, return_lse, backend):  # noqa: ANN001, ANN205
        ctx.set_materialize_grads(False)  # an unused lse gets None, not a tensor of zeros
        inputs = (q, k, v, key_mask, attn_mask, frames, scale, dropout_p, rng, is_causal, return_lse, backend)
        out, lse = _forward_impl(*inputs)
        _setup_context(ctx, inputs, (out, lse))
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):  # noqa: ANN001, ANN205
        q, k, v, out, lse, key_mask, attn_mask, rng = ctx.saved_tensors
        if dout is None:  # only the lse reached the loss
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward_impl(dout, dlse if ctx.return_lse else None, q, k, v, out, lse, key_mask, attn_mask,
                                    ctx.frames, ctx.scale, ctx.dropout_p, rng, ctx.is_causal, ctx.backend)  # fmt: skip
        return dq, dk, dv, None, None, None, None, None, None, None, None, None


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
    is_causal: bool,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or v.shape != k.shape or k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(
            f"k and v must be (B, Hkv, Lk, D) = ({b}, Hkv, Lk, {d}) with Hkv dividing q's {h} heads, got "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
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
        if is_causal:
            raise ValueError("frames and is_causal do not combine: frames is a self-attention pattern of its own")
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
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_lse: bool = False,
    backend: Backend | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale, masked) v, fused (FlashAttention-2 style) on CUDA. True = may attend.

    Args:
        q: (B, H, Lq, D) queries; any strides (e.g. a (B, L, H, D) tensor permuted to (B, H, L, D)). D up to 256.
        k: (B, Hkv, Lk, D) keys; Lk may differ from Lq (cross-attention). Hkv may divide H (grouped-query or
            multi-query attention): query head h reads K/V head h // (H // Hkv), indexed in the kernel, never
            copied; dK/dV sum over the heads of each group in a fixed order (deterministic).
        v: (B, Hkv, Lk, D) values.
        key_mask: (B, Lk) bool, True for real keys (HF ``attention_mask`` convention).
        frames: F for the flexible vision encoder's pattern over [CLS_1..CLS_F, patches of frame 1, ...,
            patches of frame F] (self-attention, L a multiple of F): CLS rows see every token, a patch row of
            frame f sees CLS_f and the patches of frame f. Combines with the masks (not with ``is_causal``).
        attn_mask: bool, broadcastable to (B, H, Lq, Lk), True = may attend (SDPA convention).
        is_causal: SDPA's causal mask, top-left aligned: query i sees keys 0..i whatever Lq and Lk (for Lq > Lk the
            rows from Lk on see every key; for Lq < Lk the last Lk - Lq keys are seen by none; flash-attn >= 2.1
            aligns bottom-right instead). The key tiles past each query block's diagonal are skipped. Combines
            with ``key_mask`` and ``attn_mask`` (both must allow a pair).
        dropout_p: dropout on the attention probabilities (training). Fused in the triton kernels: the mask is
            drawn by Philox from a (seed, offset) pair that the device's generator draws as a tensor, so a call
            captured in a CUDA graph draws a new mask on every replay; regenerated in the backward, never stored.
        scale: logit scale, default 1/sqrt(D).
        return_lse: also return the log-sum-exp of the masked, scaled scores: (B, H, Lq) float32, natural log,
            +inf for a row that sees no key (as flash-attn, so that exp(s - lse) is 0 there); computed before
            dropout. It is differentiable: a loss that uses it gets its gradient through q and k.
        backend: "triton", "sdpa", "reference", or None/"auto": on CUDA the faster of "triton" and "sdpa" for this
            call by the measured table of ``auto.py`` (sdpa only where the call has no structured mask), on CPU the
            reference. See ``use_backend``.

    Returns:
        (B, H, Lq, D) in q's dtype (and q's memory layout where q is dense), or (out, lse) with ``return_lse``.
        A query row that sees no key returns zeros and passes zero gradients.
    """
    _check_inputs(q, k, v, key_mask, frames, attn_mask, is_causal)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)

    def pick() -> str:
        return auto.pick(q, k, key_mask=key_mask, frames=frames, attn_mask=attn_mask, is_causal=is_causal,
                         return_lse=return_lse, needs_grad=needs_grad)  # fmt: skip

    # "native" raises there: attention has no C++ kernel
    choice = resolve(_OP, q.device, backend, has_sdpa=True, auto=pick if auto.applies(q.device) else None)
    if choice == "sdpa":
        if return_lse:
            raise ValueError("masked_attention: the sdpa backend does not return the log-sum-exp; use 'triton'")
        record(_OP, choice)
        return sdpa_attention(q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask, is_causal=is_causal,
                              dropout_p=dropout_p, scale=scale)  # fmt: skip
    if choice == "triton":
        _check_triton(q)
    elif dropout_p > 0.0:
        # dropout draws from torch's generator: plain autograd keeps the one mask for forward and backward
        record(_OP, choice)
        return masked_attention_ref(q, k, v, key_mask=key_mask, frames=frames, attn_mask=attn_mask,
                                    is_causal=is_causal, dropout_p=dropout_p, scale=scale,
                                    return_lse=return_lse)  # fmt: skip
    # drawn outside the op, as a tensor on q's device: a compiled graph draws a fresh pair per call instead of
    # baking one in, and a CUDA graph's replays draw fresh pairs too (dropout.py)
    rng = philox_state(q.device) if dropout_p > 0.0 else None
    args = (q, k, v, key_mask, attn_mask, frames, scale, float(dropout_p), rng, bool(is_causal), bool(return_lse),
            choice)  # fmt: skip
    if torch.compiler.is_compiling():
        out, lse = _masked_attention_op(*args)
    elif not needs_grad:
        # inference (evaluation, retrieval): no graph to record, so no autograd.Function either
        out, lse = _forward_impl(*args)
    else:
        out, lse = _EagerMaskedAttention.apply(*args)
    return (out, lse) if return_lse else out
