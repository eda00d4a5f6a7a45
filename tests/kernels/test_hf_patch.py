"""scl_kernels.patch_hf: HF BERT / RoBERTa / ViT / CLIP vision with their attention through masked_attention.

Tiny random configs in fp32; the patched model (Triton kernels under the interpreter on CPU) must give the
unpatched model's outputs, with text padding going through the kernel's key mask.
"""

from __future__ import annotations

import pytest
import torch

import scl_kernels
from scl_kernels import _dispatch
from tests.utils import assert_close

transformers = pytest.importorskip("transformers")

TEXT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
VISION = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": 32, "patch_size": 8, "num_channels": 3}  # fmt: skip


def _text_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 99, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _build(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    if name == "bert":
        model = transformers.BertModel(transformers.BertConfig(**TEXT))
        inputs = _text_inputs()
    elif name == "roberta":
        model = transformers.RobertaModel(transformers.RobertaConfig(**TEXT, pad_token_id=1))
        inputs = _text_inputs()
    elif name == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(**VISION))
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    else:
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION))
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    return model.eval(), inputs


@pytest.mark.parametrize("name", ["bert", "roberta", "vit", "clip_vision"])
def test_patched_equals_unpatched(name: str) -> None:
    model, inputs = _build(name)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
    scl_kernels.patch_hf(model, backend="triton")
    before = _dispatch.calls[("masked_attention", "triton")]
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
    calls = _dispatch.calls[("masked_attention", "triton")] - before
    assert calls == model.config.num_hidden_layers, f"{calls} masked_attention calls, one per layer expected"
    assert_close(got, want, rtol=1e-5, name=name)
    scl_kernels.unpatch_hf(model)
    with torch.no_grad():
        back = model(**inputs).last_hidden_state
    assert _dispatch.calls[("masked_attention", "triton")] - before == calls, "unpatch_hf left the kernel in place"
    assert_close(back, want, rtol=1e-5, name=f"{name} unpatched")


def test_padding_goes_through_key_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF's (B, 1, 1, Lk) padding mask reaches the kernel as key_mask, not as a dense attn_mask."""
    seen = []
    real = scl_kernels.hf.masked_attention

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append((kwargs.get("key_mask") is not None, kwargs.get("attn_mask") is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(scl_kernels.hf, "masked_attention", spy)
    model, inputs = _build("bert")
    scl_kernels.patch_hf(model, backend="reference")
    with torch.no_grad():
        model(**inputs)
    assert seen and all(km or not am for km, am in seen), seen


def test_gradients_through_patched_model() -> None:
    model, inputs = _build("bert")
    model.set_attn_implementation("eager")
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    scl_kernels.patch_hf(model, backend="triton")
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w.norm() < 1e-6:  # key biases: the softmax ignores them, gradient 0 + rounding
            assert g.abs().max() < 1e-6
        else:
            assert_close(g, w, rtol=5e-5, name=f"grad {i}")


def test_rejects_non_hf_model() -> None:
    with pytest.raises(ValueError, match="PreTrainedModel"):
        scl_kernels.patch_hf(torch.nn.Linear(2, 2))


def test_training_mode_dropout_runs_fused() -> None:
    """In train mode BERT's attention dropout (0.1) goes into the kernel, not to a fallback: finite outputs and
    gradients, and two calls draw different masks."""
    model, inputs = _build("bert")
    model.train()
    scl_kernels.patch_hf(model, backend="triton")
    before = _dispatch.calls[("masked_attention", "triton")]
    out = model(**inputs).last_hidden_state
    out.pow(2).mean().backward()
    assert _dispatch.calls[("masked_attention", "triton")] - before == model.config.num_hidden_layers
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        again = model(**inputs).last_hidden_state
    assert not torch.equal(again, out.detach())


LLAMA = {"vocab_size": 99, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip


@pytest.mark.parametrize("padded", [False, True])
def test_gqa_decoder_without_repeat_interleave(monkeypatch: pytest.MonkeyPatch, padded: bool) -> None:
    """A Llama-style decoder with 2 query heads per K/V head: patched equals eager, its K/V reach the kernel with
    their own 2 heads (no repeat_interleave), unpadded text goes in as is_causal (tiles past the diagonal skipped)
    and left-padded text as HF's causal bool mask."""
    seen = []
    real = scl_kernels.hf.masked_attention

    def spy(q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append((q.shape[1], k.shape[1], v.shape[1], kwargs["is_causal"], kwargs["attn_mask"] is not None))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(scl_kernels.hf, "masked_attention", spy)
    model = transformers.LlamaModel(transformers.LlamaConfig(**LLAMA)).eval()
    inputs = {"input_ids": torch.randint(3, 99, (2, 13))}
    if padded:
        mask = torch.ones(2, 13, dtype=torch.long)
        mask[1, :4] = 0  # left padding, as generation pads
        inputs["attention_mask"] = mask
    model.set_attn_implementation("eager")
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
    scl_kernels.patch_hf(model, backend="triton")
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
    assert seen == [(4, 2, 2, not padded, padded)] * model.config.num_hidden_layers, seen
    valid = inputs.get("attention_mask", torch.ones(2, 13)).bool()  # padded query rows: HF's own convention there
    assert_close(got[valid], want[valid], rtol=1e-5, name="llama")
