"""Plain PyTorch versions of every fused op: the numerics oracle and the CPU fallback.

Each ``<op>_ref`` computes the same function as the fused op in the most obvious way (dense matrices,
full sorts). ``upcast=True`` runs the maths in float64 and returns float64, which is what tests compare
against; ``upcast=False`` computes in the input dtype like the fused op would, which is the "same-dtype
PyTorch" baseline of flash-attn's error rule and the CPU fallback path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _maybe_upcast(upcast: bool, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [t.double() if (upcast and t is not None and t.is_floating_point()) else t for t in tensors]


# --------------------------------------------------------------------------------------------------------------
# masked_attention
# --------------------------------------------------------------------------------------------------------------


def frame_block_mask(length: int, frames: int, device: torch.device | None = None) -> torch.Tensor:
    """Dense (L, L) bool mask of the flexible vision encoder, True = may attend.

    Token order is [CLS_1..CLS_F, patches of frame 1, ..., patches of frame F] with P patches per frame,
    so ``length = F * (1 + P)``. CLS rows see every token; a patch row of frame f sees CLS_f and the patches
    of frame f. The fused kernel never builds this matrix; SDPA and the tests do.
    """
    if frames < 1 or length % frames != 0:
        raise ValueError(f"length must be a positive multiple of frames, got length={length}, frames={frames}")
    patches = length // frames - 1
    idx = torch.arange(length, device=device)
    # frame id of each token: CLS_f -> f, patch j of frame f -> f
    frame_of = torch.where(idx < frames, idx, (idx - frames) // max(patches, 1))
    is_cls = idx < frames
    same_frame = frame_of[:, None] == frame_of[None, :]
    return is_cls[:, None] | same_frame


def attention_mask_ref(
    batch: int,
    lq: int,
    lk: int,
    *,
    key_mask: torch.Tensor | None = None,
    frames: int | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Combine the mask kinds into one bool mask broadcastable to (B, H, Lq, Lk), or None.

    ``is_causal`` is SDPA's: the top-left aligned lower triangle, query i sees keys 0..i whatever Lq and Lk (with
    Lq > Lk the rows from Lk on see every key; with Lq < Lk the last Lk - Lq keys are seen by none).
    """
    mask = None
    if frames is not None:
        if lq != lk:
            raise ValueError(f"frames is for self-attention, got Lq={lq} != Lk={lk}")
        mask = frame_block_mask(lk, frames, device)[None, None]  # (1, 1, L, L)
    if is_causal:
        causal = torch.ones(lq, lk, dtype=torch.bool, device=device).tril()[None, None]  # (1, 1, Lq, Lk)
        mask = causal if mask is None else mask & causal
    if key_mask is not None:
        if key_mask.shape != (batch, lk):
            raise ValueError(f"key_mask must be (B, Lk)=({batch}, {lk}), got {tuple(key_mask.shape)}")
        km = key_mask.bool()[:, None, None, :]  # (B, 1, 1, Lk)
        mask = km if mask is None else mask & km
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
        mask = attn_mask if mask is None else mask & attn_mask
    return mask


