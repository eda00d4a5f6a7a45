"""masked_attention: the Triton kernels (under the interpreter on CPU) against the fp64 reference.

Outputs and dq/dk/dv, fp32 and fp16 (bf16 is wrong under the interpreter: GPU only), every mask kind and the
combinations, odd lengths (1, 7, 77, 197, 325), D in {32, 64, 128}, cross-attention, rows with no visible key.
The interpreter costs ~0.1 s per program launch, so the cases are a chosen subset of the cross product in which
every length, head dim, mask kind and dtype appears; every buffer the launchers allocate is poisoned with NaN.
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels import attention as attn_mod
from scl_kernels._launch import dot_block
from scl_kernels.attention import configs as attn_configs
from scl_kernels.attention import launch as attn_launch
from scl_kernels.attention import op as attn_op
from scl_kernels.reference import attention_mask_ref, frame_block_mask, masked_attention_ref
from tests.utils import ATOL, REL_TOL, assert_close, poison_

GRAD_SLACK = 3.0  # ARCHITECTURE.md: gradients may be 3x looser


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the launchers allocate (outputs, lse, delta, dq/dk/dv) starts as NaN."""
    new_output = attn_launch._new_output
    monkeypatch.setattr(attn_launch, "_new_output", lambda *a, **k: poison_(new_output(*a, **k)))


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

    def __str__(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        masks = [m for m, on in (("key", self.key_mask), (f"frames{self.frames}", self.frames),
                                 (f"attn-{self.attn_mask}", self.attn_mask)) if on]  # fmt: skip
        return f"B{self.b}H{self.h}-{self.lq}x{self.lk}-d{self.d}-{dt}-{'+'.join(masks) or 'nomask'}"


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
    def one(length: int) -> torch.Tensor:
        if case.strided:
            return torch.randn(case.b, length, case.h, case.d, generator=gen).to(case.dtype).transpose(1, 2)
        return torch.randn(case.b, case.h, length, case.d, generator=gen).to(case.dtype)

    return one(case.lq), one(case.lk), one(case.lk)


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
    masks = {"key_mask": key_mask, "frames": case.frames, "attn_mask": attn_mask}
    g = torch.randn(case.b, case.h, case.lq, case.d, generator=gen).to(case.dtype)

    before = _dispatch.calls[("masked_attention", "triton")]
    out, grads = _run(scl_kernels.masked_attention, q, k, v, g, backend="triton", **masks)
    assert _dispatch.calls[("masked_attention", "triton")] == before + 1, "the triton backend did not serve the call"
    ref, ref_grads = _run(masked_attention_ref, q.double(), k.double(), v.double(), g.double(), **masks)
    base, base_grads = _run(masked_attention_ref, q, k, v, g, **masks)  # same-dtype PyTorch: the baseline

    assert out.dtype == case.dtype and out.shape == (case.b, case.h, case.lq, case.d)
    rtol, atol = REL_TOL[case.dtype], ATOL[case.dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, baseline=base, name="out")
    for name, got, want, bl in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads, strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, baseline=bl, name=name)

    # rows with no visible key: exactly zero output and zero dq (never NaN, never the mean of the values)
    mask = attention_mask_ref(case.b, case.lq, case.lk, key_mask=key_mask, frames=case.frames, attn_mask=attn_mask)
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
    tile = 64  # the interpreter's single config has BLOCK_M = BLOCK_N = 64
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
    n_m = -(-70 // 64)
    per_batch = counts[: 3 * 2 * n_m].view(3, 2, n_m)
    for b, n in enumerate(lengths):
        assert (per_batch[b] == -(-n // 64) * 64).all(), (b, per_batch[b].tolist())
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


def test_torch_compile_fullgraph() -> None:
    """One opaque op for dynamo: fullgraph=True compiles (no graph break), forward and backward match eager."""
    torch._dynamo.reset()

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, km: torch.Tensor) -> torch.Tensor:
        return scl_kernels.masked_attention(q, k, v, key_mask=km, frames=None).sum(dim=-1) * 2.0

    q, k, v = (torch.randn(2, 2, 9, 32, requires_grad=True) for _ in range(3))
    km = torch.rand(2, 9) > 0.3
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, km)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    want = f(q, k, v, km)
    want.sum().backward()
    assert_close(out, want, rtol=1e-6, name="compiled out")
    for got, t in zip(grads, (q, k, v), strict=True):
        assert_close(got, t.grad, rtol=1e-6, name="compiled grad")


def test_torch_compile_triton_backend() -> None:
    """The triton backend inside a compiled graph (interpreter on CPU): the op and its backward op stay opaque."""
    torch._dynamo.reset()

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return scl_kernels.masked_attention(q, k, v, backend="triton") * 3.0

    q, k, v = (torch.randn(1, 1, 7, 32, requires_grad=True) for _ in range(3))
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    (dq,) = torch.autograd.grad(out.sum(), q)
    ref = masked_attention_ref(q.double(), k.double(), v.double()) * 3.0
    (ref_dq,) = torch.autograd.grad(ref.sum(), q)
    assert_close(out, ref, rtol=REL_TOL[torch.float32], name="out")
    assert_close(dq, ref_dq, rtol=GRAD_SLACK * REL_TOL[torch.float32], name="dq")


def test_eager_function_equals_the_custom_op(poisoned: None) -> None:
    """Eager calls skip torch.library's dispatch (an autograd.Function over the same forward/backward bodies,
    for host time); compiled graphs use the op. Both give the same output and gradients, dropout's mask included
    (same seed)."""
    q, k, v = (torch.randn(2, 2, 37, 32) for _ in range(3))
    km = torch.rand(2, 37) > 0.3
    g = torch.randn(2, 2, 37, 32)
    seed = torch.tensor(1234)
    args = (km, None, 4, 32**-0.5, 0.25, seed, "triton")  # key mask + frames=4 + dropout

    def via(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = fn(qq, kk, vv)
        out.backward(g)
        return out.detach(), [qq.grad, kk.grad, vv.grad]

    eager = via(lambda a, b, c: attn_op._EagerMaskedAttention.apply(a, b, c, *args))
    op = via(lambda a, b, c: attn_op._masked_attention_op(a, b, c, *args)[0])
    for got, want in zip([eager[0], *eager[1]], [op[0], *op[1]], strict=True):
        assert torch.isfinite(got).all() and torch.equal(got, want)


def test_inference_call_skips_autograd(poisoned: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a gradient to record (no_grad, or inputs that need none) the call runs the forward directly, no
    autograd.Function (half the host time of an evaluation call), and gives the very same output."""
    q, k, v = (torch.randn(2, 2, 37, 32) for _ in range(3))
    km = torch.rand(2, 37) > 0.3
    call = lambda a, b, c: scl_kernels.masked_attention(a, b, c, key_mask=km, frames=None, backend="triton")  # noqa: E731
    with_grad = call(*(t.clone().requires_grad_(True) for t in (q, k, v)))
    assert with_grad.grad_fn is not None

    def no_function(*args: object) -> None:
        raise AssertionError("an inference call went through the autograd.Function")

    monkeypatch.setattr(attn_op._EagerMaskedAttention, "apply", no_function)
    with torch.no_grad():
        no_grad = call(*(t.clone().requires_grad_(True) for t in (q, k, v)))
    plain = call(q, k, v)
    for out in (no_grad, plain):
        assert out.grad_fn is None and torch.isfinite(out).all() and torch.equal(out, with_grad.detach())


def test_backend_choice() -> None:
    q, k, v = (torch.randn(1, 1, 5, 32) for _ in range(3))
    before = dict(_dispatch.calls)
    scl_kernels.masked_attention(q, k, v)  # CPU default: the reference
    with scl_kernels.use_backend("triton"):
        scl_kernels.masked_attention(q, k, v)
    assert _dispatch.calls[("masked_attention", "reference")] == before.get(("masked_attention", "reference"), 0) + 1
    assert _dispatch.calls[("masked_attention", "triton")] == before.get(("masked_attention", "triton"), 0) + 1
    with pytest.raises(ValueError, match="no native"):
        scl_kernels.masked_attention(q, k, v, backend="native")


def test_dropout_on_reference_backend() -> None:
    """dropout_p > 0 on the reference backend: F.dropout on the dense probabilities, torch's generator."""
    q, k, v = (torch.randn(1, 2, 16, 32) for _ in range(3))
    torch.manual_seed(1)
    a = scl_kernels.masked_attention(q, k, v, dropout_p=0.5, backend="reference")
    torch.manual_seed(1)
    b = masked_attention_ref(q, k, v, dropout_p=0.5)
    assert_close(a, b, rtol=1e-6)
    assert not torch.allclose(a, masked_attention_ref(q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_dropout_matches_reference_with_the_same_mask(dtype: torch.dtype, poisoned: None) -> None:
    """Fused dropout: out and dq/dk/dv equal the dense fp64 computation with the kernel's own keep mask
    (``dropout_keep_mask``), with key padding and a frame pattern; the mask keeps ~1 - p; seeds come from torch's
    generator (same torch seed, same result; next call, new mask)."""
    b, h, frames, length, d, p = 2, 1, 3, 3 * 11, 32, 0.3
    q, k, v = (torch.randn(b, h, length, d).to(dtype) for _ in range(3))
    km = torch.rand(b, length) > 0.2
    g = torch.randn(b, h, length, d).to(dtype)
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))  # what masked_attention draws after manual_seed
    torch.manual_seed(7)
    out, grads = _run(scl_kernels.masked_attention, q, k, v, g, key_mask=km, frames=frames, dropout_p=p,
                      backend="triton")  # fmt: skip
    keep = attn_mod.dropout_keep_mask(seed, p, (b, h, length, length))
    many = attn_mod.dropout_keep_mask(seed, p, (1, 1, 256, 256)).float().mean().item()
    assert abs(many - (1 - p)) < 0.01, many  # 65536 draws: 5 standard deviations

    def dense(q, k, v):  # noqa: ANN001, ANN202
        scores = q @ k.transpose(-1, -2) * d**-0.5
        mask = attention_mask_ref(b, length, length, key_mask=km, frames=frames)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return (probs * keep / (1 - p)) @ v

    ref, ref_grads = _run(dense, q.double(), k.double(), v.double(), g.double())
    rtol, atol = REL_TOL[dtype], ATOL[dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, name="out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, name=name)
    torch.manual_seed(7)
    again = scl_kernels.masked_attention(q, k, v, key_mask=km, frames=frames, dropout_p=p, backend="triton")
    assert torch.equal(again, out), "the same torch seed must give the same dropout mask"
    other = scl_kernels.masked_attention(q, k, v, key_mask=km, frames=frames, dropout_p=p, backend="triton")
    assert not torch.equal(other, out), "the next call must draw a new mask"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 256}, "head dims up to 128"),
        ({"dtype": torch.float64}, "supports"),
        ({"lk": 9, "frames": 2}, "frames is for self-attention"),
        ({"frames": 4}, "multiple of frames"),
        ({"key_mask": torch.ones(1, 3, dtype=torch.bool)}, "key_mask must be bool"),
        ({"key_mask": torch.ones(1, 10)}, "key_mask must be bool"),
        ({"attn_mask": torch.ones(10, 10)}, "attn_mask must be bool"),
        ({"attn_mask": torch.ones(3, 10, 10, dtype=torch.bool)}, "must broadcast"),
        ({"dropout_p": 1.0}, "dropout_p must be in"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, match: str) -> None:
    d, dtype, lk = kwargs.pop("d", 32), kwargs.pop("dtype", torch.float32), kwargs.pop("lk", 10)
    q = torch.randn(1, 2, 10, d, dtype=dtype)
    k = v = torch.randn(1, 2, lk, d, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        scl_kernels.masked_attention(q, k, v, backend="triton", **kwargs)


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="must be"):
        scl_kernels.masked_attention(torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16))
    with pytest.raises(ValueError, match=r"\(B, H, L, D\)"):
        scl_kernels.masked_attention(torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32))


