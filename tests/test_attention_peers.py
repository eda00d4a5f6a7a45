"""The benchmark peers' masks are the reference mask (``benchmarks/attention_peers.py``), on small CPU shapes.

A peer on the wrong mask would make any speed ratio meaningless, and the GPU report only learns on a GPU whether
its peers run at all; what can be checked here is checked here: FlexAttention's ``mask_mod`` and the ``BlockMask``
built from it (the same ones the report and ``bench_attention`` use), SDPA's additive mask form, and xformers'
block-diagonal packing, down to its gathers.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from benchmarks import attention_peers as peers
from benchmarks import shapes as S
from scl_kernels.reference import attention_mask_ref, masked_attention_ref
from tests.utils import assert_close

CPU = torch.device("cpu")
FRAMES, PATCHES = 4, 30  # L = 124: 16-token tiles then include full, partial and fully padded ones
L = FRAMES * (1 + PATCHES)
# a whole row; one cut inside frame 2; one cut inside frame 0 (every key tile past the first is padding)
LENGTHS = (L, 70, 9)


def _key_mask(lengths: tuple[int, ...], lk: int) -> torch.Tensor:
    return torch.arange(lk)[None, :] < torch.tensor(lengths)[:, None]


def _tiles(mask: torch.Tensor, bq: int, bk: int, reduce: str) -> torch.Tensor:
    """(B, nq, nk) any / all of a (B, Lq, Lk) mask per tile, the tail padded with False (as FlexAttention pads)."""
    b, lq, lk = mask.shape
    nq, nk = -(-lq // bq), -(-lk // bk)
    padded = torch.zeros(b, nq * bq, nk * bk, dtype=torch.bool)
    padded[:, :lq, :lk] = mask
    tiles = padded.view(b, nq, bq, nk, bk)
    return tiles.any(4).any(2) if reduce == "any" else tiles.all(4).all(2)


@pytest.mark.parametrize("block_size", [(16, 16), (32, 16), (16, 32), (128, 128)], ids=lambda t: f"{t[0]}x{t[1]}")
def test_flex_block_mask_is_the_reference_mask(block_size: tuple[int, int]) -> None:
    """4 frames with key padding: the mask_mod over every (b, h, q, kv), and the BlockMask expanded the way the
    kernel reads it (full tiles, partial tiles through mask_mod, the rest skipped), are exactly the reference
    mask; every tile with a visible element is listed, no tile without one is (the padded tail is skipped)."""
    km = _key_mask(LENGTHS, L)
    batch = len(LENGTHS)
    ref = attention_mask_ref(batch, L, L, key_mask=km, frames=FRAMES).expand(batch, 1, L, L)
    mask_mod = peers.flex_mask_mod(frames=FRAMES, seq_len=L, lengths=peers.key_lengths(km))
    assert torch.equal(create_mask(mask_mod, batch, 1, L, L, device=CPU), ref)

    block = peers.build_block_mask(mask_mod, batch=batch, lq=L, lk=L, device=CPU, block_size=block_size,
                                   compile=False)
    dense, counts = peers.expand_block_mask(block, mask_mod, batch, L, L)
    assert torch.equal(dense, ref)
    assert counts.empty_listed == 0 and counts.both == 0
    visible_tiles = _tiles(ref[:, 0], *block_size, "any")
    assert counts.partial + counts.full == int(visible_tiles.sum())
    assert counts.full <= int(_tiles(ref[:, 0], *block_size, "all").sum())
    if block_size == (16, 16):
        assert counts.partial + counts.full < counts.total  # tiles are skipped
        assert counts.full > 0  # the full-tile path is exercised: frame 0's patches 16..31 see each other
        # the row of length 9: only key tile 0 (CLS and keys < 9) is listed for any query tile
        listed = block.kv_num_blocks[2, 0] + block.full_kv_num_blocks[2, 0]
        assert torch.all(listed == 1) and torch.all(block.kv_indices[2, 0, :, 0] == 0)
    assert peers.check_block_mask(block, mask_mod, ref, batch=batch, lq=L, lk=L) == counts


def test_flex_checks_catch_wrong_masks() -> None:
    """The check the report runs before a Flex time may count fails on a wrong frame length, on a pattern without
    the padding, and on a BlockMask that lists a fully padded tile (right answer, work done in vain)."""
    from torch.nn.attention.flex_attention import BlockMask

    km = _key_mask(LENGTHS, L)
    batch, lengths = len(LENGTHS), peers.key_lengths(km)
    ref = attention_mask_ref(batch, L, L, key_mask=km, frames=FRAMES)
    right = peers.flex_mask_mod(frames=FRAMES, seq_len=L, lengths=lengths)
    unpadded = peers.flex_mask_mod(frames=FRAMES, seq_len=L, lengths=None)
    off_by_one = peers.flex_mask_mod(frames=FRAMES, seq_len=L + FRAMES, lengths=lengths)  # frames of 31 patches

    def block(mask_mod: peers.MaskMod, b: int | None) -> object:
        return peers.build_block_mask(mask_mod, batch=b, lq=L, lk=L, device=CPU, block_size=(16, 16), compile=False)

    with pytest.raises(peers.MaskMismatch, match="differ from the reference"):
        peers.check_block_mask(block(off_by_one, batch), off_by_one, ref, batch=batch, lq=L, lk=L)
    with pytest.raises(peers.MaskMismatch, match="differ from the reference"):
        peers.check_block_mask(block(unpadded, None), unpadded, ref, batch=batch, lq=L, lk=L)
    good = block(right, batch)
    num, idx = good.kv_num_blocks.clone(), good.kv_indices.clone()
    assert num[2, 0, 0] == 1  # the row of length 9, query tile 0: key tile 0 only
    num[2, 0, 0], idx[2, 0, 0, 1] = 2, idx.shape[-1] - 1  # and now the last key tile too, all padding there
    wasteful = BlockMask.from_kv_blocks(num, idx, good.full_kv_num_blocks, good.full_kv_indices,
                                        BLOCK_SIZE=good.BLOCK_SIZE, mask_mod=right, seq_lengths=(L, L))
    with pytest.raises(peers.MaskMismatch, match="1 tiles with nothing visible"):
        peers.check_block_mask(wasteful, right, ref, batch=batch, lq=L, lk=L)


def test_flex_mask_mod_at_the_report_shapes() -> None:
    """At the GPU report's masked shapes (batch 2), the FlexPeer the report builds holds the reference pattern."""
    for shape in [s for s in S.ATTN_GPU if s.frames or s.key_mask]:
        km = _key_mask((shape.lk, shape.lk // 2 + 3), shape.lk) if shape.key_mask else None
        ref = attention_mask_ref(2, shape.lq, shape.lk, key_mask=km, frames=shape.frames)
        flex = peers.FlexPeer(batch=2, lq=shape.lq, lk=shape.lk, frames=shape.frames, key_mask=km, reference=ref,
                              device=CPU, compile=False)
        got = create_mask(flex.mask_mod, 2, 1, shape.lq, shape.lk, device=CPU)
        assert torch.equal(got, ref.expand(2, 1, shape.lq, shape.lk)), shape.name
        assert flex.rows_safe  # every query row sees a key: ROWS_GUARANTEED_SAFE is a legal option here


def test_flex_configs_and_refinements() -> None:
    """Frame shapes try tiles that suit 196-patch frames, each with a kernel BLOCK_M that divides its query tile;
    refinements add the options to the fastest."""
    video, text = S.ATTN_GPU[0], S.ATTN_GPU[1]
    configs = peers.flex_configs(frames=video.frames, lk=video.lk, key_mask=video.key_mask)
    assert [c.block_size for c in configs] == [(128, 128), (64, 128), (64, 64)]
    for c in configs:
        opts = c.options or {}
        assert c.block_size[0] % opts.get("BLOCK_M", 1) == 0 and c.block_size[1] % opts.get("BLOCK_N", 1) == 0
    assert [c.name for c in peers.flex_configs(frames=None, lk=text.lk, key_mask=True)] == ["128x128"]
    more = peers.flex_refinements(configs[1], rows_safe=True, experimental=True)
    assert more[0].options == {"BLOCK_M": 64, "PRESCALE_QK": True, "ROWS_GUARANTEED_SAFE": True}
    assert more[1].options == {"BLOCK_M": 64, "USE_TMA": True}
    assert more[2].mode == "max-autotune-no-cudagraphs" and more[2].options is None  # its own tile search
    (plain,) = peers.flex_refinements(configs[0], rows_safe=False, experimental=False)
    assert plain.options == {"PRESCALE_QK": True} and plain.block_size == (128, 128)


def test_key_lengths_refuses_a_mask_with_holes() -> None:
    assert peers.key_lengths(_key_mask((5, 2), 6)).tolist() == [5, 2]
    holes = torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match="prefix"):
        peers.key_lengths(holes)


def test_sdpa_mask_forms() -> None:
    """The additive form is 0 / -inf exactly where the reference is True / False, in the inputs' dtype, with
    16-element aligned rows; SDPA gives the same output with either form (math backend, CPU)."""
    km = _key_mask(LENGTHS, L)
    ref = attention_mask_ref(3, L, L, key_mask=km, frames=FRAMES)
    forms = peers.sdpa_mask_forms(ref, torch.float16)
    assert forms["bool"] is ref
    add = forms["additive"]
    assert add.dtype == torch.float16 and add.stride(-2) % 16 == 0 and add.shape == ref.shape
    assert torch.equal(add == 0, ref) and torch.equal(torch.isneginf(add), ~ref)
    assert peers.sdpa_mask_forms(None, torch.float16) == {"no mask": None}
    assert [c.key for c in peers.sdpa_candidates(ref, torch.float16)] == peers.sdpa_keys(True)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, L, 16, generator=g) for _ in range(3))
    out_add = F.scaled_dot_product_attention(q, k, v, attn_mask=peers.additive_mask(ref, torch.float32))
    assert_close(out_add, F.scaled_dot_product_attention(q, k, v, attn_mask=ref), atol=1e-6, rtol=1e-5,
                 name="additive vs bool")


