"""info_nce and cosine_recovery: every backend against the fp64 reference, values and all gradients.

The Triton kernels run under the interpreter on CPU (fp32 and fp16; bf16 only on a GPU). Every output buffer
the launchers allocate is poisoned with NaN first, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels.reference import cosine_recovery_ref, info_nce_ref
from tests.utils import ATOL, REL_TOL, assert_close, poison_

GRAD_SLACK = 3.0  # ARCHITECTURE.md: gradients may be 3x looser


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every buffer allocated with torch.empty / empty_like during the test with NaN."""
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison_(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison_(empty_like(*a, **k)))


def _pair(n: int, d: int, dtype: torch.dtype, corr: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs with cos(a_i, b_i) ~ corr (b = corr * a/|a| + noise) and varied row norms.

    With corr a few temperatures wide, the softmax is neither flat nor one-hot, so every gradient entry is
    well above rounding noise (a one-hot softmax has gradients ~exp(-100) and relative errors mean nothing).
    """
    a = torch.randn(n, d, dtype=torch.float64)
    a = a / a.norm(dim=1, keepdim=True)
    b = corr * a + torch.randn(n, d, dtype=torch.float64) / d**0.5
    a = a * torch.rand(n, 1, dtype=torch.float64).add(0.5) * 4.0
    return a.to(dtype), (b * 3.0).to(dtype)


def _info_nce_grads(fn, a, b, t, g, **kw) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    loss = fn(a, b, t, **kw)
    (loss * g).backward()
    return loss.detach(), [a.grad, b.grad, t.grad]


def _check_info_nce(backend: str, n: int, d: int, dtype: torch.dtype, temp: float, symmetric: bool, detach_b=False):
    a, b = _pair(n, d, dtype, corr=3 * temp)
    t = torch.tensor(temp)
    g = torch.rand(()) + 0.5  # a random upstream gradient, not 1
    kw = {"symmetric": symmetric, "detach_b": detach_b}
    out, grads = _info_nce_grads(scl_kernels.info_nce, a, b, t, g, backend=backend, **kw)
    ref, ref_grads = _info_nce_grads(info_nce_ref, a.double(), b.double(), t.double(), g.double(), upcast=True, **kw)
    base, base_grads = _info_nce_grads(info_nce_ref, a, b, t, g, **kw)
    assert out.dtype == torch.float32, "the loss is returned in float32 for every input dtype"
    rtol, atol = REL_TOL[dtype], ATOL[dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, baseline=base, name="loss")
    for name, got, want, bl in zip(("grad a", "grad b", "grad T"), grads, ref_grads, base_grads, strict=True):
        if want is None:
            assert got is None, f"{name}: expected no gradient (detach_b), got one"
            continue
        assert got is not None and got.dtype == (t.dtype if name == "grad T" else dtype), f"{name}: {got.dtype}"
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, baseline=bl, name=name)


# N = 1, 3, 127 and D = 32, 384, 768 in four combinations, each with one of the three temperatures
SHAPES = [(1, 32, 0.07), (3, 768, 0.01), (127, 32, 0.03), (127, 384, 0.01)]


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("n", "d", "temp"), SHAPES)
def test_info_nce_triton(n: int, d: int, temp: float, dtype: torch.dtype, symmetric: bool) -> None:
    _check_info_nce("triton", n, d, dtype, temp, symmetric)


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("temp", [0.07, 0.03, 0.01])
def test_info_nce_triton_temperatures(temp: float, dtype: torch.dtype) -> None:
    _check_info_nce("triton", 45, 64, dtype, temp, symmetric=True)


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("backend", ["triton", "native", "reference"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_detach_b(backend: str, symmetric: bool) -> None:
    """detach_b: b gets no gradient at all (None); a and T still match the stop-gradient reference."""
    if backend == "native" and not _dispatch.HAS_NATIVE:
        pytest.skip("scl_kernels._C is not built")
    _check_info_nce(backend, 37, 200, torch.float32, 0.03, symmetric, detach_b=True)  # D: 2 K-blocks, ragged


@pytest.mark.skipif(not _dispatch.HAS_NATIVE, reason="scl_kernels._C is not built")
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("n", "d", "temp"), [*SHAPES, (301, 768, 0.07)])
def test_info_nce_native(n: int, d: int, temp: float, symmetric: bool) -> None:
    _dispatch.calls.clear()
    _check_info_nce("native", n, d, torch.float32, temp, symmetric)
    assert _dispatch.calls[("info_nce", "native")] == 1


@pytest.mark.skipif(not _dispatch.HAS_NATIVE, reason="scl_kernels._C is not built")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_info_nce_native_half_inputs(dtype: torch.dtype) -> None:
    """fp16/bf16 inputs: the C++ kernel upcasts to fp32 once, so it must be at least as good as the same-dtype
    reference (and, unlike the interpreter, bf16 arithmetic is real here)."""
    _check_info_nce("native", 97, 64, dtype, 0.03, symmetric=True)


@pytest.mark.skipif(not _dispatch.HAS_NATIVE, reason="scl_kernels._C is not built")
def test_info_nce_native_tiles_and_wavefront() -> None:
    """N = 601 spans three 256-row tiles with a ragged last one: every (row block, column block) pair of the
    wavefront schedule, off-diagonal and diagonal, must be visited exactly once."""
    _check_info_nce("native", 601, 40, torch.float32, 0.05, symmetric=True)


@pytest.mark.skipif(not _dispatch.HAS_NATIVE, reason="scl_kernels._C is not built")
def test_info_nce_native_is_the_cpu_default() -> None:
    """On CPU, with no backend named, the C++ kernel (not the reference) serves the call."""
    a, b = _pair(20, 32, torch.float32)
    _dispatch.calls.clear()
    scl_kernels.info_nce(a, b, 0.07)
    assert _dispatch.calls == {("info_nce", "native"): 1}


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_reference_backend(symmetric: bool) -> None:
    """The op's reference backend (a hand-written dense backward) against autograd through the reference."""
    _check_info_nce("reference", 29, 40, torch.float32, 0.07, symmetric)


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_info_nce_identical_pairs_fp16_low_temperature(backend: str) -> None:
    """a == b at T = 0.01: diagonal logits of 100, far beyond fp16's exp range: the LSE must stay finite, and
    the gradients (~1e-22 here) must not pick up the LSE's rounding (~100 * 2^-24) through G_ii = p_ii - 1."""
    if backend == "native" and not _dispatch.HAS_NATIVE:
        pytest.skip("scl_kernels._C is not built")
    a, _ = _pair(40, 64, torch.float16)
    t = torch.tensor(0.01)
    out, grads = _info_nce_grads(scl_kernels.info_nce, a, a, t, torch.tensor(1.0), backend=backend)
    ref, ref_grads = _info_nce_grads(info_nce_ref, a.double(), a.double(), t.double(), torch.tensor(1.0), upcast=True)
    assert_close(out, ref, rtol=REL_TOL[torch.float16], name="loss")
    # the loss is tiny here (~exp(-large)), so the gradient's relative error is checked against its own scale
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        assert (got.double() - want).abs().max() <= ATOL[torch.float16] + 1e-2 * want.abs().max()


def test_info_nce_float_temperature_gets_no_gradient() -> None:
    a, b = _pair(11, 32, torch.float32)
    out = scl_kernels.info_nce(a, b, 0.05, backend="triton")
    ref = info_nce_ref(a.double(), b.double(), 0.05, upcast=True)
    assert_close(out, ref, rtol=REL_TOL[torch.float32], name="loss")
    assert not out.requires_grad


def test_info_nce_float64_runs_the_reference_by_default() -> None:
    a, b = _pair(9, 16, torch.float64)
    _dispatch.calls.clear()
    with scl_kernels.use_backend("triton"):
        out = scl_kernels.info_nce(a, b, 0.07)
    assert out.dtype == torch.float64
    assert _dispatch.calls == {("info_nce", "reference"): 1}
    assert_close(out, info_nce_ref(a, b, 0.07, upcast=True), rtol=REL_TOL[torch.float64], name="loss")
    with pytest.raises(ValueError, match="float64"):
        scl_kernels.info_nce(a, b, 0.07, backend="triton")


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "temp"),
    [((4, 8), (5, 8), 0.07), ((4, 8, 2), (4, 8, 2), 0.07), ((0, 8), (0, 8), 0.07), ((4, 8), (4, 8), -1.0)],
)
def test_info_nce_rejects_bad_input(a_shape, b_shape, temp) -> None:
    with pytest.raises(ValueError):
        scl_kernels.info_nce(torch.randn(a_shape), torch.randn(b_shape), temp, backend="triton")


