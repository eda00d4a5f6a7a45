"""masked_attention's fused dropout: the kernels' mask against the dense fp64 computation with that mask, and its
randomness graph-safe (issue 15): the Philox (seed, offset) is a device tensor drawn on q's device by torch's
generator and read by the kernels from a pointer, never a host integer, so a CUDA graph's replays draw new masks and
no call syncs the host. The CUDA-graph replay test needs a GPU (``cuda`` mark)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scl_kernels
from scl_kernels.attention import dropout_keep_mask
from scl_kernels.attention import launch as attn_launch
from scl_kernels.attention import op as attn_op
from scl_kernels.reference import attention_mask_ref, expand_kv_heads, masked_attention_ref
from tests.kernels.test_attention import GRAD_SLACK, _run
from tests.utils import ATOL, REL_TOL, assert_close


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every Philox pair masked_attention draws, in call order."""
    pairs: list[torch.Tensor] = []
    real = attn_op.philox_state

    def spy(device: torch.device) -> torch.Tensor:
        pairs.append(real(device))
        return pairs[-1]

    monkeypatch.setattr(attn_op, "philox_state", spy)
    return pairs


def _dense_with_mask(q, k, v, keep, p, **masks):  # noqa: ANN001, ANN202
    """softmax(q k^T / sqrt(D), masked) * keep / (1 - p) @ v, dense, grouped K/V heads expanded."""
    b, h, lq, d = q.shape
    k, v = expand_kv_heads(k, h), expand_kv_heads(v, h)
    scores = q @ k.transpose(-1, -2) * d**-0.5
    mask = attention_mask_ref(b, lq, k.shape[2], **masks)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num()
    return (probs * keep / (1 - p)) @ v


@pytest.mark.parametrize(("dtype", "h", "h_kv", "frames", "causal"),
                         [(torch.float32, 1, 1, 3, False), (torch.float16, 4, 2, None, True)])  # fmt: skip
def test_fused_dropout_matches_reference_with_the_same_mask(dtype: torch.dtype, h: int, h_kv: int,
                                                            frames: int | None, causal: bool, poisoned: None,
                                                            drawn: list[torch.Tensor]) -> None:  # fmt: skip
    """Fused dropout: out and dq/dk/dv equal the dense fp64 computation with the kernel's own keep mask
    (``dropout_keep_mask`` on the Philox pair the call drew), with key padding and a frame pattern, or with grouped
    K/V heads (one mask per query head) and is_causal; the mask keeps ~1 - p; the pair comes from torch's generator
    (same torch seed, same result; next call, new mask)."""
    b, length, d, p = 2, 3 * 11, 32, 0.3
    q = torch.randn(b, h, length, d).to(dtype)
    k, v = (torch.randn(b, h_kv, length, d).to(dtype) for _ in range(2))
    km = torch.rand(b, length) > 0.2
    km[:, 0] = True
    g = torch.randn(b, h, length, d).to(dtype)
    masks = {"key_mask": km, "frames": frames, "is_causal": causal}
    torch.manual_seed(7)
    out, grads = _run(scl_kernels.masked_attention, q, k, v, g, dropout_p=p, backend="triton", **masks)
    (rng,) = drawn
    keep = dropout_keep_mask(rng, p, (b, h, length, length))
    many = dropout_keep_mask(rng, p, (1, 1, 256, 256)).float().mean().item()
    assert abs(many - (1 - p)) < 0.01, many  # 65536 draws: 5 standard deviations

    ref, ref_grads = _run(lambda q, k, v: _dense_with_mask(q, k, v, keep, p, **masks), q.double(), k.double(),
                          v.double(), g.double())  # fmt: skip
    rtol, atol = REL_TOL[dtype], ATOL[dtype]
    assert_close(out, ref, rtol=rtol, atol=atol, name="out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(got, want, rtol=GRAD_SLACK * rtol, atol=GRAD_SLACK * atol, name=name)
    torch.manual_seed(7)
    again = scl_kernels.masked_attention(q, k, v, dropout_p=p, backend="triton", **masks)
    assert torch.equal(again, out), "the same torch seed must give the same dropout mask"
    other = scl_kernels.masked_attention(q, k, v, dropout_p=p, backend="triton", **masks)
    assert not torch.equal(other, out), "the next call must draw a new mask"


def test_philox_pair_is_a_device_tensor_the_kernels_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The op's seed/offset argument is a (2,) int64 tensor on q's device, the same one reaches the forward and the
    backward launch; two calls draw different pairs and masks; a fixed pair reproduces the mask (through the op's
    forward with that pair), and another pair changes it."""
    seen: list[tuple[str, torch.Tensor | None]] = []
    for name in ("_attention_forward", "_attention_backward"):
        real = getattr(attn_launch, name)

        def spy(*args, _real=real, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen.append((_name, kwargs["rng"]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(attn_op, name, spy)
    q, k, v = (torch.randn(1, 2, 20, 32, requires_grad=True) for _ in range(3))
    p = 0.4
    for _ in range(2):
        scl_kernels.masked_attention(q, k, v, dropout_p=p, backend="triton").sum().backward()
    assert [name for name, _ in seen] == ["_attention_forward", "_attention_backward"] * 2
    for _, rng in seen:
        assert isinstance(rng, torch.Tensor) and rng.device == q.device
        assert rng.dtype == torch.int64 and rng.shape == (2,)
    assert seen[0][1] is seen[1][1] and seen[2][1] is seen[3][1], "the backward must redraw the forward's mask"
    first, second = seen[0][1], seen[2][1]
    assert not torch.equal(first, second)
    shape = (1, 2, 20, 20)
    assert not torch.equal(dropout_keep_mask(first, p, shape), dropout_keep_mask(second, p, shape))
    # a fixed pair: the same mask, call after call; the position keys it (more query rows extend it)
    assert torch.equal(dropout_keep_mask(first, p, shape), dropout_keep_mask(first.clone(), p, shape))
    assert torch.equal(dropout_keep_mask(first, p, (1, 2, 70, 20))[:, :, :20], dropout_keep_mask(first, p, shape))
    args = (None, None, None, 32**-0.5, p)
    with torch.no_grad():
        fixed = [attn_op._forward_impl(q, k, v, *args, first.clone(), False, False, "triton")[0] for _ in range(2)]
        moved = attn_op._forward_impl(q, k, v, *args, first + torch.tensor([0, 1]), False, False, "triton")[0]
    assert torch.equal(fixed[0], fixed[1]) and not torch.equal(fixed[0], moved)


class _NoSync(TorchDispatchMode):
    """Fails on every op that copies a device value to the host (``.item()``, ``bool(tensor)``, data-dependent
    shapes)."""

    SYNCING = ("_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "masked_select", "unique")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.__name__.split(".")[0] in self.SYNCING:
            raise AssertionError(f"host sync inside masked_attention: {func}")
        return func(*args, **(kwargs or {}))


class _NoLaunch:
    """Stands in for a Triton launcher: no kernel runs (the interpreter would read tensors on the host)."""

    def __getitem__(self, grid: object):  # noqa: ANN204
        return lambda *args, **kwargs: None


def test_dropout_call_never_syncs_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and backward with dropout, GQA and a key mask through the triton backend's host path (the launches
    stubbed) under a dispatch mode that fails on host-syncing ops: the Philox pair never becomes a host integer."""
    for name in ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv"):
        monkeypatch.setattr(attn_launch, name, _NoLaunch())
    q = torch.randn(2, 4, 9, 32, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 32, requires_grad=True) for _ in range(2))
    km = torch.rand(2, 9) > 0.3
    with _NoSync():
        out = scl_kernels.masked_attention(q, k, v, key_mask=km, dropout_p=0.1, backend="triton")
        out.backward(torch.ones_like(out))
    with pytest.raises(AssertionError, match="host sync"), _NoSync():  # the mode does catch a sync
        out.sum().item()


