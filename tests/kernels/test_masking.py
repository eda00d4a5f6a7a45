"""random_masking, mlm_mask and scl_text_mask: every backend against the reference on the same random keys.

The Triton kernels run under the interpreter on CPU (fp32 and fp16; bf16 only on a GPU). Buffers the launchers
allocate with torch.empty / empty_like are poisoned (NaN, or -2^30 for integers) so an element a kernel forgets to
write fails. Statistics of the generator-driven draws are in test_masking_stats.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels.masking import keep_count
from scl_kernels.reference import (
    mlm_mask_keys,
    mlm_mask_ref,
    random_masking_backward_ref,
    random_masking_ref,
    scl_text_mask_ref,
)
from tests.utils import ATOL, REL_TOL, assert_close, poison_

BACKENDS = ("native", "triton")
DTYPES = (torch.float32, torch.float16)


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every buffer allocated with torch.empty / empty_like during the test with NaN (or -2^30)."""
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison_(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison_(empty_like(*a, **k)))


# --------------------------------------------------------------------------------------------------------------
# random_masking
# --------------------------------------------------------------------------------------------------------------


def _masking_run(backend, x, keep_ratio, frames, pos, noise, g):
    """(kept, ids, grad_x, grad_pos) of one forward + backward with upstream gradient g."""
    x = x.detach().clone().requires_grad_(True)
    pos = pos.detach().clone().requires_grad_(True) if pos is not None else None
    kept, ids = scl_kernels.random_masking(x, keep_ratio, frames=frames, pos=pos, noise=noise, backend=backend)
    kept.backward(g)
    return kept.detach(), ids, x.grad, (pos.grad if pos is not None else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "b, p, d, frames, keep_ratio, with_pos",
    [
        (2, 1, 32, 1, 1.0, True),  # P = 1
        (4, 16, 128, 1, 0.2, True),  # the demo preset: 64 px / 16 = 16 patches, width 128, keep 3
        (2, 16, 128, 4, 0.2, True),  # the demo's 4-frame videos
        (2, 196, 384, 1, 0.2, True),  # ViT-B/16 at 224
        (1, 324, 768, 1, 0.2, True),  # ViT-B/16 at 288, SCL's keep ratio
        (3, 324, 24, 4, 0.2, True),  # the paper's grid, 4 frames: keep 64 in four row tiles of every frame
        (2, 196, 32, 4, 0.2, True),  # video: 4 frames share the subset (keep 39: a ragged last tile)
        (3, 7, 32, 4, 0.5, False),
        (2, 13, 48, 1, 0.75, False),
    ],
)
def test_random_masking_matches_reference(poisoned, backend, dtype, b, p, d, frames, keep_ratio, with_pos):
    x = torch.randn(b, frames * p, d, dtype=dtype)
    pos = torch.randn(p, d, dtype=dtype) if with_pos else None
    noise = torch.rand(b, p)
    keep = keep_count(p, keep_ratio)
    before = _dispatch.calls[("random_masking", backend)]
    g = torch.randn(b, frames * keep, d, dtype=dtype)
    kept, ids, gx, gp = _masking_run(backend, x, keep_ratio, frames, pos, noise, g)
    assert _dispatch.calls[("random_masking", backend)] == before + 1, f"the {backend} kernel did not run"

    pos64 = pos.double() if pos is not None else None
    ref, ref_ids = random_masking_ref(x.double(), noise, keep, frames=frames, pos=pos64, upcast=True)
    base, _ = random_masking_ref(x, noise, keep, frames=frames, pos=pos)
    assert ids.dtype == torch.int64 and ids.shape == (b, keep)
    assert torch.equal(ids, ref_ids), "kept subsets differ from the reference on the same keys"
    assert kept.dtype == dtype and kept.shape == (b, frames * keep, d)
    assert_close(kept, ref, rtol=REL_TOL[dtype], atol=ATOL[dtype], baseline=base, name="kept")
    if pos is None:
        assert torch.equal(kept, base), "without pos the kept tokens are copies"

    ref_gx, ref_gp = random_masking_backward_ref(g.double(), ref_ids, p, frames=frames, with_pos=with_pos)
    assert torch.equal(gx, ref_gx.to(dtype)), "grad_x is a scatter of copies: it must be exact"
    if with_pos:
        _, base_gp = random_masking_backward_ref(g, ref_ids, p, frames=frames, with_pos=True)
        assert_close(gp, ref_gp, rtol=3 * REL_TOL[dtype], atol=ATOL[dtype], baseline=base_gp, name="grad_pos")


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_backward_deterministic(backend):
    x = torch.randn(4, 2 * 50, 32, requires_grad=True)
    pos = torch.randn(50, 32, requires_grad=True)
    noise = torch.rand(4, 50)
    grads = []
    for _ in range(2):
        kept, _ = scl_kernels.random_masking(x, 0.5, frames=2, pos=pos, noise=noise, backend=backend)
        gx, gp = torch.autograd.grad(kept, (x, pos), torch.ones_like(kept) * 0.1 + torch.arange(kept.shape[1])[:, None])
        grads.append((gx, gp))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_random_masking_ties_negative_and_signed_zero_keys(backend):
    # few distinct keys: most positions tie, and the lower index must win (the stable-argsort rule)
    b, p, d = 5, 37, 8
    noise = torch.randint(-2, 3, (b, p)).float() / 2
    noise[0, :5] = torch.tensor([0.0, -0.0, 0.0, -0.0, -1.0])
    x = torch.randn(b, p, d)
    kept, ids = scl_kernels.random_masking(x, 0.3, noise=noise, backend=backend)
    order = sorted(range(p), key=lambda i: (float(noise[0, i]), i))  # Python's sort is stable; -0.0 == 0.0
    assert ids[0].tolist() == sorted(order[: keep_count(p, 0.3)])
    ref, ref_ids = random_masking_ref(x, noise, keep_count(p, 0.3))
    assert torch.equal(ids, ref_ids) and torch.equal(kept, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_fp16_keys_and_noncontiguous_inputs(backend):
    b, p, d = 3, 29, 40
    x = torch.randn(b, d, p).transpose(1, 2)  # (B, P, D), not contiguous
    pos = torch.randn(d, p).t()
    noise = torch.rand(b, p).half()
    kept, ids = scl_kernels.random_masking(x, 0.4, pos=pos, noise=noise, backend=backend)
    ref, ref_ids = random_masking_ref(x, noise, keep_count(p, 0.4), pos=pos)
    assert torch.equal(ids, ref_ids)
    assert_close(kept, ref, rtol=REL_TOL[torch.float32], name="kept")


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_random_masking_keep_zero(backend):
    # int(1 * 0.5) = 0 positions: empty outputs, zero gradients
    x = torch.randn(2, 3, 16, requires_grad=True)
    pos = torch.randn(1, 16, requires_grad=True)
    kept, ids = scl_kernels.random_masking(x, 0.5, frames=3, pos=pos, backend=backend)
    assert kept.shape == (2, 0, 16) and ids.shape == (2, 0)
    kept.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(pos.grad, torch.zeros_like(pos))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_grad_only_where_needed(backend):
    x = torch.randn(2, 20, 16, requires_grad=True)
    pos = torch.randn(20, 16)  # no gradient wanted
    kept, _ = scl_kernels.random_masking(x, 0.5, pos=pos, backend=backend)
    kept.sum().backward()
    assert x.grad is not None and pos.grad is None
    x2 = torch.randn(2, 20, 16)
    pos2 = torch.randn(20, 16, requires_grad=True)
    kept, ids = scl_kernels.random_masking(x2, 0.5, pos=pos2, backend=backend)
    kept.sum().backward()
    counts = torch.zeros(20).index_add_(0, ids.flatten(), torch.ones(ids.numel()))
    assert torch.equal(pos2.grad, counts[:, None].expand(20, 16))


def test_random_masking_native_is_the_cpu_default():
    before = dict(_dispatch.calls)
    kept, ids = scl_kernels.random_masking(torch.randn(2, 8, 4), 0.5)
    assert _dispatch.calls[("random_masking", "native")] == before.get(("random_masking", "native"), 0) + 1
    assert _dispatch.calls[("random_masking", "reference")] == before.get(("random_masking", "reference"), 0)
    assert kept.shape == (2, 4, 4) and ids.shape == (2, 4)
    with scl_kernels.use_backend("reference"):
        scl_kernels.random_masking(torch.randn(2, 8, 4), 0.5)
    assert _dispatch.calls[("random_masking", "reference")] == before.get(("random_masking", "reference"), 0) + 1
    # float64 runs on the C++ kernel too
    x = torch.randn(3, 10, 5, dtype=torch.float64)
    noise = torch.rand(3, 10, dtype=torch.float64)
    kept, ids = scl_kernels.random_masking(x, 0.3, noise=noise)
    ref, ref_ids = random_masking_ref(x, noise, 3)
    assert torch.equal(ids, ref_ids) and torch.equal(kept, ref)


def test_readme_command():
    """The README's one-liner, in a fresh interpreter (no TRITON_INTERPRET: the plain user's CPU path)."""
    code = "import scl_kernels, torch; print(scl_kernels.random_masking(torch.randn(2, 8, 4), 0.5)[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tensor([["), out.stdout


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_random_masking_generator_reproducible(backend):
    x = torch.randn(3, 2 * 30, 8)
    runs = [
        scl_kernels.random_masking(x, 0.4, frames=2, generator=torch.Generator().manual_seed(7), backend=backend)
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    other = scl_kernels.random_masking(x, 0.4, frames=2, generator=torch.Generator().manual_seed(8), backend=backend)
    assert not torch.equal(runs[0][1], other[1])


def test_model_ops_keep_ratio_round_trip():
    """scl_fast's call passes keep / P as the ratio; 64 / 324 * 324 < 64 in floating point must still keep 64."""
    from scl_fast.model import ops

    x, pos, noise = torch.randn(2, 324, 16), torch.randn(324, 16), torch.rand(2, 324)
    for keep in (64, 65, 1, 324):
        kept = ops.random_masking(x, noise, keep, frames=1, pos=pos)
        assert torch.equal(kept, random_masking_ref(x, noise, keep, pos=pos)[0])


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_random_masking_opcheck(backend):
    """Schema, fake-tensor (torch.compile) and autograd registration of the custom op."""
    x = torch.randn(2, 2 * 9, 16, requires_grad=True)
    pos = torch.randn(9, 16, requires_grad=True)
    args = (x, torch.rand(2, 9), None, 4, 2, pos, backend)
    torch.library.opcheck(torch.ops.scl.random_masking.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_random_masking_compiles_without_graph_break():
    # backend named: resolving "auto" reads a ContextVar, which dynamo cannot trace (a graph break in _dispatch)
    def f(x, pos, noise):
        kept, _ = scl_kernels.random_masking(x, 0.5, pos=pos, noise=noise, backend="native")
        return kept * 2

    x, pos, noise = torch.randn(2, 10, 8), torch.randn(10, 8), torch.rand(2, 10)
    out = torch.compile(f, backend="eager", fullgraph=True)(x, pos, noise)
    assert torch.equal(out, random_masking_ref(x, noise, 5, pos=pos)[0] * 2)


def test_random_masking_bad_input():
    x = torch.randn(2, 12, 4)
    for ratio in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep_ratio"):
            scl_kernels.random_masking(x, ratio)
    with pytest.raises(ValueError, match="x must be"):
        scl_kernels.random_masking(torch.randn(12, 4), 0.5)
    with pytest.raises(ValueError, match="floating"):
        scl_kernels.random_masking(torch.ones(2, 12, 4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="frames"):
        scl_kernels.random_masking(x, 0.5, frames=5)
    with pytest.raises(ValueError, match="frames"):
        scl_kernels.random_masking(x, 0.5, frames=0)
    with pytest.raises(ValueError, match="pos must be"):
        scl_kernels.random_masking(x, 0.5, pos=torch.randn(11, 4))
    with pytest.raises(ValueError, match="pos must match"):
        scl_kernels.random_masking(x, 0.5, pos=torch.randn(12, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise must be"):
        scl_kernels.random_masking(x, 0.5, noise=torch.rand(2, 11))
    with pytest.raises(ValueError, match="noise must be"):
        scl_kernels.random_masking(x, 0.5, noise=torch.ones(2, 12, dtype=torch.int64))
    with pytest.raises(ValueError, match="backend"):
        scl_kernels.random_masking(x, 0.5, backend="cuda")
    with pytest.raises(ValueError, match="triton backend takes"):
        scl_kernels.random_masking(x.double(), 0.5, backend="triton")
    with pytest.raises(ValueError, match="at most"):
        scl_kernels.random_masking(torch.randn(1, 1025, 2), 0.5)


# --------------------------------------------------------------------------------------------------------------
# text masks
# --------------------------------------------------------------------------------------------------------------


def _text_batch(b: int, length: int, vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with [CLS] at 0, [SEP] at the row's end, padding after it; row lengths vary (one all-special)."""
    ids = torch.randint(5, vocab, (b, length))
    special = torch.zeros(b, length, dtype=torch.bool)
    lengths = torch.randint(1, length + 1, (b,))
    lengths[0] = length
    for i in range(b):
        special[i, lengths[i] - 1 :] = True
        special[i, 0] = True
    if b > 2:
        special[2] = True  # a row with no real token
    return ids, special


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.int64, torch.int32), ids=str)
@pytest.mark.parametrize("b, length", [(1, 1), (3, 7), (4, 77), (2, 50)])
def test_mlm_mask_matches_reference(poisoned, backend, dtype, b, length):
    ids, special = _text_batch(b, length)
    ids = ids.to(dtype)
    keys = mlm_mask_keys(ids.shape, 1000)
    for p, replace in ((0.15, (0.8, 0.1, 0.1)), (0.5, (0.3, 0.3, 0.4)), (1.0, (0.0, 1.0, 0.0))):
        out, labels = scl_kernels.mlm_mask(ids, special, p=p, replace=replace, vocab_size=1000, mask_id=3, keys=keys,
                                           backend=backend)
        ref, ref_labels = mlm_mask_ref(ids, special, p=p, replace=replace, vocab_size=1000, mask_id=3, keys=keys)
        assert out.dtype == dtype and labels.dtype == dtype
        assert torch.equal(out, ref) and torch.equal(labels, ref_labels)


def test_text_masks_cpu_default_is_native_and_follows_generator():
    """On CPU the C++ kernels serve the default call and draw exactly what the reference draws."""
    ids, special = _text_batch(4, 30)
    before = dict(_dispatch.calls)
    out = scl_kernels.mlm_mask(ids, special, vocab_size=500, mask_id=3, generator=torch.Generator().manual_seed(3))
    ref = mlm_mask_ref(ids, special, vocab_size=500, mask_id=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    out = scl_kernels.scl_text_mask(ids, special, mask_id=3, generator=torch.Generator().manual_seed(4))
    ref = scl_text_mask_ref(ids, special, mask_id=3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, ref)
    for op in ("mlm_mask", "scl_text_mask"):
        assert _dispatch.calls[(op, "native")] == before.get((op, "native"), 0) + 1
        assert _dispatch.calls[(op, "reference")] == before.get((op, "reference"), 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.int64, torch.int32), ids=str)
@pytest.mark.parametrize("b, length", [(1, 1), (3, 7), (5, 77), (4, 50)])
def test_scl_text_mask_matches_reference(poisoned, backend, dtype, b, length):
    ids, special = _text_batch(b, length)
    ids = ids.to(dtype)
    keys = (torch.rand(b, length) * 8).floor() / 8  # 8 distinct values: many ties, the lower index wins
    for ratio in (0.4, 0.5, 0.7, 0.15, 1.0, 0.0):  # 0.7 * 5 = 3.5 in float64 (-> 4), 3.4999998 in fp32
        out = scl_kernels.scl_text_mask(ids, special, ratio=ratio, mask_id=3, keys=keys, backend=backend)
        ref = scl_text_mask_ref(ids, special, ratio=ratio, mask_id=3, keys=keys)
        assert out.dtype == dtype
        assert torch.equal(out, ref), f"ratio {ratio}"


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_text_masks_no_host_sync(monkeypatch: pytest.MonkeyPatch, backend):
    """The generator-driven path reads nothing back to the host: .item() / .tolist() are never called."""
    ids, special = _text_batch(3, 20)

    def boom(*args, **kwargs):
        raise AssertionError("host sync")

    monkeypatch.setattr(torch.Tensor, "item", boom)
    monkeypatch.setattr(torch.Tensor, "tolist", boom)
    gen = torch.Generator().manual_seed(0)
    scl_kernels.mlm_mask(ids, special, vocab_size=100, mask_id=3, generator=gen, backend=backend)
    scl_kernels.scl_text_mask(ids, special, mask_id=3, generator=gen, backend=backend)


def test_text_masks_bad_input():
    ids, special = _text_batch(2, 10)
    with pytest.raises(ValueError, match="special_mask"):
        scl_kernels.mlm_mask(ids, special.long(), vocab_size=10, mask_id=3)
    with pytest.raises(ValueError, match="special_mask"):
        scl_kernels.scl_text_mask(ids, special[:, :5], mask_id=3)
    with pytest.raises(ValueError, match="ids must be int"):
        scl_kernels.mlm_mask(ids.float(), special, vocab_size=10, mask_id=3)
    with pytest.raises(ValueError, match="replace"):
        scl_kernels.mlm_mask(ids, special, replace=(0.8, 0.1, 0.2), vocab_size=10, mask_id=3)
    with pytest.raises(ValueError, match="p must be"):
        scl_kernels.mlm_mask(ids, special, p=1.5, vocab_size=10, mask_id=3)
    with pytest.raises(ValueError, match="vocab_size"):
        scl_kernels.mlm_mask(ids, special, vocab_size=0, mask_id=3)
    with pytest.raises(ValueError, match="keys"):
        scl_kernels.mlm_mask(ids, special, vocab_size=10, mask_id=3, keys=(torch.rand(2, 10),) * 2)
    with pytest.raises(ValueError, match="ratio"):
        scl_kernels.scl_text_mask(ids, special, ratio=1.2, mask_id=3)
    with pytest.raises(ValueError, match="ids must be"):
        scl_kernels.scl_text_mask(ids.flatten(), special.flatten(), mask_id=3)
    with pytest.raises(ValueError, match="keys"):
        scl_kernels.scl_text_mask(ids, special, mask_id=3, keys=torch.rand(2, 9))
    with pytest.raises(ValueError, match="backend"):
        scl_kernels.scl_text_mask(ids, special, mask_id=3, backend="gpu")


def test_compile_specs_cover_every_kernel():
    """tests/kernels/test_compile.py compiles COMPILE_SPECS for sm_80/sm_90: every launched kernel must be there."""
    from scl_kernels import masking
    from scl_kernels._compile import collect_specs

    specs = collect_specs(["scl_kernels.masking"])
    covered = {s.kernel for s in specs}
    kernels = [getattr(masking, n) for n in dir(masking) if n.startswith("_") and n.endswith("_kernel")]
    assert kernels and all(k in covered for k in kernels)
    assert sum(s.default for s in specs) >= len(kernels)


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_text_mask_opcheck(backend):
    """Schema and fake-tensor registration of the two text-mask ops (no autograd: integer outputs)."""
    ids, special = _text_batch(3, 9)
    choose, how, rand_tok = mlm_mask_keys(ids.shape, 50)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.scl.mlm_mask.default,
                          (ids, special, choose, how, rand_tok, None, 0.3, [0.8, 0.1, 0.1], 50, 3, backend),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.scl.scl_text_mask.default,
                          (ids, special, torch.rand(3, 9), None, 0.4, 3, backend), test_utils=utils)
