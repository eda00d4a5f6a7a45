"""METER co-attention fusion, the heads, and the model's public API besides the step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scl_fast.model.config import FusionConfig
from scl_fast.model.fusion import FusionEncoder
from scl_fast.model.ops import reference_ops
from scl_fast.model.scl import SCLModel
from tests.model import tiny_batch, tiny_config
from tests.utils import assert_close


def _fusion(layers: int = 2, dropout: float = 0.0) -> FusionEncoder:
    torch.manual_seed(0)
    cfg = FusionConfig(width=32, layers=layers, heads=2, intermediate=64, dropout=dropout)
    return FusionEncoder(cfg, text_width=24, vision_width=40, attn_backend="eager").double()


def _inputs(b: int = 3, lt: int = 7, lv: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    text = torch.randn(b, lt, 32, dtype=torch.float64)
    mask = torch.arange(lt)[None] < torch.tensor([lt, 4, 1])[:b, None]  # (B, L): full, half, CLS only
    return text, mask, torch.randn(b, lv, 32, dtype=torch.float64)


def _attend(x: torch.Tensor, ctx: torch.Tensor, mod, key_mask: torch.Tensor | None) -> torch.Tensor:
    """BERT attention sub-block written out: projections, masked softmax, output projection, post-LN."""
    b, n, w = x.shape
    h = mod.self.heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, -1, h, w // h).transpose(1, 2)

    q, k, v = split(mod.self.query(x)), split(mod.self.key(ctx)), split(mod.self.value(ctx))
    s = q @ k.transpose(-1, -2) / (w // h) ** 0.5
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    a = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, n, w)
    return mod.output.LayerNorm(mod.output.dense(a) + x)


def _layer(layer, x: torch.Tensor, other: torch.Tensor, self_mask, other_mask) -> torch.Tensor:
    h = _attend(x, x, layer.attention, self_mask)
    h = _attend(h, other, layer.crossattention, other_mask)
    return layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(h))) + h)


def test_fusion_matches_written_out_meter() -> None:
    """Token types (text 0, image 1), then per layer both streams read the other's PREVIOUS output; text
    keys masked in text self-attention and in image->text cross-attention, image keys never."""
    fusion = _fusion()
    text, mask, image = _inputs()
    x = text + fusion.token_type_embeddings.weight[0]
    y = image + fusion.token_type_embeddings.weight[1]
    for tl, il in zip(fusion.text_layers, fusion.image_layers, strict=True):
        x, y = _layer(tl, x, y, mask, None), _layer(il, y, x, None, mask)
    out_t, out_v = fusion(text, mask, image)
    assert_close(out_t, x, rtol=1e-12, name="text stream")
    assert_close(out_v, y, rtol=1e-12, name="image stream")


def test_padding_is_invisible() -> None:
    """Whatever sits at padded text positions changes no real output of either stream."""
    fusion = _fusion()
    text, mask, image = _inputs()
    garbage = text.clone()
    garbage[~mask] = 100.0 * torch.randn_like(garbage[~mask])
    a_t, a_v = fusion(text, mask, image)
    b_t, b_v = fusion(garbage, mask, image)
    assert_close(b_v, a_v, rtol=1e-12, name="image stream")
    assert_close(b_t[mask], a_t[mask], rtol=1e-12, name="real text tokens")


def test_backends_and_batch_independence() -> None:
    fusion = _fusion()
    text, mask, image = _inputs()
    ref_t, ref_v = fusion(text, mask, image)
    for m in fusion.modules():
        if hasattr(m, "attn_backend"):
            m.attn_backend = "sdpa"
    perm = torch.tensor([2, 0, 1])
    out_t, out_v = fusion(text[perm], mask[perm], image[perm])
    assert_close(out_t, ref_t[perm], rtol=1e-12, name="text")
    assert_close(out_v, ref_v[perm], rtol=1e-12, name="image")


@pytest.mark.parametrize("layers", [1, 2])
def test_last_layer_rows(layers: int) -> None:
    """Computing only some rows of the last layer gives exactly those rows of the full output."""
    fusion = _fusion(layers=layers)
    text, mask, image = _inputs()
    full_t, full_v = fusion(text, mask, image)
    part_t, part_v = fusion(text, mask, image, text_rows=slice(0, 1), image_rows=slice(0, 3))
    assert part_t.shape == (3, 1, 32) and part_v.shape == (3, 3, 32)
    assert_close(part_t, full_t[:, :1], rtol=1e-12, name="text CLS")
    assert_close(part_v, full_v[:, :3], rtol=1e-12, name="image CLS rows")


def test_fusion_bad_shapes() -> None:
    fusion = _fusion()
    text, mask, image = _inputs()
    with pytest.raises(ValueError, match="must agree"):
        fusion(text, mask, image[:2])


def _model(**loss: object) -> tuple[SCLModel, tuple[torch.Tensor, ...]]:
    cfg = tiny_config(**loss)
    torch.manual_seed(0)
    return SCLModel(cfg).double(), tiny_batch(cfg, batch=4, frames=1, dtype=torch.float64)


def test_encoders_and_itm_scores() -> None:
    model, (pixels, ids, attention, _) = _model()
    v = model.encode_image(pixels)
    t = model.encode_text(ids, attention)
    assert v.shape == t.shape == (4, 16)
    assert_close(v.norm(dim=-1), torch.ones(4, dtype=torch.float64), rtol=1e-12, name="|v|")
    assert_close(t.norm(dim=-1), torch.ones(4, dtype=torch.float64), rtol=1e-12, name="|t|")
    assert_close(model.encode_image(pixels[:, 0]), v, rtol=1e-12, name="(B, 3, H, W) is one frame")
    scores = model.itm_scores(pixels, ids, attention)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    # the score of pair i does not depend on the other pairs of the batch
    assert_close(model.itm_scores(pixels[1:3], ids[1:3], attention[1:3]), scores[1:3], rtol=1e-10, name="rows")


def test_video_global_is_mean_of_frame_cls() -> None:
    """encode_image of a video = ITC projection of the mean frame CLS; F identical frames (zero temporal
    embedding) = the image."""
    model, (pixels, *_) = _model()
    with torch.no_grad():
        model.vision.temporal_embedding.normal_(std=0.5)
    video = torch.randn(4, 3, 3, 32, 32, dtype=torch.float64)
    cls = model.fusion.image_proj(model.vision(video)[:, :3])  # (B, F, W)
    expected = F.normalize(model.itc.image(cls.mean(dim=1)), dim=-1)
    first_only = F.normalize(model.itc.image(cls[:, 0]), dim=-1)
    got = model.encode_image(video)
    assert_close(got, expected, rtol=1e-12, name="mean of frame CLS")
    assert (got - first_only).abs().max() > 1e-6
    with torch.no_grad():
        model.vision.temporal_embedding.zero_()
    assert_close(model.encode_image(pixels.expand(-1, 3, -1, -1, -1)), model.encode_image(pixels), rtol=1e-10,
                 name="F identical frames")


def test_param_groups() -> None:
    model, _ = _model()
    groups = model.param_groups(lr=1e-3, weight_decay=0.01, head_lr_mult=5.0)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            encoder = n.startswith(("vision.", "text."))
            assert g["lr"] == pytest.approx(1e-3 if encoder else 5e-3), n
            no_decay = p.ndim < 2 or "embedding" in n
            assert g["weight_decay"] == (0.0 if no_decay else 0.01), n
    no_decay_names = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"itc.temperature", "vision.class_embedding", "text.embeddings.word_embeddings.weight",
            "fusion.token_type_embeddings.weight", "fusion.text_layers.0.output.LayerNorm.weight"} <= no_decay_names


def test_tied_mlm_decoder() -> None:
    cfg = tiny_config()
    cfg.tie_mlm_decoder = True
    model = SCLModel(cfg)
    assert model.mlm_head.decoder.weight is model.text.embeddings.word_embeddings.weight
    assert SCLModel(tiny_config()).mlm_head.decoder.weight is not None


def test_temperature_is_clamped() -> None:
    model, batch = _model()
    with torch.no_grad():
        model.itc.temperature.fill_(5.0)
    with reference_ops():  # float64: the PyTorch references (the kernels' own float64 path is theirs to test)
        out = model(*batch, generator=torch.Generator().manual_seed(0))
        out.loss.backward()
    hi = model.cfg.loss.itc_temperature_range[1]
    assert model.itc.temperature.item() == pytest.approx(hi) and out.metrics["temperature"].item() == pytest.approx(hi)
    assert model.itc.temperature.grad is not None and model.itc.temperature.grad.abs() > 0


def test_meta_device_step() -> None:
    """The model builds and runs a step on the meta device (the FLOP counter's path): shapes only."""
    cfg = tiny_config()
    model = SCLModel(cfg, device="meta")
    batch = tiny_batch(cfg, batch=4)
    steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(0)).to("meta")
    out = model(*(t.to("meta") for t in batch), step_inputs=steps)
    assert out.loss.is_meta and out.loss.shape == ()
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.endswith("key.bias"))


def test_input_errors() -> None:
    model, (pixels, ids, attention, special) = _model()
    with pytest.raises(ValueError, match="input_ids must be"):
        model(pixels, ids[:3], attention[:3], special[:3])
    with pytest.raises(ValueError, match="schedule"):
        model(pixels, ids, attention, special, schedule="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 pairs"):
        model(pixels[:1], ids[:1], attention[:1], special[:1])
    zero, batch = _model(itm_weight=0.0, mlm_weight=0.0, itc_weight=0.0, scl_weight=0.0)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        zero(*batch)