def test_dropout_on_reference_backend() -> None:
    """dropout_p > 0 on the reference backend: F.dropout on the dense probabilities, torch's generator."""
    q, k, v = (torch.randn(1, 2, 16, 32) for _ in range(3))
    torch.manual_seed(1)
    a = scl_kernels.masked_attention(q, k, v, dropout_p=0.5, backend="reference")
    torch.manual_seed(1)
    b = masked_attention_ref(q, k, v, dropout_p=0.5)
    assert_close(a, b, rtol=1e-6)
    assert not torch.allclose(a, masked_attention_ref(q, k, v))


@pytest.mark.cuda
def test_cuda_graph_replays_draw_fresh_masks(drawn: list[torch.Tensor]) -> None:
    """Forward + backward with dropout captured in a CUDA graph and replayed twice: each replay draws a new Philox
    pair (the captured torch.randint refilled by the graph's generator state), so a new mask; each replay keeps
    ~1 - p of the probabilities and gives exactly the dense computation with its own mask, gradients included."""
    b, h, h_kv, length, d, p = 2, 4, 2, 128, 64, 0.3
    dev = torch.device("cuda")
    q = torch.randn(b, h, length, d, device=dev, dtype=torch.float16, requires_grad=True)
    k, v = (torch.randn(b, h_kv, length, d, device=dev, dtype=torch.float16, requires_grad=True) for _ in range(2))
    km = torch.rand(b, length, device=dev) > 0.2
    km[:, 0] = True
    g = torch.randn(b, h, length, d, device=dev, dtype=torch.float16)

    def step() -> torch.Tensor:
        out = scl_kernels.masked_attention(q, k, v, key_mask=km, dropout_p=p, backend="triton")
        out.backward(g)
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and autotune before capture
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for t in (q, k, v):
        t.grad = None  # the captured backward allocates them from the graph's pool: static across replays
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    rng = drawn[-1]  # drawn inside the capture
    replays = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        replays.append((rng.clone(), static_out.detach().clone(), [t.grad.detach().clone() for t in (q, k, v)]))
    (rng1, out1, _), (rng2, out2, _) = replays
    assert not torch.equal(rng1, rng2) and not torch.equal(out1, out2), "a replay must draw a new mask"
    for pair, out, grads in replays:
        keep = dropout_keep_mask(pair, p, (b, h, length, length))
        assert abs(keep.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / keep.numel()) ** 0.5 + 1e-3
        ref, ref_grads = _run(lambda q, k, v, keep=keep: _dense_with_mask(q, k, v, keep, p, key_mask=km),
                              q.double(), k.double(), v.double(), g.double())  # fmt: skip
        assert_close(out, ref, rtol=REL_TOL[torch.float16], atol=ATOL[torch.float16], name="out")
        for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
            assert_close(got, want, rtol=GRAD_SLACK * REL_TOL[torch.float16], atol=GRAD_SLACK * ATOL[torch.float16],
                         name=name)  # fmt: skip
