"""The sdpa backend and ``backend="auto"``: SDPA with masked_attention's contract (zeros for rows with no key,
grouped K/V heads, causal alignment), every backend giving the same answer (CPU: sdpa, triton under the
interpreter, reference, and auto when it chooses), and the choice itself from the measured table."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels.attention import auto
from scl_kernels.reference import masked_attention_ref
from tests.kernels.test_attention import GRAD_SLACK, _run
from tests.utils import ATOL, REL_TOL, assert_close

ROOT = Path(__file__).resolve().parents[2]
CALLS = {  # name -> (q heads, kv heads, Lq, Lk, D, options); batch 2, key masks with an empty row where given
    "dense": (2, 2, 19, 19, 32, {}),
    "key, an empty batch row": (2, 2, 13, 22, 64, {"key_mask": "empty"}),
    "gqa causal Lq > Lk": (4, 2, 23, 11, 32, {"is_causal": True}),
    "gqa key causal Lq < Lk": (4, 1, 9, 26, 32, {"is_causal": True, "key_mask": "some"}),
    "frames": (2, 2, 3 * 7, 3 * 7, 32, {"frames": 3}),
    "attn mask, empty rows, d160": (1, 1, 17, 17, 160, {"attn_mask": True}),
}


def _call_inputs(name: str, dtype: torch.dtype = torch.float32) -> tuple:
    h, h_kv, lq, lk, d, options = CALLS[name]
    q = torch.randn(2, h, lq, d).to(dtype)
    k, v = (torch.randn(2, h_kv, lk, d).to(dtype) for _ in range(2))
    options = dict(options)
    if "key_mask" in options:
        km = torch.rand(2, lk) > 0.3
        km[:, 0] = True
        if options["key_mask"] == "empty":
            km[1] = False
        options["key_mask"] = km
    if options.get("attn_mask"):
        am = torch.rand(lq, lk) > 0.4
        am[::3] = False
        options["attn_mask"] = am
    return (q, k, v), options


@pytest.mark.parametrize("name", list(CALLS))
def test_every_backend_gives_the_same_answer(name: str) -> None:
    """sdpa, triton and reference (the backends auto chooses among) against fp64: outputs and every input
    gradient, zeros and zero gradients for rows that see no key on each."""
    (q, k, v), options = _call_inputs(name)
    g = torch.randn(q.shape)
    want, want_grads = _run(masked_attention_ref, q.double(), k.double(), v.double(), g.double(), **options)
    for backend in ("sdpa", "triton", "reference"):
        before = _dispatch.calls[("masked_attention", backend)]
        out, grads = _run(scl_kernels.masked_attention, q, k, v, g, backend=backend, **options)
        assert _dispatch.calls[("masked_attention", backend)] == before + 1, backend
        assert_close(out, want, rtol=REL_TOL[torch.float32], name=f"{backend} out")
        for gname, got, ref in zip(("dq", "dk", "dv"), grads, want_grads, strict=True):
            assert_close(got, ref, rtol=GRAD_SLACK * REL_TOL[torch.float32], name=f"{backend} {gname}")
        empty = ~want.ne(0).any(-1) & ~want_grads[0].ne(0).any(-1)  # rows with no key: zero in fp64
        assert (out[empty] == 0).all() and (grads[0][empty] == 0).all(), backend


def test_sdpa_backend_refuses_lse() -> None:
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="does not return the log-sum-exp"):
        scl_kernels.masked_attention(q, q, q, backend="sdpa", return_lse=True)


def _table(winner: str) -> list[auto.Measured]:
    """A table where ``winner`` is faster at every measured case (masks none and key, both passes)."""
    fast, slow = 1.0, 2.0
    ms = (fast, slow) if winner == "triton" else (slow, fast)
    return [auto.Measured("t", mask, grad, 64, 50, 50, 64, *ms) for mask in ("none", "key") for grad in (False, True)]


@pytest.fixture
def auto_on_cpu(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """backend="auto" choosing per call on CPU tensors too (it does on CUDA only), restoring the table after."""
    monkeypatch.setattr(auto, "applies", lambda device: True)
    saved = list(auto.TABLE)
    yield
    auto.set_table(saved)


@pytest.mark.parametrize("name", ["dense", "key, an empty batch row"])
def test_auto_gives_the_forced_backends_answer(name: str, auto_on_cpu: None) -> None:
    """With a table that makes SDPA the winner, auto runs sdpa; with one that makes ours the winner, triton; each
    answer (fp16 output and gradients) equals the forced backend's bit for bit, and both are within fp16 tolerance
    of fp64."""
    (q, k, v), options = _call_inputs(name, torch.float16)
    g = torch.randn(q.shape).half()
    want, _ = _run(masked_attention_ref, q.double(), k.double(), v.double(), g.double(), **options)
    for winner in ("sdpa", "triton"):
        auto.set_table(_table(winner))
        before = _dispatch.calls[("masked_attention", winner)]
        out, grads = _run(scl_kernels.masked_attention, q, k, v, g, **options)  # backend None: auto
        assert _dispatch.calls[("masked_attention", winner)] == before + 1, f"auto did not choose {winner}"
        forced, forced_grads = _run(scl_kernels.masked_attention, q, k, v, g, backend=winner, **options)
        for got, ref in zip((out, *grads), (forced, *forced_grads), strict=True):
            assert torch.equal(got, ref), winner
        assert_close(out, want, rtol=REL_TOL[torch.float16], atol=ATOL[torch.float16], name=f"auto {winner}")


def test_auto_inside_torch_compile(auto_on_cpu: None) -> None:
    """The choice is made while dynamo traces (fullgraph: no graph break) and gives the eager call's answer."""
    torch._dynamo.reset()
    auto.set_table(_table("sdpa"))
    (q, k, v), options = _call_inputs("key, an empty batch row", torch.float16)

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return scl_kernels.masked_attention(q, k, v, **options) * 2.0

    before = _dispatch.calls[("masked_attention", "sdpa")]
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    assert _dispatch.calls[("masked_attention", "sdpa")] > before, "auto did not choose sdpa while tracing"
    assert_close(got, f(q, k, v), rtol=1e-3, atol=ATOL[torch.float16], name="compiled auto")