def expand_kv_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Hkv, L, D) -> (B, heads, L, D) for grouped-query attention: query head h reads K/V head
    h // (heads // Hkv). A copy, as the reference may make; the fused kernel indexes instead."""
    h_kv = t.shape[1]
    if heads % h_kv:
        raise ValueError(f"the query heads ({heads}) must be a multiple of the K/V heads ({h_kv})")
    return t if h_kv == heads else t.repeat_interleave(heads // h_kv, dim=1)


def masked_attention_ref(
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
    upcast: bool = False,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + mask) v with dense matrices; rows that see no key return zeros.

    Args:
        q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D) with H a multiple of Hkv (grouped-query attention).
        key_mask: (B, Lk) bool, True for real keys.
        frames: F for the frame-block + global-CLS pattern (self-attention only).
        attn_mask: bool, broadcastable to (B, H, Lq, Lk), True = may attend.
        is_causal: SDPA's top-left aligned causal mask (``attention_mask_ref``).
        dropout_p: dropout on the attention probabilities (training only).
        scale: defaults to 1/sqrt(D).
        return_lse: also return the log-sum-exp of the masked, scaled scores, (B, H, Lq), natural log, in float32
            (float64 with ``upcast``), +inf for rows that see no key (so that exp(s - lse) is 0 there).

    Returns:
        out (B, H, Lq, D), or (out, lse) with ``return_lse``.
    """
    dtype = q.dtype
    q, k, v = _maybe_upcast(upcast, q, k, v)
    k, v = expand_kv_heads(k, q.shape[1]), expand_kv_heads(v, q.shape[1])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    mask = attention_mask_ref(q.shape[0], q.shape[-2], k.shape[-2], key_mask=key_mask, frames=frames,
                              attn_mask=attn_mask, is_causal=is_causal, device=q.device)  # fmt: skip
    empty = None
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        empty = ~mask.any(dim=-1, keepdim=True)  # rows with no visible key
    probs = torch.softmax(scores, dim=-1)
    if empty is not None:
        # a row with no visible key is all -inf -> NaN after softmax; the op's contract is zeros
        probs = probs.masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    out = torch.matmul(probs, v)
    out = out if upcast else out.to(dtype)
    if not return_lse:
        return out
    lse_in = scores if scores.dtype == torch.float64 else scores.float()
    if empty is None:
        return out, torch.logsumexp(lse_in, dim=-1)
    # the empty rows' scores are set finite before the reduction: its gradient there is then 0, not NaN
    lse = torch.logsumexp(lse_in.masked_fill(empty, 0.0), dim=-1)
    return out, lse.masked_fill(empty[..., 0], float("inf"))


# --------------------------------------------------------------------------------------------------------------
# random_masking
# --------------------------------------------------------------------------------------------------------------


def random_masking_ref(
    x: torch.Tensor,
    noise: torch.Tensor,
    keep: int,
    *,
    frames: int = 1,
    pos: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``keep`` spatial positions with the smallest ``noise`` per sample, in every frame.

    Args:
        x: (B, F*P, D) patch tokens, frame by frame.
        noise: (B, P) random keys; the selection is a function of them only.
        keep: K, the number of kept positions per frame.
        frames: F.
        pos: optional (P, D) position embedding, added to the kept tokens.

    Returns:
        kept (B, F*K, D) and ids_keep (B, K) int64, ascending.
    """
    b, n, d = x.shape
    if n % frames:
        raise ValueError(f"x.shape[1] must be a multiple of frames={frames}, got {tuple(x.shape)}")
    p = n // frames
    if noise.shape != (b, p):
        raise ValueError(f"noise must be (B, P)=({b}, {p}), got {tuple(noise.shape)}")
    if not 0 <= keep <= p:
        raise ValueError(f"keep must be in [0, {p}], got {keep}")
    dtype = x.dtype
    x, pos = _maybe_upcast(upcast, x, pos)
    # stable: equal keys go to the lower index, the tie rule of the C++ and Triton kernels
    ids_keep = torch.argsort(noise, dim=1, stable=True)[:, :keep].sort(dim=1).values  # (B, K)
    xf = x.reshape(b, frames, p, d)
    kept = torch.gather(xf, 2, ids_keep[:, None, :, None].expand(b, frames, keep, d))  # (B, F, K, D)
    if pos is not None:
        kept = kept + pos[ids_keep][:, None]  # (B, 1, K, D)
    kept = kept.reshape(b, frames * keep, d)
    return (kept if upcast else kept.to(dtype)), ids_keep


