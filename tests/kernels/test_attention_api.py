"""masked_attention's API around the kernels: one opaque op under torch.compile (forward and backward), the eager
autograd.Function equal to that op, inference calls without autograd, the backend choice, torch.library's own
checks, and the model's dispatch point (scl_fast.model.attention) with its optional backends through stand-ins."""

from __future__ import annotations

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels.attention import op as attn_op
from scl_kernels.reference import masked_attention_ref
from tests.kernels.test_attention import GRAD_SLACK, _run
from tests.utils import REL_TOL, assert_close


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


@pytest.mark.parametrize("lse_in_loss", [False, True])
def test_eager_function_equals_the_custom_op(poisoned: None, lse_in_loss: bool) -> None:
    """Eager calls skip torch.library's dispatch (an autograd.Function over the same forward/backward bodies,
    for host time); compiled graphs use the op. Both give the same output and gradients, dropout's mask included
    (same Philox pair), grouped K/V heads too, and the returned lse's gradient when a loss uses it."""
    q = torch.randn(2, 4, 37, 32)
    k, v = (torch.randn(2, 2, 37, 32) for _ in range(2))
    km = torch.rand(2, 37) > 0.3
    g, g_lse = torch.randn(2, 4, 37, 32), torch.randn(2, 4, 37)
    rng = torch.tensor([1234, 5], dtype=torch.int64)
    args = (km, None, 4, 32**-0.5, 0.25, rng, False, lse_in_loss, "triton")  # key mask + frames=4 + dropout

    def via(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out, lse = fn(qq, kk, vv)
        loss = (out * g).sum() + ((lse * g_lse).nan_to_num(posinf=0.0).sum() if lse_in_loss else 0.0)
        loss.backward()
        return out.detach(), [lse.detach(), qq.grad, kk.grad, vv.grad]

    eager = via(lambda a, b, c: attn_op._EagerMaskedAttention.apply(a, b, c, *args))
    op = via(lambda a, b, c: attn_op._masked_attention_op(a, b, c, *args))
    for got, want in zip([eager[0], *eager[1]], [op[0], *op[1]], strict=True):
        assert torch.equal(got, want) and not got.isnan().any()


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
    with scl_kernels.use_backend("sdpa"):
        scl_kernels.masked_attention(q, k, v)
    assert _dispatch.calls[("masked_attention", "sdpa")] == before.get(("masked_attention", "sdpa"), 0) + 1
    with pytest.raises(ValueError, match="no native"):
        scl_kernels.masked_attention(q, k, v, backend="native")
    with pytest.raises(ValueError, match="no sdpa backend"), scl_kernels.use_backend("sdpa"):
        scl_kernels.info_nce(torch.randn(4, 8), torch.randn(4, 8), 0.1)






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
    args = (q, k, v, km, None, None, 0.17, 0.0, None, False, False, backend)
    torch.library.opcheck(torch.ops.scl.masked_attention.default, args)
    if backend == "triton":  # fused dropout: the Philox pair goes through the op; grouped K/V heads, causal, lse
        rng = torch.tensor([5, 7], dtype=torch.int64)
        q4 = torch.randn(1, 4, 7, 32, requires_grad=True)
        torch.library.opcheck(torch.ops.scl.masked_attention.default,
                              (q4, k, v, km, None, None, 0.17, 0.2, rng, True, True, backend))  # fmt: skip



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

