"""masked_attention: the Triton kernels (under the interpreter on CPU) against the fp64 reference.

Outputs and dq/dk/dv, fp32 and fp16 (bf16 is wrong under the interpreter: GPU only), every mask kind and the
combinations, odd lengths (1, 7, 77, 197, 325), D in {8, 32, 48, 64, 128, 160, 192, 256}, cross-attention, rows
with no visible key, grouped-query attention (2 and 4 query heads per K/V head), causal with Lq < Lk and Lq > Lk.
The interpreter costs ~0.1 s per program launch, so the cases are a chosen subset of the cross product in which
every length, head dim, mask kind and dtype appears; every buffer the launchers allocate is poisoned with NaN.
Also here: the tile skipping of each mask kind, the input checks and the GPU config pruning. Elsewhere:
``test_attention_dropin.py`` (causal alignment, GQA without copies, the returned log-sum-exp),
``test_attention_dropout.py``, ``test_attention_api.py`` (torch.compile, autograd paths, the model's dispatch),
``test_attention_auto.py`` (the sdpa backend and ``backend="auto"``).
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels._launch import dot_block
from scl_kernels.attention import configs as attn_configs
from scl_kernels.attention import launch as attn_launch
from scl_kernels.reference import attention_mask_ref, frame_block_mask, masked_attention_ref
from tests.utils import ATOL, REL_TOL, assert_close

GRAD_SLACK = 3.0  # ARCHITECTURE.md: gradients may be 3x looser
TILE = 64  # the interpreter's single config has BLOCK_M = BLOCK_N = 64 (configs._INTERPRET_CONFIGS)


@dataclasses.dataclass(frozen=True)
class Case:
    b: int
    h: int
    lq: int
    lk: int
    d: int
    dtype: torch.dtype
    key_mask: bool = False
    frames: int | None = None
    attn_mask: str | None = None  # shape pattern of the bool mask: "full", "2d", "keys", "rows-empty"
    empty_batch: bool = False  # key_mask of the last batch element all False: every row of it sees nothing
    strided: bool = False  # q, k, v as (B, L, H, D) tensors permuted to (B, H, L, D), as the model passes them
    h_kv: int | None = None  # K/V heads (grouped-query attention); None: as many as q
    causal: bool = False  # is_causal (SDPA's top-left alignment)

    @property
    def kv_heads(self) -> int:
        return self.h if self.h_kv is None else self.h_kv

    def __str__(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        kinds = (("key", self.key_mask), (f"frames{self.frames}", self.frames),
                 (f"attn-{self.attn_mask}", self.attn_mask), ("causal", self.causal))  # fmt: skip
        masks = [m for m, on in kinds if on]
        heads = f"H{self.h}" + (f"kv{self.h_kv}" if self.h_kv is not None else "")
        return f"B{self.b}{heads}-{self.lq}x{self.lk}-d{self.d}-{dt}-{'+'.join(masks) or 'nomask'}"


F32, F16 = torch.float32, torch.float16
CASES = [
    Case(1, 1, 1, 1, 32, F32),
    Case(1, 2, 7, 7, 64, F16),
    Case(2, 1, 7, 7, 32, F32, key_mask=True, empty_batch=True),
    Case(1, 1, 77, 77, 128, F32, attn_mask="full"),
    Case(1, 2, 197, 197, 64, F16, key_mask=True, strided=True),
    Case(1, 1, 325, 325, 32, F32, frames=5),  # 5 frames x (1 CLS + 64 patches)
    Case(1, 1, 100, 100, 64, F16, frames=4),  # 4 x (1 + 24): frames that straddle the 64-row blocks
    Case(2, 1, 100, 100, 32, F32, key_mask=True, frames=4),
    Case(1, 2, 197, 77, 32, F32, key_mask=True),  # cross-attention, Lq > Lk
    Case(1, 1, 7, 325, 128, F16, attn_mask="keys"),  # cross, broadcast over query rows
    Case(2, 1, 77, 197, 64, F32, key_mask=True, attn_mask="2d"),
    Case(1, 1, 77, 77, 32, F16, attn_mask="rows-empty"),
    Case(1, 1, 33, 20, 48, F32, key_mask=True),  # D not a power of two: padded to 64 by masked loads
    Case(1, 1, 9, 9, 8, F16),  # D below tl.dot's 16: padded to 16
    # grouped-query attention: 2 and 4 query heads per K/V head, dK/dV summed over each group
    Case(2, 4, 37, 37, 32, F32, h_kv=2, key_mask=True, empty_batch=True),
    Case(2, 4, 29, 40, 64, F16, h_kv=1, attn_mask="full"),  # multi-query; the mask differs per query head
    Case(1, 4, 33, 33, 32, F32, h_kv=2, frames=3),
    # is_causal, top-left aligned: Lq > Lk (rows past Lk see every key) and Lq < Lk, over several tiles each way
    Case(1, 1, 150, 100, 32, F32, causal=True),
    Case(1, 2, 70, 140, 64, F16, causal=True, key_mask=True),
    Case(2, 4, 20, 37, 32, F32, h_kv=2, causal=True, key_mask=True, empty_batch=True, strided=True),
    # head dims past 128: 160 and 192 padded to 256 by masked loads
    Case(1, 1, 17, 23, 160, F32, key_mask=True),
    Case(1, 1, 19, 19, 192, F16, causal=True),
    Case(1, 2, 13, 29, 256, F32, h_kv=1),
    Case(1, 1, 21, 21, 256, F16, attn_mask="rows-empty"),
]


def _masks(case: Case, gen: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    key_mask = attn_mask = None
    if case.key_mask:
        key_mask = torch.rand(case.b, case.lk, generator=gen) > 0.3
        key_mask[:, 0] = True
        if case.empty_batch:
            key_mask[-1] = False
    if case.attn_mask == "full":
        attn_mask = torch.rand(case.b, case.h, case.lq, case.lk, generator=gen) > 0.4
    elif case.attn_mask == "2d":
        attn_mask = torch.rand(case.lq, case.lk, generator=gen) > 0.5
    elif case.attn_mask == "keys":
        attn_mask = torch.rand(case.b, 1, 1, case.lk, generator=gen) > 0.5
    elif case.attn_mask == "rows-empty":
        attn_mask = torch.rand(case.b, 1, case.lq, case.lk, generator=gen) > 0.5
        attn_mask[:, :, ::5] = False  # every fifth query row sees no key
    return key_mask, attn_mask


def _inputs(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def one(length: int, heads: int) -> torch.Tensor:
        if case.strided:
            return torch.randn(case.b, length, heads, case.d, generator=gen).to(case.dtype).transpose(1, 2)
        return torch.randn(case.b, heads, length, case.d, generator=gen).to(case.dtype)

    return one(case.lq, case.h), one(case.lk, case.kv_heads), one(case.lk, case.kv_heads)


def _run(fn, q, k, v, g, **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(g)
    return out.detach(), [q.grad, k.grad, v.grad]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_matches_fp64_reference(case: Case, poisoned: None) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    q, k, v = _inputs(case, gen)
    key_mask, attn_mask = _masks(case, gen)
    masks = {"key_mask": key_mask, "frames": case.frames, "attn_mask": attn_mask, "is_causal": case.causal}
    g = torch.randn(case.b, case.h, case.lq, case.d, generator=gen).to(case.dtype)

    before = _dispatch.calls[("masked_attention", "triton")]
    out, grads = _run(scl_kernels.masked_attention, q, k, v, g, backend="triton", **masks)
    assert _dispatch.calls[("masked_attention", "triton")] == before + 1, "the triton backend did not serve the call"
    ref, ref_grads = _run(masked_attention_ref, q.double(), k.double(), v.double(), g.double(), **masks)
    base, base_grads = _run(masked_attention_ref, q, k, v, g, **masks)  # same-dtype PyTorch: the baseline

    assert out.dtype == case.dtype and out.shape == (case.b, case.h, case.lq, case.d)
    assert [t.shape for t in grads] == [q.shape, k.shape, v.shape]
    rtol, atol = REL_TOL[case.dtype], ATOL[case.dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, baseline=base, name="out")
    for name, got, want, bl in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads, strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, baseline=bl, name=name)

    # rows with no visible key: exactly zero output and zero dq (never NaN, never the mean of the values)
    mask = attention_mask_ref(case.b, case.lq, case.lk, key_mask=key_mask, frames=case.frames, attn_mask=attn_mask,
                              is_causal=case.causal)  # fmt: skip
    if mask is not None:
        empty = ~mask.expand(case.b, case.h, case.lq, case.lk).any(-1)  # (B, H, Lq)
        if case.empty_batch or case.attn_mask == "rows-empty":
            assert empty.any(), "the case was meant to have rows with no visible key"
        assert (out[empty] == 0).all() and (grads[0][empty] == 0).all()


def test_fully_masked_input_gives_zero_grads_everywhere(poisoned: None) -> None:
    """Every key masked: zeros out, zero dq/dk/dv, no NaN anywhere (the lse = +inf path)."""
    q, k, v = (torch.randn(1, 1, 33, 32) for _ in range(3))
    km = torch.zeros(1, 33, dtype=torch.bool)
    out, grads = _run(scl_kernels.masked_attention, q, k, v, torch.randn(1, 1, 33, 32), key_mask=km, backend="triton")
    assert (out == 0).all()
    for g in grads:
        assert (g == 0).all()


def _passes(start: int, length: int, f: int, p: int, rows: int, rows_are_keys: bool) -> list[tuple[int, int, int]]:
    """Host copy of the kernel's passes under ``frames=f`` with p patches per frame (``_frame_span``): the
    (lo, hi, tile) loops that the block of rows [start, start + rows) runs over the other axis, tile 0 = the
    kernel's main tile, 16 = its CLS tile. The CLS tokens first, then each frame the block sees, alone."""
    end = min(start + rows, length)
    if rows_are_keys:
        f_lo = (0 if end > f else start) if start < f else (start - f) // p
        f_hi = (end - 1 - f) // p if end > f else end - 1
        if start < f:
            f_hi = max(f_hi, min(end, f) - 1)
    elif start < f:  # a CLS query sees every frame
        f_lo, f_hi = 0, f - 1
    else:
        f_lo, f_hi = (start - f) // p, (end - 1 - f) // p
    return [(0, f, 16)] + [(f + g * p, min(f + (g + 1) * p, length), 0) for g in range(f_lo, f_hi + 1)]