def test_info_nce_opcheck() -> None:
    """Schema, fake tensors and autograd registration agree with the real kernels (torch.compile relies on them)."""
    a, b = _pair(5, 32, torch.float32)
    t = torch.tensor(0.07, requires_grad=True)
    for backend in ("triton", "reference", *(["native"] if _dispatch.HAS_NATIVE else [])):
        args = (a.clone().requires_grad_(), b.clone().requires_grad_(), t, True, backend)
        torch.library.opcheck(torch.ops.scl.info_nce.default, args)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_info_nce_compiles_without_graph_break(backend: str) -> None:
    if backend == "native" and not _dispatch.HAS_NATIVE:
        pytest.skip("scl_kernels._C is not built")
    a, b = _pair(6, 16, torch.float32)
    a.requires_grad_(True)
    t = torch.tensor(0.07, requires_grad=True)
    fn = torch.compile(lambda a, b, t: scl_kernels.info_nce(a, b, t, backend=backend), fullgraph=True,
                       backend="aot_eager")  # fmt: skip
    fn(a, b, t).backward()
    ref = info_nce_ref(a.detach().double().requires_grad_(), b.double(), t.detach().double(), upcast=True)
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert_close(fn(a, b, t).detach(), ref, rtol=REL_TOL[torch.float32], name="compiled loss")


