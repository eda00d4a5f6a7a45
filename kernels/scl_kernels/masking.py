"""Token masking: MAE-style patch dropping (``random_masking``) and the text masks (``mlm_mask``, ``scl_text_mask``).

``random_masking`` keeps K = int(P * keep_ratio) of the P spatial positions per sample, the same subset in every
frame, and gathers the kept tokens (plus the position embedding) in one pass:

- Triton (CUDA), two launches. The selection, one program per sample, draws the keys (philox, from a seed the
  caller's generator gives) or loads them, and ranks them. Each key is packed as ``(order-preserving key bits
  << 32) | index`` into int64, so comparing packed values compares keys with ties going to the lower index (the
  stable-argsort rule of the reference); a position's rank is the number of packed values below it, counted
  against column chunks of the row (O(P^2) compares, nothing for P of a few hundred; ``tl.sort`` was the other
  option, but it compiles 10x slower and runs 100x slower under the interpreter). The K lowest ranks are kept,
  and a prefix count of the kept flags gives each its output slot, so ``ids_keep`` comes out ascending with no
  sort at all. The gather, one program per (sample, frame, tile of kept rows), then copies whole rows with the
  position embedding added: a memory-bound copy with 16-byte vector accesses along D.
- C++ (CPU, ``csrc/random_masking.cpp``): nth_element + a sort of the K winners, OpenMP over samples.
- Reference: argsort + gather + add (``reference.random_masking_ref``).

The backward of every backend is a plain gather through the inverse map ``slot`` (B, P) (output slot of a
kept position, -1 otherwise): each element of ``grad_x`` is written exactly once and ``grad_pos`` is summed per
position in a fixed order (samples, then frames), so there are no atomics and the result is deterministic.

``mlm_mask`` (BERT 80/10/10) and ``scl_text_mask`` (round(ratio * n_real) real tokens per row, without
replacement, all [MASK]) run on the device with no host round-trip: the Triton kernels draw their own random
numbers from a seed tensor (drawn from the caller's generator on the device, never read on the host) or take the
very keys the reference takes (``keys=``), which is how the tests compare them element for element. On CPU the
keys are drawn as the reference draws them and the C++ kernels (``csrc/text_masks.cpp``: one pass for MLM, one
nth_element per row for SCL) replace the reference's chain of full-size ops and its two argsorts
(``benchmarks/bench_masking.py`` times both).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import reference
from ._compile import contiguous_strides, specs_from_configs
from ._dispatch import HAS_NATIVE, interpreting, record, resolve
from ._launch import cdiv, dot_block

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FWD_WARPS = 8  # the row-wide rank tables of the selecting kernels: 8 warps keep them in registers without spills
# the text-mask C++ kernels arrived after random_masking's: an extension built before them lacks the ops
_HAS_TEXT_NATIVE = HAS_NATIVE and hasattr(torch.ops.scl, "scl_text_mask_native")
_MAX_BLOCK = 1024  # one row's keys live in registers: P and L up to 1024 (ViT-B/16 at 512 px)


# --------------------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _packed_keys(key, offs, valid):
    """int64 ``(order-preserving int32 of the fp32 key) << 32 | index``: these compare as the keys do, ties going
    to the lower index (the stable-argsort rule). Invalid lanes get +inf keys: they rank behind every real key."""
    key = tl.where(valid, key.to(tl.float32) + 0.0, float("inf"))  # + 0.0: -0.0 becomes +0.0, equal to it
    bits = key.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude must sort lower
    return (bits.to(tl.int64) << 32) | offs.to(tl.int64)


@triton.jit
def _masking_keys(NOISE_ptr, SEED_ptr, row, P, stride_noise_b, stride_noise_p, offs, valid, HAS_NOISE: tl.constexpr):
    """Keys of positions ``offs`` of sample ``row``: loaded, or drawn by philox with counter = flat (row, p) index,
    so every program and every chunk of a row sees the same keys and every row different ones."""
    if HAS_NOISE:
        key = tl.load(NOISE_ptr + row * stride_noise_b + offs * stride_noise_p, mask=valid, other=0.0)
    else:
        key = tl.rand(tl.load(SEED_ptr), (row * P + offs).to(tl.int32))
    return key


@triton.jit
def _random_masking_select_kernel(
    NOISE_ptr,  # (B, P) keys, read when HAS_NOISE
    SEED_ptr,  # (1,) int64 philox seed, read when not HAS_NOISE
    IDS_ptr,  # (B, K) int64 out: the kept positions, ascending
    SLOT_ptr,  # (B, P) int32 out: output slot of a kept position, -1 otherwise
    P,
    K,
    stride_noise_b,
    stride_noise_p,
    HAS_NOISE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)  # one program per sample
    offs_p = tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    packed = _packed_keys(_masking_keys(NOISE_ptr, SEED_ptr, pid_b, P, stride_noise_b, stride_noise_p, offs_p, p_ok,
                                        HAS_NOISE), offs_p, p_ok)
    # rank of each position = how many keys sort before it; the K lowest ranks are kept. Counted against
    # BLOCK_J-wide column chunks (keys re-read or re-drawn: the same values) so the compare table stays
    # (BLOCK_P, BLOCK_J) in registers.
    rank = tl.zeros([BLOCK_P], dtype=tl.int32)
    for j0 in range(0, P, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_ok = offs_j < P
        key_j = _masking_keys(NOISE_ptr, SEED_ptr, pid_b, P, stride_noise_b, stride_noise_p, offs_j, j_ok, HAS_NOISE)
        packed_j = _packed_keys(key_j, offs_j, j_ok)
        rank += tl.sum((packed_j[None, :] < packed[:, None]).to(tl.int32), 1)
    kept = (rank < K) & p_ok
    slot = tl.cumsum(kept.to(tl.int32), 0) - 1  # ascending output slot of each kept position
    tl.store(SLOT_ptr + pid_b * P + offs_p, tl.where(kept, slot, -1), mask=p_ok)
    tl.store(IDS_ptr + pid_b * K + slot, offs_p.to(tl.int64), mask=kept)  # slots are distinct: a plain scatter


@triton.jit
def _random_masking_gather_kernel(
    X_ptr,  # (B, F*P, D)
    POS_ptr,  # (P, D), read when HAS_POS
    IDS_ptr,  # (B, K) int64: the kept positions
    KEPT_ptr,  # (B, F*K, D) out
    P,
    K,
    D,
    stride_x_b,
    stride_x_n,
    stride_x_d,
    stride_pos_p,
    stride_pos_d,
    stride_kept_b,
    stride_kept_n,
    stride_kept_d,
    HAS_POS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # one program per (sample, frame, tile of kept rows): a pure copy of BLOCK_K whole rows, the position rows
    # added on the way; D contiguous, so each thread moves 16-byte vectors
    pid_b = tl.program_id(0).to(tl.int64)  # int64: b * stride overflows int32 for large batches of big tokens
    frame = tl.program_id(1)
    offs_k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    ids = tl.load(IDS_ptr + pid_b * K + offs_k, mask=k_ok, other=0)
    src_row = X_ptr + pid_b * stride_x_b + (frame * P + ids)[:, None] * stride_x_n
    dst_row = KEPT_ptr + pid_b * stride_kept_b + (frame * K + offs_k).to(tl.int64)[:, None] * stride_kept_n
    pos_row = POS_ptr + ids[:, None] * stride_pos_p
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = k_ok[:, None] & (offs_d[None, :] < D)
        val = tl.load(src_row + offs_d[None, :] * stride_x_d, mask=mask, other=0.0)
        if HAS_POS:
            pe = tl.load(pos_row + offs_d[None, :] * stride_pos_d, mask=mask, other=0.0)
            val = val.to(tl.float32) + pe.to(tl.float32)  # one rounding at the store, like `x + pos`
        tl.store(dst_row + offs_d[None, :] * stride_kept_d, val.to(KEPT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _random_masking_bwd_kernel(
    GRAD_ptr,  # (B, F*K, D) gradient of kept
    SLOT_ptr,  # (B, P) int32
    DX_ptr,  # (B, F*P, D) out
    P,
    K,
    D,
    stride_g_b,
    stride_g_n,
    stride_g_d,
    stride_dx_b,
    stride_dx_n,
    stride_dx_d,
    FRAMES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # grad_x[b, f, p] = grad_kept[b, f, slot[b, p]] (0 where dropped): a gather, each element written once
    pid_bf = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    b = pid_bf // FRAMES
    f = pid_bf % FRAMES
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < P
    slot = tl.load(SLOT_ptr + b * P + offs_m, mask=m_ok, other=-1)
    kept = slot >= 0
    src_row = GRAD_ptr + b * stride_g_b + (f * K + slot).to(tl.int64)[:, None] * stride_g_n
    dst_row = DX_ptr + b * stride_dx_b + (f * P + offs_m).to(tl.int64)[:, None] * stride_dx_n
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d[None, :] < D
        g = tl.load(src_row + offs_d[None, :] * stride_g_d, mask=kept[:, None] & d_ok, other=0.0)
        tl.store(dst_row + offs_d[None, :] * stride_dx_d, g, mask=m_ok[:, None] & d_ok)


@triton.jit
def _random_masking_pos_bwd_kernel(
    GRAD_ptr,  # (B, F*K, D) gradient of kept
    SLOT_ptr,  # (B, P) int32
    DPOS_ptr,  # (P, D) out
    B,
    P,
    K,
    D,
    stride_g_b,
    stride_g_n,
    stride_g_d,
    FRAMES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # grad_pos[p] = sum_{b, f} grad_kept[b, f, slot[b, p]]: one (positions, features) tile per program, summed over
    # samples and frames in a fixed order in fp32, so no atomics and the same bits on every run
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_ok = offs_m < P
    d_ok = offs_d[None, :] < D
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    slot_row = SLOT_ptr
    grad_row = GRAD_ptr
    for _ in range(B):  # pointers advance per sample: 64-bit arithmetic without casting the loop index
        slot = tl.load(slot_row + offs_m, mask=m_ok, other=-1)
        mask = (slot >= 0)[:, None] & d_ok
        for f in range(FRAMES):
            ptrs = grad_row + (f * K + slot).to(tl.int64)[:, None] * stride_g_n + offs_d[None, :] * stride_g_d
            acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        slot_row += P
        grad_row += stride_g_b
    out = DPOS_ptr + offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]
    tl.store(out, acc.to(DPOS_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok)


@triton.jit
def _mlm_mask_kernel(
    IDS_ptr,  # (N,) token ids
    SPECIAL_ptr,  # (N,) bool: special or padding, never masked
    CHOOSE_ptr,  # (N,) fp32 keys in [0, 1), read when HAS_KEYS
    HOW_ptr,  # (N,) fp32 keys in [0, 1), read when HAS_KEYS
    RAND_ptr,  # (N,) int64 random tokens, read when HAS_KEYS
    SEED_ptr,  # (1,) int64 philox seed, read when not HAS_KEYS
    OUT_ptr,  # (N,) out: masked ids
    LABELS_ptr,  # (N,) out: original id where chosen, -100 elsewhere
    N,
    p,
    r_mask,  # replace[0]
    r_rand_end,  # replace[0] + replace[1]
    vocab_size,
    mask_id,
    HAS_KEYS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    ids = tl.load(IDS_ptr + offs, mask=ok, other=0)
    special = tl.load(SPECIAL_ptr + offs, mask=ok, other=1) != 0
    if HAS_KEYS:
        choose = tl.load(CHOOSE_ptr + offs, mask=ok, other=1.0)
        how = tl.load(HOW_ptr + offs, mask=ok, other=1.0)
        rand_tok = tl.load(RAND_ptr + offs, mask=ok, other=0)
    else:
        # one philox call gives the three draws of a token (counter = flat index)
        r0, r1, r2, _ = tl.randint4x(tl.load(SEED_ptr), offs.to(tl.int32))
        choose = tl.random.uint_to_uniform_float(r0)
        how = tl.random.uint_to_uniform_float(r1)
        rand_tok = (r2 >> 1).to(tl.int32) % vocab_size  # 31 random bits: bias < vocab / 2^31, negligible
    chosen = (choose < p) & (~special)
    to_mask = chosen & (how < r_mask)
    to_rand = chosen & (how >= r_mask) & (how < r_rand_end)
    out = tl.where(to_mask, mask_id, ids)
    out = tl.where(to_rand, rand_tok.to(ids.dtype), out)
    labels = tl.where(chosen, ids, -100)
    tl.store(OUT_ptr + offs, out.to(OUT_ptr.dtype.element_ty), mask=ok)
    tl.store(LABELS_ptr + offs, labels.to(LABELS_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _text_keys(SPECIAL_ptr, KEYS_ptr, SEED_ptr, row, L, offs, valid, HAS_KEYS: tl.constexpr):
    """Keys of tokens ``offs`` of row ``row`` (loaded or philox-drawn), 2.0 for special and padding tokens, which
    therefore rank after every real token (the reference's rule)."""
    real = tl.load(SPECIAL_ptr + row * L + offs, mask=valid, other=1) == 0
    if HAS_KEYS:
        key = tl.load(KEYS_ptr + row * L + offs, mask=valid, other=0.0)
    else:
        key = tl.rand(tl.load(SEED_ptr), (row * L + offs).to(tl.int32))
    return tl.where(real, key, 2.0)


@triton.jit
def _scl_text_mask_kernel(
    IDS_ptr,  # (B, L) token ids
    SPECIAL_ptr,  # (B, L) bool: special or padding, never masked
    KEYS_ptr,  # (B, L) fp32 keys, read when HAS_KEYS
    SEED_ptr,  # (1,) int64 philox seed, read when not HAS_KEYS
    OUT_ptr,  # (B, L) out
    RATIO_ptr,  # (1,) float64
    L,
    mask_id,
    HAS_KEYS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)
    ok = offs < L
    ids = tl.load(IDS_ptr + row * L + offs, mask=ok, other=0)
    real = (tl.load(SPECIAL_ptr + row * L + offs, mask=ok, other=1) == 0) & ok
    packed = _packed_keys(_text_keys(SPECIAL_ptr, KEYS_ptr, SEED_ptr, row, L, offs, ok, HAS_KEYS), offs, ok)
    rank = tl.zeros([BLOCK_L], dtype=tl.int32)  # as in random_masking: ranks from column chunks
    for j0 in range(0, L, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_ok = offs_j < L
        packed_j = _packed_keys(_text_keys(SPECIAL_ptr, KEYS_ptr, SEED_ptr, row, L, offs_j, j_ok, HAS_KEYS), offs_j,
                                j_ok)
        rank += tl.sum((packed_j[None, :] < packed[:, None]).to(tl.int32), 1)
    n_real = tl.sum(real.to(tl.int32), 0)
    # in float64 as the reference (0.7 * 5 is 3.5 there but 3.4999998 in fp32), rounded half to even
    x = n_real.to(tl.float64) * tl.load(RATIO_ptr)
    count = tl.floor(x + 0.5)
    count = tl.where((count - x == 0.5) & (count % 2.0 == 1.0), count - 1.0, count)
    count = tl.minimum(tl.maximum(count.to(tl.int32), 1), n_real)
    chosen = (rank < count) & real
    out = tl.where(chosen, mask_id, ids)
    tl.store(OUT_ptr + row * L + offs, out.to(OUT_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------------------


def _block_d(d: int) -> int:
    # the interpreter pays per op, not per element: wider blocks, fewer programs (the GPU keeps 128)
    return min(256 if interpreting() else 128, dot_block(d))


def _block_j(block_p: int) -> int:
    """Column chunk of the rank count: the (BLOCK_P, BLOCK_J) compare table stays at <= 4K entries on a GPU
    (8K spilled registers on sm_80 at P = 324)."""
    return min(block_p, 128) if interpreting() else max(2, min(32, 4096 // block_p))


@functools.lru_cache(maxsize=16)
def _ratio_tensor(ratio: float, device: torch.device) -> torch.Tensor:
    """The SCL ratio as a (1,) float64 device tensor (Triton passes Python floats as fp32), made once per value."""
    return torch.tensor([ratio], dtype=torch.float64, device=device)


def _gather_blocks(keep: int, d: int) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_D) of the gather: 8 kept rows (video keeps 39 of 196 positions: 5 tiles, one ragged) by the
    widest power of two up to 256 that divides D (768 = 3 x 256, no masked lanes); the interpreter takes wider D
    tiles, as it pays per program, and 16 rows (64 kept rows still span four tiles)."""
    if interpreting():
        return 16, min(256, dot_block(d))
    divisor = d & -d
    return 8, min(256, divisor if divisor >= 64 else dot_block(d))


def _random_masking_fwd_triton(
    x: torch.Tensor, noise: torch.Tensor | None, seed: torch.Tensor | None, keep: int, frames: int,
    pos: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, d = x.shape
    p = n // frames
    kept = torch.empty((b, frames * keep, d), device=x.device, dtype=x.dtype)
    ids = torch.empty((b, keep), device=x.device, dtype=torch.int64)
    slot = torch.empty((b, p), device=x.device, dtype=torch.int32)
    if b == 0 or p == 0:
        return kept, ids, slot
    if keep == 0:
        return kept, ids, slot.fill_(-1)
    dummy = x  # never read: the constexpr flags compile the loads away
    # the selection once per sample, then the copy: one kernel doing both recomputed each sample's O(P^2)
    # selection in every program of the sample (1% to 4% of the copy ceiling on the H200, 2026-11-30)
    _random_masking_select_kernel[(b,)](
        noise if noise is not None else dummy, seed if seed is not None else dummy, ids, slot, p, keep,
        noise.stride(0) if noise is not None else 0, noise.stride(1) if noise is not None else 0,
        HAS_NOISE=noise is not None, BLOCK_P=dot_block(p), BLOCK_J=_block_j(dot_block(p)), num_warps=_FWD_WARPS,
    )  # fmt: skip
    block_k, block_d = _gather_blocks(keep, d)
    _random_masking_gather_kernel[(b, frames, cdiv(keep, block_k))](
        x, pos if pos is not None else dummy, ids, kept, p, keep, d,
        x.stride(0), x.stride(1), x.stride(2),
        pos.stride(0) if pos is not None else 0, pos.stride(1) if pos is not None else 0,
        kept.stride(0), kept.stride(1), kept.stride(2),
        HAS_POS=pos is not None, BLOCK_K=block_k, BLOCK_D=block_d,
    )  # fmt: skip
    return kept, ids, slot


def _random_masking_bwd_triton(
    grad: torch.Tensor, slot: torch.Tensor, frames: int, with_pos: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    b, p = slot.shape
    keep = grad.shape[1] // frames
    d = grad.shape[2]
    grad_x = torch.empty((b, frames * p, d), device=grad.device, dtype=grad.dtype)
    grad_pos = torch.empty((p, d) if with_pos else (0,), device=grad.device, dtype=grad.dtype)
    if b * p * d == 0:
        return grad_x.zero_(), grad_pos.zero_()
    block_m, block_d = (64 if interpreting() else 16), _block_d(d)
    _random_masking_bwd_kernel[(b * frames, cdiv(p, block_m))](
        grad, slot, grad_x, p, keep, d,
        grad.stride(0), grad.stride(1), grad.stride(2), grad_x.stride(0), grad_x.stride(1), grad_x.stride(2),
        FRAMES=frames, BLOCK_M=block_m, BLOCK_D=block_d,
    )  # fmt: skip
    if with_pos:
        _random_masking_pos_bwd_kernel[(cdiv(p, block_m), cdiv(d, block_d))](
            grad, slot, grad_pos, b, p, keep, d, grad.stride(0), grad.stride(1), grad.stride(2),
            FRAMES=frames, BLOCK_M=block_m, BLOCK_D=block_d,
        )  # fmt: skip
    return grad_x, grad_pos


def _mlm_mask_triton(
    ids: torch.Tensor, special: torch.Tensor, keys: tuple[torch.Tensor, ...] | None, seed: torch.Tensor | None,
    p: float, replace: tuple[float, float, float], vocab_size: int, mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    ids_c, special_c = ids.contiguous(), special.contiguous()
    out, labels = torch.empty_like(ids_c), torch.empty_like(ids_c)
    n = ids_c.numel()
    if n == 0:
        return out, labels
    choose, how, rand_tok = [k.contiguous() for k in keys] if keys is not None else (ids_c, ids_c, ids_c)
    block = 1024
    _mlm_mask_kernel[(cdiv(n, block),)](
        ids_c, special_c, choose, how, rand_tok, seed if seed is not None else ids_c, out, labels,
        n, p, replace[0], replace[0] + replace[1], vocab_size, mask_id,
        HAS_KEYS=keys is not None, BLOCK=block,
    )  # fmt: skip
    return out, labels


def _scl_text_mask_triton(
    ids: torch.Tensor, special: torch.Tensor, keys: torch.Tensor | None, seed: torch.Tensor | None,
    ratio: float, mask_id: int,
) -> torch.Tensor:
    ids_c, special_c = ids.contiguous(), special.contiguous()
    out = torch.empty_like(ids_c)
    b, length = ids_c.shape
    if b * length == 0:
        return out
    _scl_text_mask_kernel[(b,)](
        ids_c, special_c, keys.contiguous() if keys is not None else ids_c, seed if seed is not None else ids_c, out,
        _ratio_tensor(ratio, ids.device), length, mask_id,
        HAS_KEYS=keys is not None, BLOCK_L=dot_block(length), BLOCK_J=_block_j(dot_block(length)),
        num_warps=_FWD_WARPS,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------------------------
# torch.library ops
# --------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("scl::random_masking", mutates_args=())
def _random_masking_op(
    x: torch.Tensor,
    noise: torch.Tensor | None,
    seed: torch.Tensor | None,
    keep: int,
    frames: int,
    pos: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept, ids_keep, slot); slot (B, P) int32 is the backward's inverse map ((B, 0) for the reference)."""
    record("random_masking", backend)
    if backend == "triton":
        return _random_masking_fwd_triton(x, noise, seed, keep, frames, pos)
    if noise is None:
        raise ValueError(f"random_masking: backend {backend!r} needs noise (B, P), got None")
    if backend == "native":
        return torch.ops.scl.random_masking_native(x, noise, keep, frames, pos)
    kept, ids = reference.random_masking_ref(x, noise, keep, frames=frames, pos=pos)
    return kept, ids, ids.new_empty((x.shape[0], 0), dtype=torch.int32)


@_random_masking_op.register_fake
def _(x, noise, seed, keep, frames, pos, backend):
    b, n, d = x.shape
    slot_cols = 0 if backend == "reference" else n // frames
    return (
        x.new_empty((b, frames * keep, d)),
        x.new_empty((b, keep), dtype=torch.int64),
        x.new_empty((b, slot_cols), dtype=torch.int32),
    )


@torch.library.custom_op("scl::random_masking_backward", mutates_args=())
def _random_masking_backward_op(
    grad: torch.Tensor, ids: torch.Tensor, slot: torch.Tensor, positions: int, frames: int, with_pos: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x (B, F*P, D), grad_pos (P, D) or an empty (0,) tensor when pos was not given)."""
    if backend == "triton":
        return _random_masking_bwd_triton(grad, slot, frames, with_pos)
    if backend == "native":
        grads = torch.ops.scl.random_masking_native_backward(grad, slot, frames, with_pos)
        return grads[0], (grads[1] if with_pos else grad.new_empty(0))
    grad_x, grad_pos = reference.random_masking_backward_ref(grad, ids, positions, frames=frames, with_pos=with_pos)
    return grad_x, (grad_pos if grad_pos is not None else grad.new_empty(0))


@_random_masking_backward_op.register_fake
def _(grad, ids, slot, positions, frames, with_pos, backend):
    b, _, d = grad.shape
    return grad.new_empty((b, frames * positions, d)), grad.new_empty((positions, d) if with_pos else (0,))


def _random_masking_setup_context(ctx, inputs, output) -> None:
    x, _noise, _seed, _keep, frames, pos, backend = inputs
    ctx.frames, ctx.backend, ctx.with_pos = frames, backend, pos is not None
    ctx.positions = x.shape[1] // frames
    ctx.save_for_backward(output[1], output[2])


def _random_masking_autograd(ctx, grad_kept: torch.Tensor, _grad_ids, _grad_slot):
    ids, slot = ctx.saved_tensors
    need_x, need_pos = ctx.needs_input_grad[0], ctx.needs_input_grad[5]
    grad_x, grad_pos = torch.ops.scl.random_masking_backward(
        grad_kept, ids, slot, ctx.positions, ctx.frames, ctx.with_pos and need_pos, ctx.backend
    )
    return (
        grad_x if need_x else None,
        None,  # noise: keys, not differentiable
        None,  # seed
        None,  # keep
        None,  # frames
        grad_pos if (ctx.with_pos and need_pos) else None,
        None,  # backend
    )


torch.library.register_autograd(
    "scl::random_masking", _random_masking_autograd, setup_context=_random_masking_setup_context
)


@torch.library.custom_op("scl::mlm_mask", mutates_args=())
def _mlm_mask_op(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    choose: torch.Tensor | None,
    how: torch.Tensor | None,
    rand_tok: torch.Tensor | None,
    seed: torch.Tensor | None,
    p: float,
    replace: list[float],
    vocab_size: int,
    mask_id: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked_ids, labels); the keys (choose, how, rand_tok) or else the philox seed carry the randomness."""
    record("mlm_mask", backend)
    keys = None if choose is None or how is None or rand_tok is None else (choose, how, rand_tok)
    if backend == "triton":
        return _mlm_mask_triton(ids, special_mask, keys, seed, p, tuple(replace), vocab_size, mask_id)
    if keys is None:
        raise ValueError(f"mlm_mask: backend {backend!r} needs keys, got None")
    if backend == "native":
        return torch.ops.scl.mlm_mask_native(ids, special_mask, choose, how, rand_tok, p, replace[0],
                                             replace[0] + replace[1], mask_id)
    return reference.mlm_mask_ref(
        ids, special_mask, p=p, replace=tuple(replace), vocab_size=vocab_size, mask_id=mask_id, keys=keys
    )


@_mlm_mask_op.register_fake
def _(ids, special_mask, choose, how, rand_tok, seed, p, replace, vocab_size, mask_id, backend):
    return torch.empty_like(ids), torch.empty_like(ids)


@torch.library.custom_op("scl::scl_text_mask", mutates_args=())
def _scl_text_mask_op(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    keys: torch.Tensor | None,
    seed: torch.Tensor | None,
    ratio: float,
    mask_id: int,
    backend: str,
) -> torch.Tensor:
    record("scl_text_mask", backend)
    if backend == "triton":
        return _scl_text_mask_triton(ids, special_mask, keys, seed, ratio, mask_id)
    if keys is None:
        raise ValueError(f"scl_text_mask: backend {backend!r} needs keys, got None")
    if backend == "native":
        return torch.ops.scl.scl_text_mask_native(ids, special_mask, keys, ratio, mask_id)
    return reference.scl_text_mask_ref(ids, special_mask, ratio=ratio, mask_id=mask_id, keys=keys)


@_scl_text_mask_op.register_fake
def _(ids, special_mask, keys, seed, ratio, mask_id, backend):
    return torch.empty_like(ids)


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


def _pick_backend(op: str, device: torch.device, dtype: torch.dtype | None, backend: str | None, *,
                  has_native: bool) -> str:
    """resolve(), except that float64 tokens fall back to the reference unless the caller named a backend."""
    choice = resolve(op, device, backend, has_native=has_native)
    if choice == "triton" and dtype is not None and dtype not in _TRITON_DTYPES:
        if backend in (None, "auto"):
            return "reference"
        raise ValueError(f"{op}: the triton backend takes {_TRITON_DTYPES}, got {dtype}")
    return choice


def _draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A (1,) int64 philox seed on ``device``, drawn from ``generator`` on its own device: no host sync on CUDA."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gen_device, dtype=torch.int64)
    return seed.to(device, non_blocking=True)


def _draw_rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device, non_blocking=True)


def keep_count(positions: int, keep_ratio: float) -> int:
    """K = int(P * keep_ratio), tolerant of the rounding of a ratio computed as K / P (64 / 324 * 324 is
    63.99999999999999 in floating point, which must still keep 64)."""
    return min(positions, int(positions * keep_ratio + 1e-9))


def random_masking(
    x: torch.Tensor,
    keep_ratio: float,
    *,
    frames: int = 1,
    pos: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE-style random patch dropping: keep a uniform random subset of K = int(P * keep_ratio) positions per
    sample, the same subset in every frame, with the position embedding added to the kept tokens.

    Args:
        x: (B, F*P, D) patch tokens (no CLS), frame by frame; fp16/bf16/fp32 (float64 runs the reference on
            CUDA, the C++ kernel on CPU).
        keep_ratio: in (0, 1]; SCL keeps 0.2.
        frames: F; all frames share the sample's subset.
        pos: optional (P, D) position embedding in x's dtype, added to the kept tokens in the same pass
            (it receives a gradient).
        generator: source of the random keys (ignored when ``noise`` is given).
        noise: optional (B, P) caller-given keys: the K positions with the smallest keys are kept, equal keys
            going to the lower index. Two calls with the same noise keep the same subset on every backend.
        backend: ``"triton"``, ``"native"`` (C++ CPU), ``"reference"`` or None/``"auto"`` (see ``_dispatch``).

    Returns:
        kept (B, F*K, D) and ids_keep (B, K) int64, ascending. The backward scatters into the kept positions
        (dropped positions get zero gradient), deterministically.
    """
    if x.dim() != 3:
        raise ValueError(f"random_masking: x must be (B, F*P, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"random_masking: x must be floating point, got {x.dtype}")
    if not isinstance(frames, int) or frames < 1 or x.shape[1] % frames:
        raise ValueError(f"random_masking: x.shape[1] must be a multiple of frames >= 1, got {tuple(x.shape)}, "
                         f"frames={frames}")
    if not (isinstance(keep_ratio, (int, float)) and math.isfinite(keep_ratio) and 0.0 < keep_ratio <= 1.0):
        raise ValueError(f"random_masking: keep_ratio must be in (0, 1], got {keep_ratio!r}")
    b, n, d = x.shape
    p = n // frames
    if pos is not None:
        if pos.shape != (p, d):
            raise ValueError(f"random_masking: pos must be (P, D)=({p}, {d}), got {tuple(pos.shape)}")
        if pos.dtype != x.dtype or pos.device != x.device:
            raise ValueError(f"random_masking: pos must match x's dtype and device, got {pos.dtype} on {pos.device}")
    if noise is not None:
        if noise.shape != (b, p) or not noise.is_floating_point():
            raise ValueError(f"random_masking: noise must be floating (B, P)=({b}, {p}), got {noise.dtype} "
                             f"{tuple(noise.shape)}")
        if noise.device != x.device:
            raise ValueError(f"random_masking: noise must be on {x.device}, got {noise.device}")
    if p > _MAX_BLOCK:
        raise ValueError(f"random_masking: at most {_MAX_BLOCK} positions per frame, got P={p}")
    keep = keep_count(p, keep_ratio)
    choice = _pick_backend("random_masking", x.device, x.dtype, backend, has_native=True)
    seed = None
    if noise is None:
        if choice == "triton":
            seed = _draw_seed(generator, x.device)
        else:
            noise = _draw_rand((b, p), generator, x.device)
    elif choice == "triton" and noise.dtype not in _TRITON_DTYPES:
        noise = noise.float()  # the kernel compares fp32 keys
    kept, ids, _ = torch.ops.scl.random_masking(x, noise, seed, keep, frames, pos, choice)
    return kept, ids


def _check_text(op: str, ids: torch.Tensor, special_mask: torch.Tensor, two_d: bool) -> None:
    if two_d and ids.dim() != 2:
        raise ValueError(f"{op}: ids must be (B, L), got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: ids must be int32 or int64, got {ids.dtype}")
    if special_mask.shape != ids.shape or special_mask.dtype != torch.bool:
        raise ValueError(f"{op}: special_mask must be bool of ids' shape {tuple(ids.shape)}, got "
                         f"{special_mask.dtype} {tuple(special_mask.shape)}")
    if special_mask.device != ids.device:
        raise ValueError(f"{op}: special_mask must be on {ids.device}, got {special_mask.device}")
    if two_d and ids.shape[1] > _MAX_BLOCK:
        raise ValueError(f"{op}: at most {_MAX_BLOCK} tokens per row, got L={ids.shape[1]}")


def mlm_mask(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    *,
    p: float = 0.15,
    replace: tuple[float, float, float] = (0.8, 0.1, 0.1),
    vocab_size: int,
    mask_id: int,
    generator: torch.Generator | None = None,
    keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking on the device: each real token is chosen with probability ``p``; a chosen token becomes
    [MASK], a uniform random token, or stays, with probabilities ``replace``.

    Args:
        ids: token ids (any shape, usually (B, L)), int32/int64.
        special_mask: bool, ids' shape, True for special and padding tokens (never chosen).
        p: probability that a real token is chosen.
        replace: (mask, random, keep) probabilities of a chosen token; they sum to 1.
        vocab_size: random tokens are drawn from [0, vocab_size).
        mask_id: the [MASK] id.
        generator: source of the draws (ignored when ``keys`` is given). The Triton kernel draws in-kernel
            from a seed taken from it, so it never syncs with the host.
        keys: (choose, how, rand_tok) as ``reference.mlm_mask_keys`` draws them (choose and how fp32 in [0, 1),
            rand_tok int64 in [0, vocab_size)): every backend then gives the reference's exact output.
        backend: ``"triton"``, ``"native"`` (C++ CPU), ``"reference"`` or None/``"auto"`` (see ``_dispatch``).

    Returns:
        masked_ids (ids' shape and dtype) and labels (the original id where chosen, -100 elsewhere).
    """
    op = "mlm_mask"
    _check_text(op, ids, special_mask, two_d=False)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be in [0, 1], got {p}")
    if len(replace) != 3 or min(replace) < 0 or abs(sum(replace) - 1.0) > 1e-6:
        raise ValueError(f"{op}: replace must be three probabilities summing to 1, got {replace}")
    if vocab_size < 1:
        raise ValueError(f"{op}: vocab_size must be >= 1, got {vocab_size}")
    if keys is not None:
        if len(keys) != 3 or any(k.shape != ids.shape or k.device != ids.device for k in keys):
            raise ValueError(f"{op}: keys must be three tensors of ids' shape {tuple(ids.shape)} on {ids.device}")
        keys = (keys[0].float(), keys[1].float(), keys[2].long())
    choice = _pick_backend(op, ids.device, None, backend, has_native=_HAS_TEXT_NATIVE)
    seed = None
    if keys is None:
        if choice == "triton":
            seed = _draw_seed(generator, ids.device)
        else:
            gen_device = generator.device if generator is not None else ids.device
            keys = tuple(k.to(ids.device) for k in reference.mlm_mask_keys(ids.shape, vocab_size, generator=generator,
                                                                            device=gen_device))
    choose, how, rand_tok = keys if keys is not None else (None, None, None)
    return torch.ops.scl.mlm_mask(ids, special_mask, choose, how, rand_tok, seed, float(p),
                                  [float(r) for r in replace], vocab_size, mask_id, choice)


def scl_text_mask(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    *,
    ratio: float = 0.4,
    mask_id: int,
    generator: torch.Generator | None = None,
    keys: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """SCL's text masking on the device: per row, round(ratio * n_real) real tokens (half to even, at least one
    when the row has a real token) drawn without replacement become [MASK].

    Args:
        ids: (B, L) token ids, int32/int64.
        special_mask: (B, L) bool, True for special and padding tokens (never masked).
        ratio: fraction of the real tokens to mask, in [0, 1].
        mask_id: the [MASK] id.
        generator: source of the draws (ignored when ``keys`` is given).
        keys: (B, L) keys in [0, 1) (compared as fp32): the real positions with the smallest keys are masked,
            equal keys going to the lower index; every backend then gives the reference's exact output.
        backend: ``"triton"``, ``"native"`` (C++ CPU), ``"reference"`` or None/``"auto"`` (see ``_dispatch``).

    Returns:
        masked ids, (B, L), ids' dtype.
    """
    op = "scl_text_mask"
    _check_text(op, ids, special_mask, two_d=True)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{op}: ratio must be in [0, 1], got {ratio}")
    if keys is not None:
        if keys.shape != ids.shape or keys.device != ids.device or not keys.is_floating_point():
            raise ValueError(f"{op}: keys must be floating, of ids' shape {tuple(ids.shape)} on {ids.device}, got "
                             f"{keys.dtype} {tuple(keys.shape)} on {keys.device}")
        keys = keys.float()
    choice = _pick_backend(op, ids.device, None, backend, has_native=_HAS_TEXT_NATIVE)
    seed = None
    if keys is None:
        if choice == "triton":
            seed = _draw_seed(generator, ids.device)
        else:
            keys = _draw_rand(tuple(ids.shape), generator, ids.device)
    return torch.ops.scl.scl_text_mask(ids, special_mask, keys, seed, float(ratio), mask_id, choice)


# --------------------------------------------------------------------------------------------------------------
# what a GPU launches, for the sm_80 / sm_90 compile test (_compile.py)
# --------------------------------------------------------------------------------------------------------------


def _compile_specs() -> list:
    """One spec per variant a GPU launches; the dtype x shape x flag grid is sampled rather than enumerated, to
    keep the compile test short."""
    specs = []
    for i, (p, has_noise) in enumerate(((324, True), (324, False), (196, False))):
        tag = f"p{p}" + ("-noise" if has_noise else "-philox")
        specs += specs_from_configs(
            _random_masking_select_kernel, f"masking.random_masking_select/{tag}",
            {"NOISE_ptr": "*fp32", "SEED_ptr": "*i64", "IDS_ptr": "*i64", "SLOT_ptr": "*i32"},
            {"HAS_NOISE": has_noise, "BLOCK_P": dot_block(p), "BLOCK_J": max(2, min(32, 4096 // dot_block(p)))},
            num_warps=_FWD_WARPS, default=i == 0,
        )  # fmt: skip
    for i, (dt, d, has_pos) in enumerate((("fp16", 768, True), ("bf16", 768, True), ("fp32", 768, False),
                                          ("bf16", 384, False))):
        unit, divisible = contiguous_strides(_random_masking_gather_kernel)
        block_k, block_d = 8, min(256, d & -d)
        specs += specs_from_configs(
            _random_masking_gather_kernel, f"masking.random_masking_gather/{dt}-d{d}" + ("-pos" if has_pos else ""),
            {"X_ptr": f"*{dt}", "POS_ptr": f"*{dt}", "IDS_ptr": "*i64", "KEPT_ptr": f"*{dt}"},
            {"HAS_POS": has_pos, "BLOCK_K": block_k, "BLOCK_D": block_d, **unit}, default=i == 0,
            divisible=(*divisible, "D"),  # D = 384, 768: Triton specialises on it, and vectorises on that
        )  # fmt: skip
    for dt, frames in (("fp16", 1), ("bf16", 1), ("fp32", 1), ("bf16", 4)):
        specs += specs_from_configs(
            _random_masking_bwd_kernel, f"masking.random_masking_bwd/{dt}-f{frames}",
            {"GRAD_ptr": f"*{dt}", "SLOT_ptr": "*i32", "DX_ptr": f"*{dt}"},
            {"FRAMES": frames, "BLOCK_M": 16, "BLOCK_D": 128}, default=dt == "fp16",
        )  # fmt: skip
        specs += specs_from_configs(
            _random_masking_pos_bwd_kernel, f"masking.random_masking_pos_bwd/{dt}-f{frames}",
            {"GRAD_ptr": f"*{dt}", "SLOT_ptr": "*i32", "DPOS_ptr": f"*{dt}"},
            {"FRAMES": frames, "BLOCK_M": 16, "BLOCK_D": 128}, default=dt == "fp16",
        )  # fmt: skip
    for it in ("i64", "i32"):
        for has_keys in (True, False):
            tag = f"{it}-" + ("keys" if has_keys else "philox")
            specs += specs_from_configs(
                _mlm_mask_kernel, f"masking.mlm_mask/{tag}",
                {"IDS_ptr": f"*{it}", "SPECIAL_ptr": "*i1", "CHOOSE_ptr": "*fp32", "HOW_ptr": "*fp32",
                 "RAND_ptr": "*i64", "SEED_ptr": "*i64", "OUT_ptr": f"*{it}", "LABELS_ptr": f"*{it}",
                 "p": "fp32", "r_mask": "fp32", "r_rand_end": "fp32"},
                {"HAS_KEYS": has_keys, "BLOCK": 1024}, default=it == "i64" and not has_keys,
            )  # fmt: skip
    for it, has_keys, length in (("i64", False, 64), ("i32", True, 512)):
        tag = f"{it}-" + ("keys" if has_keys else "philox") + f"-l{length}"
        specs += specs_from_configs(
            _scl_text_mask_kernel, f"masking.scl_text_mask/{tag}",
            {"IDS_ptr": f"*{it}", "SPECIAL_ptr": "*i1", "KEYS_ptr": "*fp32", "SEED_ptr": "*i64",
             "OUT_ptr": f"*{it}", "RATIO_ptr": "*fp64"},
            {"HAS_KEYS": has_keys, "BLOCK_L": length, "BLOCK_J": max(2, min(32, 4096 // length))},
            num_warps=_FWD_WARPS, default=length == 64,
        )  # fmt: skip
    return specs


COMPILE_SPECS = _compile_specs()