XFORMERS_CASES = [  # (frames, lq, lk, lengths)
    (FRAMES, L, L, LENGTHS),
    (FRAMES, L, L, None),
    (None, 20, 20, (20, 7, 1)),
    (None, 33, 20, (20, 7, 1)),  # cross-attention to padded text
]


@pytest.mark.parametrize(("frames", "lq", "lk", "lengths"), XFORMERS_CASES,
                         ids=["frames-pad", "frames", "pad", "cross-pad"])
def test_xformers_plan_is_the_reference_mask(frames: int | None, lq: int, lk: int,
                                             lengths: tuple[int, ...] | None) -> None:
    """The block-diagonal segments over packed rows see exactly the reference mask, and the gathers around the
    xformers call give the reference output (a stand-in runs the block-diagonal attention on the CPU, reading the
    segments from the bias object the way xformers does)."""
    batch = 3
    km = None if lengths is None else _key_mask(lengths, lk)
    ref = attention_mask_ref(batch, lq, lk, key_mask=km, frames=frames)
    plan = peers.xformers_plan(batch, lq, lk, frames=frames, lengths=peers.key_lengths(km), device=CPU)
    q_start, kv_start = peers.seqstarts(plan.q_seqlen), peers.seqstarts(plan.kv_seqlen)
    got = peers.plan_mask(plan, q_start, kv_start, batch, lq, lk)
    peers.check_equal("plan", got, ref, batch, lq, lk)
    assert sorted((plan.q_b * lq + plan.q_l).tolist()) == list(range(batch * lq))

    bias = SimpleNamespace(q_seqinfo=SimpleNamespace(seqstart_py=q_start),
                           k_seqinfo=SimpleNamespace(seqstart_py=kv_start))

    def block_diagonal(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, attn_bias: SimpleNamespace):
        allowed = torch.zeros(qp.shape[1], kp.shape[1], dtype=torch.bool)
        starts = zip(attn_bias.q_seqinfo.seqstart_py, attn_bias.q_seqinfo.seqstart_py[1:],
                     attn_bias.k_seqinfo.seqstart_py, attn_bias.k_seqinfo.seqstart_py[1:], strict=False)
        for qs, qe, ks, ke in starts:
            allowed[qs:qe, ks:ke] = True
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qp, kp, vp)), attn_mask=allowed)
        return out.transpose(1, 2)  # (1, Mq, H, D), xformers' layout

    g = torch.Generator().manual_seed(1)
    q = torch.randn(batch, 2, lq, 16, generator=g)
    k, v = (torch.randn(batch, 2, lk, 16, generator=g) for _ in range(2))
    call = peers.xformers_call(SimpleNamespace(memory_efficient_attention=block_diagonal), plan, bias, batch, lq)
    assert_close(call(q, k, v), masked_attention_ref(q, k, v, key_mask=km, frames=frames), atol=1e-5, rtol=1e-5,
                 name="xformers plan")