def _pick(q: torch.Tensor, k: torch.Tensor, needs_grad: bool = True, **options: object) -> str:
    kw = {"key_mask": None, "frames": None, "attn_mask": None, "is_causal": False, "return_lse": False} | options
    return auto.pick(q, k, needs_grad=needs_grad, **kw)


def test_auto_rule_on_the_seeded_table() -> None:
    """The shipped table (the H200 report's numbers): SDPA for padded text and dense images in training (fwd+bwd),
    ours for the 788-token dense forward and the padded image-to-text forward (where it measured faster), and
    ours for everything the table did not measure or SDPA cannot serve alike."""
    bf16 = torch.bfloat16
    text = torch.empty(32, 12, 50, 64, dtype=bf16)
    km = torch.ones(32, 50, dtype=torch.bool)
    assert _pick(text, text, key_mask=km) == "sdpa"  # text_self_pad fwd+bwd: 1.05 ms ours, 0.274 sdpa
    image = torch.empty(64, 12, 325, 64, dtype=bf16)
    assert _pick(image, image) == "sdpa" and _pick(image, image, needs_grad=False) == "sdpa"
    video = torch.empty(32, 12, 788, 64, dtype=bf16)
    assert _pick(video, video, needs_grad=False) == "triton"  # video_788_dense fwd: 0.197 ms ours, 0.211 sdpa
    assert _pick(video, video) == "sdpa"  # fwd+bwd: 1.43 against 0.771
    img2txt_q, img2txt_k = torch.empty(128, 12, 325, 64, dtype=bf16), torch.empty(128, 12, 50, 64, dtype=bf16)
    km50 = torch.ones(128, 50, dtype=torch.bool)
    assert _pick(img2txt_q, img2txt_k, needs_grad=False, key_mask=km50) == "triton"  # 0.0937 ms against 0.133
    # not candidates: structured masks, causal, grouped heads, fp32, the lse
    assert _pick(video, video, frames=4) == "triton"
    assert _pick(text, text, attn_mask=torch.ones(50, 50, dtype=torch.bool)) == "triton"
    assert _pick(text, text, is_causal=True) == "triton"
    assert _pick(text, text, return_lse=True) == "triton"
    assert _pick(text, text[:, :4]) == "triton"
    assert _pick(text.float(), text.float(), key_mask=km) == "triton"


def test_auto_rule_takes_the_nearest_measured_case(auto_on_cpu: None) -> None:
    """Nearest in log2 of each size, among the cases of the call's own mask kind and pass; nothing measured for
    that kind: ours."""
    short = auto.Measured("short", "none", True, 64, 64, 64, 64, triton_ms=2.0, sdpa_ms=1.0)
    long_ = auto.Measured("long", "none", True, 64, 4096, 4096, 64, triton_ms=1.0, sdpa_ms=2.0)
    auto.set_table([short, long_])
    for length, winner in ((50, "sdpa"), (400, "sdpa"), (700, "triton"), (8192, "triton")):
        x = torch.empty(4, 16, length, 64, dtype=torch.float16)
        assert _pick(x, x) == winner, length
    x = torch.empty(4, 16, 50, 64, dtype=torch.float16)
    assert _pick(x, x, key_mask=torch.ones(4, 50, dtype=torch.bool)) == "triton"  # no "key" case measured
    assert _pick(x, x, needs_grad=False) == "triton"  # no forward-only case measured
    auto.set_table([])
    assert _pick(x, x) == "triton"


def test_seeded_table_is_what_the_gpu_report_writes() -> None:
    """The shipped table is the one ``benchmarks.gpu_report`` would write from the report it names (each shape's
    scl_triton and sdpa wall times, both passes, every case where both ran), and it loads as the rule's table. A
    table the GPU report wrote names its own run instead."""
    import json

    from benchmarks import gpu_report
    from benchmarks import shapes as S

    assert auto.load() == auto.TABLE and auto.TABLE, "crossover.json missing or empty"
    source = re.search(r"benchmarks/results/\S+/report\.json", auto.TABLE_PATH.read_text())
    if source is None:
        pytest.skip("the table names a GPU report run, not a committed report.json")
    rows = json.loads((ROOT / source.group(0)).read_text())["rows"]
    assert gpu_report.crossover_cases(rows, S.ATTN_GPU) == auto.TABLE
    both = {(r["case"], r["pass_"]) for r in rows
            if r["section"] == "attention" and r["impl"] == "sdpa" and r["status"] == "ok"}  # fmt: skip
    assert len(auto.TABLE) == len(both) > 0  # every case where both ran


def test_table_round_trip(tmp_path: Path) -> None:
    cases = [dataclasses.replace(c, case=f"{c.case}-x") for c in auto.TABLE[:3]]
    path = tmp_path / "t.json"
    auto.dump(cases, path, source="test", device="cpu", dtype="float16")
    assert auto.load(path) == cases and auto.load(tmp_path / "missing.json") == []