# --------------------------------------------------------------------------------------------------------------
# cosine_recovery
# --------------------------------------------------------------------------------------------------------------


def _cosine_grads(fn, a, b, g, **kw) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    loss = fn(a, b, **kw)
    (loss * g).backward()
    return loss.detach(), [a.grad, b.grad]


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("detach_b", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("n", "d"), [(1, 32), (3, 768), (127, 384)])
def test_cosine_recovery(n: int, d: int, dtype: torch.dtype, detach_b: bool, backend: str) -> None:
    a, b = _pair(n, d, dtype)
    g = torch.rand(()) + 0.5
    out, grads = _cosine_grads(scl_kernels.cosine_recovery, a, b, g, detach_b=detach_b, backend=backend)
    ref, ref_grads = _cosine_grads(cosine_recovery_ref, a.double(), b.double(), g.double(), detach_b=detach_b,
                                   upcast=True)  # fmt: skip
    base, base_grads = _cosine_grads(cosine_recovery_ref, a, b, g, detach_b=detach_b)
    assert out.dtype == torch.float32
    rtol, atol = REL_TOL[dtype], ATOL[dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, baseline=base, name="loss")
    for name, got, want, bl in zip(("grad a", "grad b"), grads, ref_grads, base_grads, strict=True):
        if want is None:
            assert got is None, f"{name}: expected no gradient (detach_b)"
            continue
        assert got.dtype == dtype
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, baseline=bl, name=name)


def test_cosine_recovery_opcheck() -> None:
    a, b = _pair(5, 32, torch.float32)
    for backend in ("triton", "reference"):
        torch.library.opcheck(torch.ops.scl.cosine_recovery.default, (a.requires_grad_(), b, backend))


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("wants", ["t", "b+t", "a"], ids=lambda w: f"grad-{w}")
def test_info_nce_gradient_subsets_and_strided_inputs(backend: str, wants: str) -> None:
    """Only some inputs require a gradient (the kernels then skip or reroute halves of the backward), and a, b are
    strided views (every other column of a wider tensor, the transpose of a column-major buffer)."""
    if backend == "native" and not _dispatch.HAS_NATIVE:
        pytest.skip("scl_kernels._C is not built")
    a_full, b_full = _pair(23, 2 * 40, torch.float32, corr=0.1)
    a = a_full[:, ::2]  # (23, 40), stride (80, 2)
    b = b_full[:, ::2].t().contiguous().t()  # (23, 40), column-major
    a.requires_grad_("a" in wants)
    b.requires_grad_("b" in wants)
    t = torch.tensor(0.04, requires_grad="t" in wants)
    g = torch.rand(()) + 0.5
    (scl_kernels.info_nce(a, b, t, backend=backend) * g).backward()
    a64, b64 = a.detach().double().requires_grad_("a" in wants), b.detach().double().requires_grad_("b" in wants)
    t64 = t.detach().double().requires_grad_("t" in wants)
    (info_nce_ref(a64, b64, t64, upcast=True) * g.double()).backward()
    for name, got, want in (("a", a, a64), ("b", b, b64), ("t", t, t64)):
        if name in wants:
            assert_close(got.grad, want.grad, rtol=GRAD_SLACK * REL_TOL[torch.float32], name=f"grad {name}")
        else:
            assert got.grad is None
