"""info_nce and cosine_recovery: every backend against the fp64 reference, values and all gradients.

The Triton kernels run under the interpreter on CPU (fp32 and fp16; bf16 only on a GPU). Every output buffer
the launchers allocate is poisoned with NaN first, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels.contrastive import configs, gemm_flops, recorded_launches
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


# the batch sizes: one pair (no negatives), a ragged two-tile batch, and 4099 rows (17 x 256 + 3: several
# backward chunks, column splits, ragged tiles everywhere) at a small D so the interpreter finishes in seconds
BATCHES = [(1, 32, dt, det) for dt in (torch.float32, torch.float16) for det in (False, True)]
BATCHES += [(37, 200, dt, det) for dt in (torch.float32, torch.float16) for det in (False, True)]
BATCHES += [(4099, 16, torch.float32, False), (4099, 16, torch.float16, True)]


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize(("n", "d", "dtype", "detach_b"), BATCHES,
                         ids=lambda v: str(v).removeprefix("torch.") if not isinstance(v, bool) else f"detach{v:d}")
def test_info_nce_batch_sizes(n: int, d: int, dtype: torch.dtype, detach_b: bool) -> None:
    """Loss and the gradients of a, b (or none, detached) and the temperature against the fp64 reference."""
    with recorded_launches() as launches:
        _check_info_nce("triton", n, d, dtype, 0.05, symmetric=True, detach_b=detach_b)
    kernels = [launch.kernel for launch in launches]
    assert kernels.count("_info_nce_fwd_kernel") == 1, "the forward is one pass over the similarity tiles"
    chunks = kernels.count("_info_nce_grad_kernel")
    assert chunks == -(-n // configs.chunk_rows(n, d)) and (n < 4099 or chunks > 1)
    # the gradient of b is never computed for detach_b: no GEMM over G's transpose
    gemms = [launch for launch in launches if launch.kernel == "_info_nce_gemm_kernel"]
    assert len(gemms) == chunks * (1 if detach_b else 2)


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_backward_in_chunks(monkeypatch: pytest.MonkeyPatch, symmetric: bool) -> None:
    """Chunks smaller than a tile and not a multiple of it (48 rows in 32-row tiles: 48, 48, 31): the chunk
    offsets, the partial sums per chunk and the gradient of b accumulated over the chunks."""
    monkeypatch.setattr(configs, "chunk_rows", lambda n, d: 48)
    with recorded_launches() as launches:
        _check_info_nce("triton", 127, 40, torch.float32, 0.03, symmetric)
    assert [launch.ints["ROWS"] for launch in launches if launch.kernel == "_info_nce_grad_kernel"] == [48, 48, 31]
    splits = [launch.grid[2] for launch in launches if launch.kernel == "_info_nce_gemm_kernel"]
    assert max(splits) > 1, "the gradient of a's GEMM ran without a split of K: the split path is unchecked"


OFFLINE_SCENARIO = """
import json
import torch
from scl_kernels._offline import offline_driver
from scl_kernels.contrastive import launch, recorded_launches

a, b = torch.randn(37, 200, dtype=torch.float16), torch.randn(37, 200, dtype=torch.float16)
t = torch.tensor(0.05)
with offline_driver() as driver, recorded_launches() as ours:
    loss, stats = launch.info_nce_fwd(a, b, t, True)
    launch.info_nce_bwd(torch.tensor(1.0), a, b, t, stats, True, True, True, True)
print(json.dumps([sorted({launch.kernel for launch in ours}), sorted({launch.name for launch in driver.launches})]))
"""


def test_gpu_launch_path_offline() -> None:
    """The launchers as a GPU runs them, without one: under the offline driver (``scl_kernels._offline``: each
    kernel compiled for sm_90 as its launch specialises it, the launch recorded instead of run) the forward and
    backward go through the autotuners (every fitting config compiled and "timed", the first kept), the tiles read
    back from the autotuner's choice, and ``JITFunction.run``. Every kernel the host path launched must have
    reached the driver."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("SCL_KERNELS_AUTOTUNE", None)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its current default
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCENARIO], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours, reached = json.loads(proc.stdout.splitlines()[-1])
    assert len(ours) == 7 and ours == reached, (ours, reached)  # norms, forward, lse, scale, tiles, GEMM, epilogue


def test_info_nce_triton_is_deterministic() -> None:
    """No atomics: the same inputs give the same bits, loss and every gradient."""
    a, b = _pair(70, 48, torch.float32)
    runs = [_info_nce_grads(scl_kernels.info_nce, a, b, torch.tensor(0.05), torch.tensor(1.0), backend="triton")
            for _ in range(2)]  # fmt: skip
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(x, y) for x, y in zip(runs[0][1], runs[1][1], strict=True))


def test_launched_flop_count_reads_real_launches() -> None:
    """benchmarks/bench_contrastive.py counts the GEMM work each launch does from its grid and tiles; on launches
    that really ran (64 x 32 in 32-wide tiles: no padding), the forward is one similarity GEMM and the backward
    three (the similarity, the gradients of a and of b), exactly."""
    a, b = _pair(64, 32, torch.float32)
    with recorded_launches() as fwd:
        loss = scl_kernels.info_nce(a.requires_grad_(), b.requires_grad_(), 0.05, backend="triton")
    with recorded_launches() as bwd:
        loss.backward()
    gemm = 2.0 * 64 * 64 * 32
    assert sum(map(gemm_flops, fwd)) == gemm
    assert sum(map(gemm_flops, bwd)) == 3 * gemm
    assert {launch.kernel for launch in bwd} >= {"_info_nce_grad_kernel", "_info_nce_gemm_kernel"}


@pytest.mark.parametrize("n", [1, 100, 128, 129, 4096, 4099, 32768, 65536])
@pytest.mark.parametrize("d", [16, 256, 768])
def test_chunk_rows_bound_the_memory(n: int, d: int) -> None:
    """The backward's G chunk is O(N * D) (at most max(4 N D, 2^24) elements), never all N rows of a batch past
    one aligned chunk, and the chunks are balanced: memory never N x N."""
    rows = configs.chunk_rows(n, d)
    assert 0 < rows <= n
    assert rows * n <= max(configs.CHUNK_INPUTS * n * d, configs.CHUNK_MIN) + configs.CHUNK_ALIGN * n
    if n > configs.CHUNK_ALIGN:
        assert rows < n and rows % configs.CHUNK_ALIGN == 0
        chunks = -(-n // rows)
        assert n - (chunks - 1) * rows > rows - configs.CHUNK_ALIGN * chunks, "unbalanced chunks"


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
