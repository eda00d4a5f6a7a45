"""What users dropping masked_attention into other code expect, beyond the numerics of ``test_attention.py``'s
cases: is_causal aligned as SDPA's (top-left) and skipping the tiles past the diagonal, grouped K/V heads read in
place (no copies), and the returned log-sum-exp with a correct gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scl_kernels
from scl_kernels.attention import launch as attn_launch
from scl_kernels.reference import masked_attention_ref
from tests.kernels.test_attention import GRAD_SLACK, TILE
from tests.utils import ATOL, REL_TOL, assert_close


@pytest.mark.parametrize(("lq", "lk"), [(5, 9), (9, 5), (7, 7), (1, 6)])
def test_causal_reference_is_sdpa(lq: int, lk: int) -> None:
    """The reference's is_causal is SDPA's (top-left aligned: query i sees keys 0..i), in fp64, grouped heads too,
    and the op's default CPU backend gives the same."""
    q = torch.randn(2, 4, lq, 16, dtype=torch.float64)
    k, v = (torch.randn(2, 2, lk, 16, dtype=torch.float64) for _ in range(2))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert_close(masked_attention_ref(q, k, v, is_causal=True), want, rtol=1e-12, name="reference")
    assert_close(scl_kernels.masked_attention(q, k, v, is_causal=True), want, rtol=1e-12, name="op")
    # and it is not the bottom-right alignment, which differs whenever Lq != Lk
    if lq != lk:
        other = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        assert not torch.allclose(masked_attention_ref(q, k, v, attn_mask=other).nan_to_num(), want)