def random_masking_backward_ref(
    grad_kept: torch.Tensor, ids_keep: torch.Tensor, positions: int, *, frames: int = 1, with_pos: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of ``random_masking_ref`` w.r.t. x and pos, written out: a scatter into zeros.

    Args:
        grad_kept: (B, F*K, D) gradient of ``kept``.
        ids_keep: (B, K) kept positions (unique per row, so the scatter needs no accumulation).
        positions: P.
        frames: F.
        with_pos: also return grad_pos (P, D), the scatter summed over samples and frames.

    Returns:
        grad_x (B, F*P, D) and grad_pos (P, D) or None.
    """
    b, n, d = grad_kept.shape
    keep = ids_keep.shape[1]
    if n != frames * keep:
        raise ValueError(f"grad_kept must be (B, F*K, D) with F={frames}, K={keep}, got {tuple(grad_kept.shape)}")
    g = grad_kept.reshape(b, frames, keep, d)
    index = ids_keep[:, None, :, None].expand(b, frames, keep, d)
    grad_x = grad_kept.new_zeros(b, frames, positions, d).scatter_(2, index, g)  # (B, F, P, D)
    grad_pos = grad_x.sum(dim=(0, 1)) if with_pos else None
    return grad_x.reshape(b, frames * positions, d), grad_pos


# --------------------------------------------------------------------------------------------------------------
# text masks
# --------------------------------------------------------------------------------------------------------------


def mlm_mask_keys(
    shape: torch.Size | tuple[int, ...],
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of ``mlm_mask_ref``, in its order: choice keys and replacement keys (float32 in
    [0, 1)) and random tokens (int64 in [0, vocab_size)), each of ``shape``."""
    choose = torch.rand(shape, generator=generator, device=device)
    how = torch.rand(shape, generator=generator, device=device)
    rand_tok = torch.randint(vocab_size, shape, generator=generator, device=device)
    return choose, how, rand_tok


def mlm_mask_ref(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    *,
    p: float = 0.15,
    replace: tuple[float, float, float] = (0.8, 0.1, 0.1),
    vocab_size: int,
    mask_id: int,
    generator: torch.Generator | None = None,
    keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each real token is chosen with probability p; chosen tokens become [MASK] / a random
    token / themselves with probabilities ``replace``. Labels are -100 where nothing was chosen.

    ``keys`` (as ``mlm_mask_keys`` draws them) replaces the generator's draws, so the fused op's backends
    can be fed the very same randomness and compared element for element."""
    choose, how, rand_tok = (
        mlm_mask_keys(ids.shape, vocab_size, generator=generator, device=ids.device) if keys is None else keys
    )
    chosen = (choose < p) & ~special_mask
    to_mask = chosen & (how < replace[0])
    to_rand = chosen & (how >= replace[0]) & (how < replace[0] + replace[1])
    masked = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    masked = torch.where(to_rand, rand_tok.to(ids.dtype), masked)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return masked, labels


def scl_text_mask_ref(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    *,
    ratio: float = 0.4,
    mask_id: int,
    generator: torch.Generator | None = None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace round(ratio * n_real) real tokens per row (half to even, at least one when the row has a real
    token), drawn without replacement, by [MASK]: the positions with the smallest keys win.

    ``keys`` (B, L) in [0, 1) replaces ``torch.rand(ids.shape, generator=generator)``."""
    real = ~special_mask
    n_real = real.sum(dim=1)  # (B,)
    count = torch.clamp((n_real.double() * ratio).round().long(), min=1)
    count = torch.minimum(count, n_real)
    if keys is None:
        keys = torch.rand(ids.shape, generator=generator, device=ids.device)
    keys = keys.masked_fill(special_mask, 2.0)  # special and padding rank last, so they are never drawn
    # stable: equal keys go to the lower index, the tie rule of the Triton kernel
    rank = keys.argsort(dim=1, stable=True).argsort(dim=1)  # rank of each position among the row's keys
    chosen = rank < count[:, None]
    return torch.where(chosen, torch.full_like(ids, mask_id), ids)


# --------------------------------------------------------------------------------------------------------------
# contrastive losses
# --------------------------------------------------------------------------------------------------------------


def info_nce_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    detach_b: bool = False,
    symmetric: bool = True,
    upcast: bool = False,
) -> torch.Tensor:
    """InfoNCE over matched rows: L2-normalise, logits = a b^T / T, CE against the diagonal, and (if
    symmetric) the transposed direction added. Builds the full N x N matrix.

    Computes in the input dtype (the same-dtype baseline) but returns float32 (float64 for float64 or
    ``upcast``), like the fused op: a scalar loss rounded to fp16 only loses digits."""
    dtype = a.dtype
    a, b = _maybe_upcast(upcast, a, b)
    if detach_b:
        b = b.detach()
    if isinstance(temperature, torch.Tensor) and upcast:
        temperature = temperature.double()
    an = F.normalize(a, dim=-1)
    bn = F.normalize(b, dim=-1)
    logits = an @ bn.t() / temperature  # (N, N)
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = loss + F.cross_entropy(logits.t(), target)
    return loss if upcast else loss.to(torch.promote_types(dtype, torch.float32))


def cosine_recovery_ref(
    a: torch.Tensor, b: torch.Tensor, *, detach_b: bool = True, upcast: bool = False
) -> torch.Tensor:
    """mean_i (1 - cos(a_i, b_i)): the plain cosine form of the SCL recovery objective. Rows are normalised
    with F.normalize's eps (1e-12), as in info_nce; returns float32 (float64 for float64 or ``upcast``)."""
    dtype = a.dtype
    a, b = _maybe_upcast(upcast, a, b)
    if detach_b:
        b = b.detach()
    loss = (1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)).mean()
    return loss if upcast else loss.to(torch.promote_types(dtype, torch.float32))