def test_xformers_plan_check_catches_a_wrong_plan() -> None:
    """Segments that drop a frame's CLS key, or mix two samples, fail the check."""
    km = _key_mask(LENGTHS, L)
    ref = attention_mask_ref(3, L, L, key_mask=km, frames=FRAMES)
    plan = peers.xformers_plan(3, L, L, frames=FRAMES, lengths=peers.key_lengths(km), device=CPU)
    q_start, kv_start = peers.seqstarts(plan.q_seqlen), peers.seqstarts(plan.kv_seqlen)
    no_cls = peers.XformersPlan(plan.q_b, plan.q_l, plan.kv_b, plan.kv_l.clone(), plan.q_seqlen, plan.kv_seqlen)
    no_cls.kv_l[kv_start[1]] = no_cls.kv_l[kv_start[1] + 1]  # frame 0's CLS key replaced by one of its patches
    with pytest.raises(peers.MaskMismatch):
        peers.check_equal("plan", peers.plan_mask(no_cls, q_start, kv_start, 3, L, L), ref, 3, L, L)
    with pytest.raises(peers.MaskMismatch, match="more than one sample"):
        # sample 0's last segment (frame 3) and sample 1's first (its CLS rows) as one
        per_sample = 1 + FRAMES
        peers.plan_mask(plan, [*q_start[:per_sample], *q_start[per_sample + 1:]],
                        [*kv_start[:per_sample], *kv_start[per_sample + 1:]], 3, L, L)


def test_xformers_absent_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without xformers, the report's row says why in one line; xformers' multi-line refusal becomes one line."""
    import builtins

    real_import = builtins.__import__

    def no_xformers(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "xformers":
            raise ModuleNotFoundError("No module named 'xformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_xformers)
    why = peers.xformers_candidate(batch=1, lq=4, lk=4, frames=None, key_mask=None, reference=None, device=CPU)
    assert isinstance(why, str) and "\n" not in why and "xformers not importable" in why and "pip install" in why
    refusal = NotImplementedError(
        "No operator found for `memory_efficient_attention_forward` with inputs:\n     query : shape=(1, 8, 2, 64)\n"
        "`fa3F@0.0.0` is not supported because:\n    requires device with capability == (9, 0)\n"
        "    bf16 is only supported on A100+ GPUs\n`cutlassF-pt` is not supported because:\n    attn_bias type is X")
    line = peers.xformers_refusal(refusal)
    assert line == ("no xformers operator accepts it: fa3F@0.0.0: requires device with capability == (9, 0); "
                    "cutlassF-pt: attn_bias type is X")