def _columns(passes: list[tuple[int, int, int]], tile: int) -> int:
    """Columns the loops compute: whole tiles, the last one's padding included."""
    return sum(-(-(hi - lo) // (t or tile)) * (t or tile) for lo, hi, t in passes if hi > lo)


@pytest.mark.parametrize("frames,patches", [(4, 127), (4, 196)])
def test_frames_skip_key_blocks_and_equal_dense_mask(poisoned: None, frames: int, patches: int) -> None:
    """frames=4 computes fewer key columns than dense attention (the kernel's own counter, exactly what its loop
    bounds promise) and gives what the same pattern passed as a dense boolean attn_mask gives (which visits
    every tile). 196 patches = a 4-frame 224 px video."""
    d = 32
    length = frames * (1 + patches)
    q, k, v = (torch.randn(1, 1, length, d) for _ in range(3))
    scale = d**-0.5
    dense = frame_block_mask(length, frames)
    out_f, _, count_f = attn_launch._attention_forward(q, k, v, None, None, frames, scale, count_blocks=True)
    out_d, _, count_d = attn_launch._attention_forward(q, k, v, None, dense, None, scale, count_blocks=True)
    tile = TILE
    n_blocks = -(-length // tile)
    per_row_f, per_row_d = count_f[:n_blocks].tolist(), count_d[:n_blocks].tolist()
    assert per_row_d == [n_blocks * tile] * n_blocks
    expected = [_columns(_passes(s, length, frames, patches, tile, False), tile) for s in range(0, length, tile)]
    assert per_row_f == expected, (per_row_f, expected)
    patch_rows = sum(per_row_f[1:]) / sum(per_row_d[1:])  # row block 0 holds the CLS queries: it sees all
    ideal = (1 + patches) / length
    print(f"\nframes={frames} P={patches} L={length}: key columns {sum(per_row_f)} vs dense {sum(per_row_d)}; "
          f"patch-row blocks {patch_rows:.2f} of dense (exact pattern {ideal:.2f})")
    assert patch_rows < ideal + 0.2  # tile rounding only: ceil(P / 64) tiles per frame plus one CLS tile
    assert_close(out_f, out_d, rtol=1e-6, name="frames vs dense mask")
    ref = masked_attention_ref(q.double(), k.double(), v.double(), attn_mask=dense)
    assert_close(out_f, ref, rtol=REL_TOL[torch.float32], name="frames vs fp64")


def test_key_mask_skips_padding_tiles(poisoned: None) -> None:
    """Key tiles past a row's last visible key are not computed (padded text costs its real length), and the
    result still matches fp64, masked keys inside the visible range included."""
    lk, d = 300, 32
    q, k, v = (torch.randn(3, 2, 70, d) for _ in range(3))
    k, v = (torch.randn(3, 2, lk, d) for _ in range(2))
    lengths = [300, 65, 0]
    km = torch.arange(lk)[None, :] < torch.tensor(lengths)[:, None]
    km[0, 17] = False  # a hole: visible keys after it must still be visited
    out, _, counts = attn_launch._attention_forward(q, k, v, km, None, None, d**-0.5, count_blocks=True)
    n_m = -(-70 // TILE)
    per_batch = counts[: 3 * 2 * n_m].view(3, 2, n_m)
    for b, n in enumerate(lengths):
        assert (per_batch[b] == -(-n // TILE) * TILE).all(), (b, per_batch[b].tolist())
    ref = masked_attention_ref(q.double(), k.double(), v.double(), key_mask=km)
    assert_close(out, ref, rtol=REL_TOL[torch.float32], name="key-mask skip vs fp64")
    assert (out[2] == 0).all()


def test_frame_passes_cover_every_visible_pair() -> None:
    """Host re-derivation of the kernel's loop bounds over many (F, P, block) shapes: every (query, key) pair
    the pattern allows lies in exactly one pass (none missed, none counted twice), in both orientations (fwd/dQ
    rows = queries, dK/dV rows = keys)."""

    for f, p, bm in [(1, 8, 16), (4, 24, 64), (5, 64, 64), (3, 5, 16), (8, 196, 128), (2, 1, 16), (4, 0, 16),
                     (20, 3, 32)]:  # fmt: skip
        length = f * (1 + p)
        allowed = frame_block_mask(length, f)
        for rows_are_keys in (False, True):
            plane = allowed.T if rows_are_keys else allowed
            for start in range(0, length, bm):
                hits = torch.zeros(length, dtype=torch.int64)
                for lo, hi, _ in _passes(start, length, f, max(p, 1), bm, rows_are_keys):
                    hits[lo:hi] += 1
                need = plane[start : start + bm].any(0)
                assert (hits[need] == 1).all(), (f, p, start, rows_are_keys, hits.tolist())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 512}, "head dims up to 256"),
        ({"kv_heads": 4}, "Hkv dividing"),
        ({"lk": 10, "frames": 2, "is_causal": True}, "do not combine"),
        ({"dtype": torch.float64}, "supports"),
        ({"lk": 9, "frames": 2}, "frames is for self-attention"),
        ({"frames": 4}, "multiple of frames"),
        ({"key_mask": torch.ones(1, 3, dtype=torch.bool)}, "key_mask must be bool"),
        ({"key_mask": torch.ones(1, 10)}, "key_mask must be bool"),
        ({"attn_mask": torch.ones(10, 10)}, "attn_mask must be bool"),
        ({"attn_mask": torch.ones(2, 10, 10, dtype=torch.bool)}, "must broadcast"),  # K/V's heads, not q's
        ({"dropout_p": 1.0}, "dropout_p must be in"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, match: str) -> None:
    d, dtype, lk = kwargs.pop("d", 32), kwargs.pop("dtype", torch.float32), kwargs.pop("lk", 10)
    q = torch.randn(1, 6, 10, d, dtype=dtype)
    k = v = torch.randn(1, kwargs.pop("kv_heads", 2), lk, d, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        scl_kernels.masked_attention(q, k, v, backend="triton", **kwargs)


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="must be"):
        scl_kernels.masked_attention(torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16))
    with pytest.raises(ValueError, match=r"\(B, H, L, D\)"):
        scl_kernels.masked_attention(torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32))



def test_gpu_config_pruning() -> None:
    """The autotuner's pruning (GPU only, so exercised here directly): never empty, keeps tiles that fit shared
    memory and registers, drops 128-row tiles for 50-token text, and keeps each launch to its own list (the
    tensor-core tiles for 16-bit inputs, the FMA tiles for fp32; the wide-head tiles for D > 128)."""
    cfg = attn_configs
    for kind in ("fwd", "dkdv", "dq"):
        prune, configs = cfg._make_prune(kind), cfg._all_configs(kind)
        assert len(set(map(cfg._tile, configs))) == len(configs), kind  # each tile once
        for dtype, d in ((torch.bfloat16, 64), (torch.float16, 128), (torch.float32, 128), (torch.float32, 32),
                         (torch.bfloat16, 160), (torch.float16, 256), (torch.float32, 192)):  # fmt: skip
            q, block_d = torch.empty(0, dtype=dtype), dot_block(d)
            own = set(map(cfg._tile, cfg._own_list(kind, dtype.itemsize, block_d)))
            long_ = prune(configs, {"Q_ptr": q, "Lq": 4096, "Lk": 4096}, BLOCK_D=block_d)
            assert long_ and set(map(cfg._tile, long_)) <= own, (kind, dtype, d)
            for c in long_[:-1] if len(long_) > 1 else []:
                assert cfg._smem_estimate(c, kind, block_d, q.element_size()) <= 160 * 1024
            short = prune(configs, {"Q_ptr": q, "Lq": 50, "Lk": 50}, BLOCK_D=block_d)
            assert short and all(c.kwargs["BLOCK_M"] <= 64 and c.kwargs["BLOCK_N"] <= 64 for c in short), short
        for fp32 in (False, True):  # the wide lists: every tile fits shared memory at BLOCK_D = 256, none is dropped
            wide = cfg._CONFIG_LISTS[kind][(fp32, True)]
            elt = 4 if fp32 else 2
            assert cfg._fitting(wide, kind, 256, elt, cfg._reg_budget(False, elt, 256)) == wide, (kind, fp32)
    # the production case keeps several candidates to tune over
    bf16 = torch.empty(0, dtype=torch.bfloat16)
    fwd = cfg._make_prune("fwd")(cfg._all_configs("fwd"), {"Q_ptr": bf16, "Lq": 325, "Lk": 325}, BLOCK_D=64)
    assert len(fwd) > 2
    # one config each under SCL_KERNELS_AUTOTUNE=0: the list's default, as the compile report lists it (the first
    # config of the launch's own list that fits sm_80's budget)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCL_KERNELS_AUTOTUNE", "0")
        for kind in cfg._CONFIG_LISTS:
            for dtype, d in ((torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float32, 64), (torch.float32, 128),
                             (torch.bfloat16, 256), (torch.float32, 256)):  # fmt: skip
                q, elt = torch.empty(0, dtype=dtype), dtype.itemsize
                (first,) = cfg._make_prune(kind)(cfg._all_configs(kind), {"Q_ptr": q, "Lq": 788, "Lk": 788},
                                                 BLOCK_D=d)  # fmt: skip
                default = cfg._fitting(cfg._own_list(kind, elt, d), kind, d, elt, cfg._reg_budget(False, elt, d))[0]
                assert cfg._tile(first) == cfg._tile(default), (kind, dtype, d)
    # fp32 at D=128: the compile sweep's spilling forward tiles (72 on the estimate) are pruned, the 8-warp ones kept
    fp32 = cfg._fitting(cfg.FWD_FP32_CONFIGS, "fwd", 128, 4, cfg._reg_budget(True, 4))
    assert [cfg._tile(c) for c in fp32] == [(32, 32, 8, 2), (32, 16, 8, 2)]
    # a Hopper also tunes over the tutorial's 4-warp 128-key dK/dV tile in 16-bit; fp32 has one budget for both
    tile = [c for c in cfg.DKDV_CONFIGS if (c.kwargs["BLOCK_N"], c.num_warps) == (128, 4)]
    hopper = cfg._fitting(cfg.DKDV_CONFIGS, "dkdv", 64, 2, cfg._reg_budget(True, 2))
    ampere = cfg._fitting(cfg.DKDV_CONFIGS, "dkdv", 64, 2, cfg._reg_budget(False, 2))
    assert tile and all(c in hopper and c not in ampere for c in tile) and set(ampere) <= set(hopper)
    for kind, lists in cfg._CONFIG_LISTS.items():
        for d in (32, 64, 128):
            configs = lists[(True, False)]
            fits = [cfg._fitting(configs, kind, d, 4, cfg._reg_budget(h, 4)) for h in (True, False)]
            assert fits[0] == fits[1], (kind, d)