@pytest.mark.parametrize(("lq", "lk", "visited"), [(150, 100, [1, 2, 2]), (70, 140, [1, 2])])
def test_causal_skips_the_tiles_past_the_diagonal(lq: int, lk: int, visited: list[int], poisoned: None) -> None:
    """The forward's own counter: a query block visits the key tiles up to its diagonal only (dense: all of them),
    and the result equals fp64."""
    q = torch.randn(1, 1, lq, 32)
    k, v = (torch.randn(1, 1, lk, 32) for _ in range(2))
    out, _, counts = attn_launch._attention_forward(q, k, v, None, None, None, 32**-0.5, is_causal=True,
                                                    count_blocks=True)  # fmt: skip
    n_m = -(-lq // TILE)
    assert counts[:n_m].tolist() == [n * TILE for n in visited]
    _, _, dense = attn_launch._attention_forward(q, k, v, None, None, None, 32**-0.5, count_blocks=True)
    assert dense[:n_m].tolist() == [-(-lk // TILE) * TILE] * n_m
    want = masked_attention_ref(q.double(), k.double(), v.double(), is_causal=True)
    assert_close(out, want, rtol=REL_TOL[torch.float32], name="causal out")


def test_grouped_kv_heads_are_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """K/V with fewer heads reach every kernel as the caller's tensors (same storage, Hkv heads): no
    repeat_interleave, no expand-and-copy; dK/dV come back with Hkv heads."""
    seen: list[tuple[int, ...]] = []
    for name in ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv"):
        launcher = getattr(attn_launch, name)

        class Spy:
            def __getitem__(self, grid, _launcher=launcher):  # noqa: ANN001, ANN204
                def launch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    seen.append((args[1].data_ptr(), args[2].data_ptr(), args[1].shape[1]))
                    return _launcher[grid](*args, **kwargs)

                return launch

        monkeypatch.setattr(attn_launch, name, Spy())
    q = torch.randn(1, 8, 11, 32, requires_grad=True)
    k, v = (torch.randn(1, 2, 13, 32, requires_grad=True) for _ in range(2))
    out = scl_kernels.masked_attention(q, k, v, backend="triton")
    out.backward(torch.randn_like(out))
    assert seen == [(k.data_ptr(), v.data_ptr(), 2)] * 3
    assert k.grad.shape == k.shape and v.grad.shape == v.shape


# ------------------------------------------------------------------------------------------------------------
# the returned log-sum-exp
# ------------------------------------------------------------------------------------------------------------

LSE_CASES = {
    "key-mask, empty batch, gqa": dict(h=4, h_kv=2, lq=23, lk=31, empty=True),
    "causal, Lq > Lk": dict(h=2, h_kv=2, lq=37, lk=19, causal=True),
    "rows with no key, fp16": dict(h=1, h_kv=1, lq=17, lk=17, rows_empty=True, dtype=torch.float16),
}


def _lse_inputs(h: int, h_kv: int, lq: int, lk: int, empty: bool = False, causal: bool = False,
                rows_empty: bool = False, dtype: torch.dtype = torch.float32) -> tuple:  # fmt: skip
    q = torch.randn(2, h, lq, 32).to(dtype)
    k, v = (torch.randn(2, h_kv, lk, 32).to(dtype) for _ in range(2))
    km = torch.rand(2, lk) > 0.3
    km[:, 0] = True
    if empty:
        km[1] = False  # every row of batch 1 sees no key: lse = +inf
    am = None
    if rows_empty:
        am = torch.rand(lq, lk) > 0.4
        am[::4] = False
    return (q, k, v), {"key_mask": km, "attn_mask": am, "is_causal": causal}


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name", list(LSE_CASES))
def test_returned_lse_and_its_gradient(name: str, backend: str, poisoned: None) -> None:
    """return_lse=True: lse (B, H, Lq) float32, natural log of the masked scaled scores' sum of exponentials,
    +inf exactly on the rows that see no key; a loss using both out and lse (random weights, +inf rows
    included) gets dq/dk/dv equal to fp64 autograd through the reference's lse; the output is the plain call's."""
    (q, k, v), masks = _lse_inputs(**LSE_CASES[name])
    dtype = q.dtype
    g, g_lse = torch.randn(q.shape).to(dtype), torch.randn(q.shape[:3])

    def loss_of(fn, q, k, v, **kw):  # noqa: ANN001, ANN202
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        out, lse = fn(q, k, v, return_lse=True, **masks, **kw)
        finite = torch.isfinite(lse)
        loss = (out.double() * g.double()).sum() + (torch.where(finite, lse, 0.0).double() * g_lse.double()).sum()
        loss.backward()
        return out.detach(), lse.detach(), [q.grad, k.grad, v.grad]

    out, lse, grads = loss_of(scl_kernels.masked_attention, q, k, v, backend=backend)
    ref, ref_lse, ref_grads = loss_of(masked_attention_ref, q.double(), k.double(), v.double(), upcast=True)
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    empty = torch.isinf(ref_lse)
    if LSE_CASES[name].get("empty") or LSE_CASES[name].get("rows_empty"):
        assert empty.any(), "the case was meant to have rows with no visible key"
    assert torch.equal(torch.isinf(lse), empty) and (lse[empty] > 0).all(), "+inf exactly where no key is seen"
    assert_close(lse[~empty], ref_lse[~empty], rtol=REL_TOL[dtype], name="lse")
    rtol, atol = REL_TOL[dtype], ATOL[dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, name="out")
    for gname, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, name=gname)
    plain = scl_kernels.masked_attention(q, k, v, backend=backend, **masks)
    assert torch.equal(plain, out)


def test_lse_alone_in_the_loss_and_before_dropout(poisoned: None) -> None:
    """A loss of lse alone (the output unused) gets dq/dk (dv = 0) equal to fp64 autograd, and with dropout the
    returned lse is that of the probabilities before dropout, the same as without it."""
    q, k, v = (torch.randn(1, 2, 21, 32) for _ in range(3))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    _, lse = scl_kernels.masked_attention(qg, kg, vg, backend="triton", return_lse=True)
    lse.sum().backward()
    q64, k64, v64 = (t.double().requires_grad_(True) for t in (q, k, v))
    masked_attention_ref(q64, k64, v64, return_lse=True, upcast=True)[1].sum().backward()
    for gname, got, want in zip(("dq", "dk"), (qg.grad, kg.grad), (q64.grad, k64.grad), strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * REL_TOL[torch.float32], name=gname)
    assert (vg.grad == 0).all()
    _, dropped = scl_kernels.masked_attention(q, k, v, backend="triton", return_lse=True, dropout_p=0.5)
    assert_close(dropped, lse.detach(), rtol=1e-7, name="lse with dropout")