# ------------------------------------------------------------------------------------------------------------
# the model's dispatch point (scl_fast.model.attention): backend "triton" in the encoders vs "eager"
# ------------------------------------------------------------------------------------------------------------


def test_model_encoders_triton_matches_eager() -> None:
    """A tiny vision encoder on 3-frame videos (frames mask) and a tiny text encoder on padded text (key mask):
    the same module instances through backend "triton" (interpreter) and "eager" give the same outputs and
    parameter gradients."""
    from scl_fast.model.attention import set_attn_backend
    from scl_fast.model.config import TextConfig, VisionConfig
    from scl_fast.model.text import TextEncoder
    from scl_fast.model.vision import VisionEncoder

    vision = VisionEncoder(VisionConfig(image_size=32, patch_size=8, width=64, layers=1, heads=2))
    text = TextEncoder(TextConfig(vocab_size=200, width=64, layers=1, heads=2, intermediate=128, max_positions=64))
    text.eval()  # attention dropout off: the triton kernel does not fuse it
    pixels = torch.randn(2, 3, 3, 32, 32)  # 3 frames x (1 + 16) tokens = 51
    ids = torch.randint(1, 200, (3, 13))
    mask = torch.ones(3, 13, dtype=torch.bool)
    mask[0, 9:] = False
    mask[2, 4:] = False

    def run(backend: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outs, grads = [], []
        for model, args in ((vision, (pixels,)), (text, (ids, mask))):
            set_attn_backend(model, backend)
            model.zero_grad()
            out = model(*args)
            (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
            outs.append(out.detach())
            grads += [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return outs, grads

    before = _dispatch.calls[("masked_attention", "triton")]
    outs, grads = run("triton")
    assert _dispatch.calls[("masked_attention", "triton")] == before + 2, "each encoder layer went through triton"
    want_outs, want_grads = run("eager")
    for name, got, want in zip(("vision", "text"), outs, want_outs, strict=True):
        assert_close(got, want, rtol=1e-5, name=name)
    assert len(grads) == len(want_grads)
    for i, (got, want) in enumerate(zip(grads, want_grads, strict=True)):
        if want.norm() < 1e-6:  # the key bias: softmax ignores a per-row constant, its gradient is 0 + rounding
            assert got.abs().max() < 1e-6, f"grad {i}: {got.abs().max()}"
        else:
            assert_close(got, want, rtol=3e-5, name=f"grad {i}")


def test_model_triton_with_dropout_stays_on_triton() -> None:
    """Attention dropout (text and fusion encoders in training) is fused: the triton backend serves it."""
    from scl_fast.model.attention import attention

    q, k, v = (torch.randn(1, 2, 9, 32) for _ in range(3))
    before = _dispatch.calls[("masked_attention", "triton")]
    out = attention(q, k, v, backend="triton", dropout_p=0.5, key_mask=torch.rand(1, 9) > 0.2)
    assert _dispatch.calls[("masked_attention", "triton")] == before + 1 and torch.isfinite(out).all()


@pytest.mark.parametrize(("backend", "package"), [("flash_attn", "flash-attn"), ("xformers", "xformers")])
def test_missing_optional_backend_names_the_package(backend: str, package: str) -> None:
    import importlib.util

    from scl_fast.model.attention import attention

    if importlib.util.find_spec(backend) is not None:
        pytest.skip(f"{backend} is installed here")
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(ImportError, match=f"pip install {package}"):
        attention(q, q, q, backend=backend)


def test_reference_backend_backward_matches_autograd() -> None:
    """The reference backend's backward op is written out (no autograd inside a custom op): check it against
    autograd through the dense reference in fp64, with every mask kind and an empty row."""
    q, k, v = (torch.randn(2, 2, 12, 32, dtype=torch.float64) for _ in range(3))
    km = torch.rand(2, 12) > 0.3
    am = torch.rand(12, 12) > 0.3
    am[3] = False
    g = torch.randn(2, 2, 12, 32, dtype=torch.float64)
    masks = {"key_mask": km, "frames": 3, "attn_mask": am}
    out, grads = _run(scl_kernels.masked_attention, q, k, v, g, backend="reference", **masks)
    ref, ref_grads = _run(masked_attention_ref, q, k, v, g, **masks)
    assert_close(out, ref, rtol=1e-12, name="out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(got, want, rtol=1e-10, name=name)


@pytest.mark.slow  # dynamo traces the op several times: ~15-25 s on a busy 2-core machine
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_opcheck(backend: str) -> None:
    """torch.library's own checks of the op: schema, fake (meta) outputs matching real ones in shape and strides,
    autograd registration, and AOT dispatch with dynamic shapes (what torch.compile relies on)."""
    q = torch.randn(1, 7, 2, 32).transpose(1, 2).requires_grad_(True)  # (B, H, L, D) view of a (B, L, H, D) tensor
    k, v = (torch.randn(1, 2, 5, 32, requires_grad=True) for _ in range(2))
    km = torch.rand(1, 5) > 0.3
    args = (q, k, v, km, None, None, 0.17, 0.0, None, backend)
    torch.library.opcheck(torch.ops.scl.masked_attention.default, args)
    if backend == "triton":  # fused dropout: the seed tensor goes through the op
        seed = torch.tensor(5, dtype=torch.int64)
        torch.library.opcheck(torch.ops.scl.masked_attention.default, (*args[:7], 0.2, seed, backend))


def test_gpu_config_pruning() -> None:
    """The autotuner's pruning (GPU only, so exercised here directly): never empty, keeps tiles that fit shared
    memory and registers, drops 128-row tiles for 50-token text, and keeps each dtype to its own list (the
    tensor-core tiles for 16-bit inputs, the FMA tiles for fp32)."""
    for kind in ("fwd", "dkdv", "dq"):
        prune, configs = attn_configs._make_prune(kind), attn_configs._all_configs(kind)
        assert len(set(map(attn_configs._tile, configs))) == len(configs), kind  # each tile once
        for dtype, d in ((torch.bfloat16, 64), (torch.float16, 128), (torch.float32, 128), (torch.float32, 32)):
            q = torch.empty(0, dtype=dtype)
            own = set(map(attn_configs._tile, attn_configs._CONFIG_LISTS[kind][dtype == torch.float32]))
            long_ = prune(configs, {"Q_ptr": q, "Lq": 4096, "Lk": 4096}, BLOCK_D=dot_block(d))
            assert long_ and set(map(attn_configs._tile, long_)) <= own, (kind, dtype, d)
            for c in long_[:-1] if len(long_) > 1 else []:
                assert attn_configs._smem_estimate(c, kind, dot_block(d), q.element_size()) <= 160 * 1024
            short = prune(configs, {"Q_ptr": q, "Lq": 50, "Lk": 50}, BLOCK_D=dot_block(d))
            assert short and all(c.kwargs["BLOCK_M"] <= 64 and c.kwargs["BLOCK_N"] <= 64 for c in short), short
    # the production case keeps several candidates to tune over
    bf16 = torch.empty(0, dtype=torch.bfloat16)
    fwd = attn_configs._make_prune("fwd")(attn_configs._all_configs("fwd"), {"Q_ptr": bf16, "Lq": 325, "Lk": 325},
                                          BLOCK_D=64)  # fmt: skip
    assert len(fwd) > 2
    # one config each under SCL_KERNELS_AUTOTUNE=0: the dtype's default, as the compile report lists it (the first
    # config of the dtype's own list that fits sm_80's budget)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCL_KERNELS_AUTOTUNE", "0")
        for kind, lists in attn_configs._CONFIG_LISTS.items():
            for dtype, d in ((torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float32, 64), (torch.float32, 128)):
                q, elt = torch.empty(0, dtype=dtype), dtype.itemsize
                (first,) = attn_configs._make_prune(kind)(attn_configs._all_configs(kind),
                                                          {"Q_ptr": q, "Lq": 788, "Lk": 788}, BLOCK_D=d)  # fmt: skip
                default = attn_configs._fitting(lists[elt == 4], kind, d, elt, attn_configs._reg_budget(False, elt))[0]
                assert attn_configs._tile(first) == attn_configs._tile(default), (kind, dtype, d)
    # fp32 at D=128: the compile sweep's spilling forward tiles (72 on the estimate) are pruned, the 8-warp ones kept
    fp32 = attn_configs._fitting(attn_configs.FWD_FP32_CONFIGS, "fwd", 128, 4, attn_configs._reg_budget(True, 4))
    assert [attn_configs._tile(c) for c in fp32] == [(32, 32, 8, 2), (32, 16, 8, 2)]
    # a Hopper also tunes over the tutorial's 4-warp 128-key dK/dV tile in 16-bit; fp32 has one budget for both
    tile = [c for c in attn_configs.DKDV_CONFIGS if (c.kwargs["BLOCK_N"], c.num_warps) == (128, 4)]
    hopper = attn_configs._fitting(attn_configs.DKDV_CONFIGS, "dkdv", 64, 2, attn_configs._reg_budget(True, 2))
    ampere = attn_configs._fitting(attn_configs.DKDV_CONFIGS, "dkdv", 64, 2, attn_configs._reg_budget(False, 2))
    assert tile and all(c in hopper and c not in ampere for c in tile) and set(ampere) <= set(hopper)
    for kind, (_, configs) in attn_configs._CONFIG_LISTS.items():
        for d in (32, 64, 128):
            fits = [attn_configs._fitting(configs, kind, d, 4, attn_configs._reg_budget(h, 4)) for h in (True, False)]
            assert fits[0] == fits[1], (kind, d)


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: object) -> None:
    import importlib.machinery
    import sys
    import types

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attrs.items():
        setattr(mod, key, value)
    monkeypatch.setitem(sys.modules, name, mod)


def _plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, bias=None) -> torch.Tensor:  # noqa: ANN001
    """softmax(q k^T * scale + bias) v over (..., L, D) tensors."""
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    return torch.softmax(s if bias is None else s + bias, dim=-1) @ v


def test_flash_attn_varlen_packing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flash_attn backend's key packing (cu_seqlens, keys anywhere in the row, a sample with no key) against
    eager, through a stand-in flash_attn module with flash-attn's calling convention (not installed here)."""

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None):  # noqa: ANN001, ANN202
        assert q.dim() == 3 and cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32
        assert max_k == max(int(cu_k[i + 1] - cu_k[i]) for i in range(len(cu_k) - 1)) or max_k == 1
        out = torch.empty_like(q)
        for i in range(len(cu_q) - 1):
            qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
            if cu_k[i + 1] == cu_k[i]:
                out[qs] = float("nan")  # what a kernel may leave for a sample with no key
                continue
            out[qs] = _plain(q[qs].transpose(0, 1), k[ks].transpose(0, 1), v[ks].transpose(0, 1),
                             softmax_scale).transpose(0, 1)  # fmt: skip
        return out

    def dense(q, k, v, dropout_p=0.0, softmax_scale=None):  # noqa: ANN001, ANN202
        return _plain(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale).transpose(1, 2)

    _fake_module(monkeypatch, "flash_attn", flash_attn_func=dense, flash_attn_varlen_func=varlen)
    from scl_fast.model.attention import attention

    q = torch.randn(3, 2, 9, 32)
    k, v = torch.randn(3, 2, 11, 32), torch.randn(3, 2, 11, 32)
    km = torch.rand(3, 11) > 0.4
    km[0, 3] = True
    km[1] = False  # no real key: zeros, not NaN
    got = attention(q, k, v, backend="flash_attn", key_mask=km)
    assert_close(got, masked_attention_ref(q, k, v, key_mask=km), rtol=1e-5, name="varlen")
    assert_close(attention(q, k, v, backend="flash_attn"), masked_attention_ref(q, k, v), rtol=1e-5, name="dense")
    with pytest.raises(ValueError, match="frame-block"):
        attention(q, q, q, backend="flash_attn", frames=3)


def test_xformers_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """The xformers backend's additive bias (frames and key padding, last dim padded for alignment) against
    eager, through a stand-in xformers.ops with memory_efficient_attention's convention (not installed here)."""

    def mea(q, k, v, attn_bias=None, p=0.0, scale=None):  # noqa: ANN001, ANN202
        assert attn_bias is None or attn_bias.shape == (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        out = _plain(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, attn_bias)
        return out.transpose(1, 2)

    _fake_module(monkeypatch, "xformers")
    _fake_module(monkeypatch, "xformers.ops", memory_efficient_attention=mea)
    from scl_fast.model.attention import attention

    x = torch.randn(2, 2, 3 * 7, 32)
    km = torch.rand(2, 21) > 0.3
    km[:, :3] = True
    got = attention(x, x, x, backend="xformers", key_mask=km, frames=3)
    assert_close(got, masked_attention_ref(x, x, x, key_mask=km, frames=3), rtol=1e-5, name="xformers")
