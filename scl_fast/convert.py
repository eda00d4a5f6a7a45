"""Initialise our encoders from local Hugging Face checkpoint folders (no network, ``transformers`` optional).

Supported folders (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, sharded or not):

- text: ``bert`` (BERT, MiniLM), ``roberta`` / ``xlm-roberta`` (position offset ``pad_token_id + 1``, one token
  type) -> :class:`~scl_fast.model.TextEncoder`, whose parameter names already mirror ``BertModel``;
- vision: ``clip_vision_model`` and full ``clip`` folders (class embedding, bias-free patch conv, ``ln_pre``,
  quick_gelu) and ``vit`` (cls token, patch conv *with* bias, no ``ln_pre``, gelu) ->
  :class:`~scl_fast.model.VisionEncoder`.

Our vision encoder has no patch-conv bias (OpenAI CLIP has none). ViT's bias is added to every patch token and
so is the patch position embedding, so the bias is folded into the patch rows of ``positional_embedding``:
exact, and it stays exact under the bicubic resize to other resolutions (bicubic weights sum to one).
CLIP's ``last_hidden_state`` in HF is the encoder output *before* ``post_layernorm`` (HF applies it to the pooled
CLS only); ours applies ``ln_post`` to every token, as METER/SCL use CLIP, so ours equals
``post_layernorm(last_hidden_state)``.

A vision config with fewer ``layers`` than the checkpoint keeps the first ones (the paper keeps 11 of CLIP's 12);
an ``image_size`` other than the checkpoint's resizes the position grid bicubically; the temporal embedding is not
in any image checkpoint and keeps its initial value (zero), so a loaded encoder starts out exactly as the image
model was, for videos too.

CLI: ``python -m scl_fast.convert --text PATH --vision PATH --out FILE.safetensors`` writes our state dict
(``text_encoder.*`` and ``vision_encoder.*``) with both resolved configs in the file's metadata;
:func:`load_converted` reads it back into a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scl_fast.errors import run_cli
from scl_fast.model.config import ModelConfig, TextConfig, VisionConfig
from scl_fast.model.text import TextEncoder
from scl_fast.model.vision import VisionEncoder

TEXT_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta")
VISION_TYPES: tuple[str, ...] = ("clip_vision_model", "clip", "vit")

# Class defaults of the HF configs, for keys a config.json leaves out (nested CLIP vision configs are written as a
# diff against these).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
             "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
             "position_embedding_type": "absolute"},
    "roberta": {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 1,
                "position_embedding_type": "absolute"},
    "clip_vision_model": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "vit": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
            "qkv_bias": True},
}
_HF_DEFAULTS["xlm-roberta"] = {**_HF_DEFAULTS["roberta"], "vocab_size": 250002}

_TEXT_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_VISION_ACT = {"gelu": "gelu", "quick_gelu": "quick_gelu"}
# Keys of a checkpoint that have no counterpart in our encoders, on purpose (buffers, poolers, task heads).
_IGNORED = re.compile(r"(^|\.)(position_ids|token_type_ids|pooler\.|mask_token$)|^(cls|lm_head|classifier|"
                      r"visual_projection|text_projection|logit_scale|text_model)\b")


@dataclass
class HFCheckpoint:
    """A local HF checkpoint: its model type, the (architecture-level) config and the weights with the model
    prefix (``bert.``, ``vision_model.``, ``vit.`` ...) already stripped."""

    path: Path
    model_type: str
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    prefix: str = ""
    used: set[str] = field(default_factory=set)
    """Keys read so far (the rest is reported as not used)."""

    def take(self, *names: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The first of ``names`` present (aliases of one tensor across HF versions), checked against ``shape``;
        the ValueError names the checkpoint key."""
        for name in names:
            if name in self.weights:
                t = self.weights[name]
                if shape is not None and tuple(t.shape) != tuple(shape):
                    raise ValueError(f"checkpoint {self.path}: key {self.prefix}{name} has shape {tuple(t.shape)}, "
                                     f"expected {tuple(shape)} from its config.json")
                self.used.add(name)
                return t
        also = f" (also tried {[self.prefix + n for n in names[1:]]})" if len(names) > 1 else ""
        raise ValueError(f"checkpoint {self.path} is missing key {self.prefix}{names[0]}{also}")


@dataclass
class LoadReport:
    """What a load did: checkpoint keys used and checkpoint keys left out (ignored heads, dropped layers)."""

    path: str
    model_type: str
    used: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = f"; not used: {_summarise(self.unused)}" if self.unused else ""
        return f"{self.path} ({self.model_type}): {len(self.used)} tensors loaded{extra}"


def _summarise(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... (+{len(keys) - limit})" if len(keys) > limit else "")


# ----------------------------------------------------------------------------------------------- reading folders


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder as a dict."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"not a Hugging Face checkpoint folder (no config.json): {path}")
    with open(cfg_file) as f:
        return json.load(f)


def _weight_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            with open(path / index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [path / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise ValueError(f"no weights in {path}: expected model.safetensors, pytorch_model.bin or a sharded index")


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, on the CPU (safetensors preferred; ``.bin`` read with
    ``weights_only=True``, so a pickle cannot run code)."""
    out: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(path)):
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            out.update(load_file(str(file), device="cpu"))
        else:
            out.update(torch.load(file, map_location="cpu", weights_only=True))
    return out


_ARCH_NAMES = (("xlmroberta", "xlm-roberta"), ("roberta", "roberta"), ("bert", "bert"),
               ("clipvision", "clip_vision_model"), ("clip", "clip"), ("vit", "vit"))


def _read_config(path: str | Path, kind: str) -> tuple[str, dict[str, Any]]:
    """(model_type, config with the HF class defaults filled in) of a text or vision folder; a full CLIP folder
    gives its nested vision config."""
    path = Path(path)
    raw = read_hf_config(path)
    allowed = TEXT_TYPES if kind == "text" else VISION_TYPES
    model_type = raw.get("model_type")
    if model_type is None:  # very old configs: infer it from the architecture name
        arch = " ".join(raw.get("architectures") or []).lower().replace("-", "").replace("_", "")
        model_type = next((t for needle, t in _ARCH_NAMES if needle in arch), None)
    if model_type not in allowed:
        raise ValueError(f"unsupported {kind} architecture {model_type!r} in {path / 'config.json'}; "
                         f"supported model_type values: {allowed}")
    if model_type == "clip":  # full CLIPModel: the vision tower's config is nested, its weights under vision_model.
        raw, model_type = dict(raw.get("vision_config") or {}), "clip_vision_model"
    return model_type, {**_HF_DEFAULTS[model_type], **raw, "model_type": model_type}


def _strip_prefix(weights: dict[str, torch.Tensor], anchor: str, path: Path) -> tuple[str, dict]:
    """Find the model prefix (``bert.``, ``vision_model.`` ...) from an anchor key and strip it."""
    found = sorted({k[: -len(anchor)] for k in weights
                    if k.endswith(anchor) and (len(k) == len(anchor) or k[-len(anchor) - 1] == ".")})
    if not found:
        raise ValueError(f"checkpoint {path} is missing key {anchor} (no tensor name ends with it)")
    if len(found) > 1:
        raise ValueError(f"checkpoint {path} holds several candidate encoders (prefixes {found}); pass a folder "
                         "with one")
    prefix = found[0]
    return prefix, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def read_text_checkpoint(path: str | Path) -> HFCheckpoint:
    """A BERT/RoBERTa/MiniLM folder with defaults filled in and the model prefix stripped."""
    model_type, config = _read_config(path, "text")
    prefix, weights = _strip_prefix(read_hf_weights(path), "embeddings.word_embeddings.weight", Path(path))
    return HFCheckpoint(Path(path), model_type, config, weights, prefix)


def read_vision_checkpoint(path: str | Path) -> HFCheckpoint:
    """A CLIP (vision-only or full) or ViT folder with defaults filled in and the model prefix stripped."""
    model_type, config = _read_config(path, "vision")
    anchor = "embeddings.class_embedding" if model_type == "clip_vision_model" else "embeddings.cls_token"
    prefix, weights = _strip_prefix(read_hf_weights(path), anchor, Path(path))
    return HFCheckpoint(Path(path), model_type, config, weights, prefix)


# ------------------------------------------------------------------------------------------------------- configs


def _mask_token_id(path: Path, config: dict[str, Any]) -> int:
    """[MASK]/<mask> id from the folder's tokenizer files (config.json does not hold it), else the usual id."""
    names = ("[MASK]", "<mask>")
    tok = path / "tokenizer.json"
    if tok.is_file():
        with open(tok) as f:
            data = json.load(f)
        for added in data.get("added_tokens", []):
            if added.get("content") in names:
                return int(added["id"])
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            for name in names:
                if name in vocab:
                    return int(vocab[name])
    vocab_txt = path / "vocab.txt"
    if vocab_txt.is_file():
        with open(vocab_txt, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.rstrip("\n") in names:
                    return i
    vocab_size = int(config["vocab_size"])
    if config["model_type"] == "bert" and vocab_size > 103:
        return 103  # BERT-uncased and every MiniLM that uses its vocabulary
    return vocab_size - 1  # RoBERTa puts <mask> last (50264 of 50265)


def _text_config(ckpt: HFCheckpoint, **overrides: Any) -> TextConfig:
    c = ckpt.config
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type={c['position_embedding_type']!r} in {ckpt.path} is not "
                         "supported (absolute only)")
    act = c["hidden_act"]
    if act not in _TEXT_ACT:
        raise ValueError(f"hidden_act={act!r} in {ckpt.path} is not supported; one of {sorted(_TEXT_ACT)}")
    pad = int(c["pad_token_id"] if c.get("pad_token_id") is not None else 0)
    values = dict(
        vocab_size=int(c["vocab_size"]), width=int(c["hidden_size"]), layers=int(c["num_hidden_layers"]),
        heads=int(c["num_attention_heads"]), intermediate=int(c["intermediate_size"]),
        max_positions=int(c["max_position_embeddings"]), type_vocab_size=int(c["type_vocab_size"]),
        pad_token_id=pad, mask_token_id=_mask_token_id(ckpt.path, c),
        position_offset=0 if ckpt.model_type == "bert" else pad + 1, act=_TEXT_ACT[act],
        layer_norm_eps=float(c["layer_norm_eps"]), dropout=float(c["hidden_dropout_prob"]),
    )
    values.update(overrides)
    return TextConfig(**values)


def _vision_config(ckpt: HFCheckpoint, **overrides: Any) -> VisionConfig:
    c = ckpt.config
    act = c["hidden_act"]
    if act not in _VISION_ACT:
        raise ValueError(f"hidden_act={act!r} in {ckpt.path} is not supported; one of {sorted(_VISION_ACT)}")
    if int(c.get("num_channels", 3)) != 3:
        raise ValueError(f"num_channels must be 3, got {c['num_channels']} in {ckpt.path}")
    width = int(c["hidden_size"])
    values = dict(
        image_size=int(c["image_size"]), patch_size=int(c["patch_size"]), width=width,
        layers=int(c["num_hidden_layers"]), heads=int(c["num_attention_heads"]),
        mlp_ratio=int(c["intermediate_size"]) / width, act=_VISION_ACT[act],
        ln_pre=ckpt.model_type == "clip_vision_model", layer_norm_eps=float(c["layer_norm_eps"]),
    )
    values.update(overrides)
    return VisionConfig(**values)


def text_config_from_hf(path: str | Path, **overrides: Any) -> TextConfig:
    """Our ``TextConfig`` for a local BERT/RoBERTa/MiniLM folder (``overrides`` e.g. ``dropout=0.0``)."""
    model_type, config = _read_config(path, "text")
    return _text_config(HFCheckpoint(Path(path), model_type, config, {}), **overrides)


def vision_config_from_hf(path: str | Path, **overrides: Any) -> VisionConfig:
    """Our ``VisionConfig`` for a local CLIP/ViT folder (``overrides`` e.g. ``layers=11, image_size=288``)."""
    model_type, config = _read_config(path, "vision")
    return _vision_config(HFCheckpoint(Path(path), model_type, config, {}), **overrides)


# Fields that must equal the checkpoint's, and those that may be smaller (first layers / rows kept).
_TEXT_EXACT = ("vocab_size", "width", "heads", "intermediate", "type_vocab_size", "pad_token_id", "position_offset",
               "act", "layer_norm_eps")
_TEXT_AT_MOST = ("layers", "max_positions")
_VISION_EXACT = ("patch_size", "width", "heads", "mlp_ratio", "act", "ln_pre", "layer_norm_eps")
_VISION_AT_MOST = ("layers",)


def _check_compatible(section: str, ours: Any, theirs: Any, exact: tuple[str, ...], at_most: tuple[str, ...],
                      path: Path) -> None:
    """ValueError listing every field of ``ours`` that cannot hold the checkpoint, with the fix."""
    bad = [f"{section}.{n}={getattr(ours, n)!r} (checkpoint: {getattr(theirs, n)!r})" for n in exact
           if getattr(ours, n) != getattr(theirs, n)]
    bad += [f"{section}.{n}={getattr(ours, n)!r} (checkpoint has only {getattr(theirs, n)!r})" for n in at_most
            if getattr(ours, n) > getattr(theirs, n)]
    if bad:
        hint = " ".join(f"--model.{section}.{n} {getattr(theirs, n)}" for n in exact + at_most
                        if getattr(ours, n) != getattr(theirs, n) and (n in exact or getattr(ours, n) >
                                                                       getattr(theirs, n)))
        raise ValueError(f"config does not match checkpoint {path}: {'; '.join(bad)}. Set: {hint}")


# ------------------------------------------------------------------------------------------------ state dicts


def _linear(ckpt: HFCheckpoint, hf: str | tuple[str, ...], ours: str, out_f: int, in_f: int
            ) -> dict[str, torch.Tensor]:
    """A Linear's weight (out_f, in_f) and bias (out_f,), from the first present of the name aliases ``hf``."""
    names = (hf,) if isinstance(hf, str) else hf
    return {f"{ours}.weight": ckpt.take(*(f"{n}.weight" for n in names), shape=(out_f, in_f)),
            f"{ours}.bias": ckpt.take(*(f"{n}.bias" for n in names), shape=(out_f,))}


def _layer_norm(ckpt: HFCheckpoint, hf: str | tuple[str, ...], ours: str, width: int) -> dict[str, torch.Tensor]:
    """A LayerNorm's weight and bias (old BERT checkpoints call them gamma and beta)."""
    names = (hf,) if isinstance(hf, str) else hf
    return {f"{ours}.weight": ckpt.take(*(f"{n}.weight" for n in names), *(f"{n}.gamma" for n in names),
                                        shape=(width,)),
            f"{ours}.bias": ckpt.take(*(f"{n}.bias" for n in names), *(f"{n}.beta" for n in names), shape=(width,))}


def text_state_dict(ckpt: HFCheckpoint, cfg: TextConfig) -> dict[str, torch.Tensor]:
    """Our TextEncoder's state dict from a text checkpoint. The names are BertModel's already, so this copies,
    checks every shape against config.json, cuts the position table to ``cfg.max_positions`` and keeps the first
    ``cfg.layers`` layers."""
    c = ckpt.config
    w, inter = cfg.width, cfg.intermediate
    sd: dict[str, torch.Tensor] = {}
    e = "embeddings"
    sd[f"{e}.word_embeddings.weight"] = ckpt.take(f"{e}.word_embeddings.weight", shape=(cfg.vocab_size, w))
    pos = ckpt.take(f"{e}.position_embeddings.weight", shape=(int(c["max_position_embeddings"]), w))
    sd[f"{e}.position_embeddings.weight"] = pos[: cfg.max_positions]
    sd[f"{e}.token_type_embeddings.weight"] = ckpt.take(f"{e}.token_type_embeddings.weight",
                                                        shape=(cfg.type_vocab_size, w))
    sd.update(_layer_norm(ckpt, f"{e}.LayerNorm", f"{e}.LayerNorm", w))
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}"
        for sub in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            sd.update(_linear(ckpt, f"{p}.{sub}", f"{p}.{sub}", w, w))
        sd.update(_linear(ckpt, f"{p}.intermediate.dense", f"{p}.intermediate.dense", inter, w))
        sd.update(_linear(ckpt, f"{p}.output.dense", f"{p}.output.dense", w, inter))
        for sub in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd.update(_layer_norm(ckpt, f"{p}.{sub}", f"{p}.{sub}", w))
    return sd


def _resize_grid(pos: torch.Tensor, size: int) -> torch.Tensor:
    """(g*g, W) patch position grid -> (size*size, W), bicubic as ``VisionEncoder.patch_positions``."""
    g = round(pos.shape[0] ** 0.5)
    if g == size:
        return pos
    grid = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()  # (1, W, g, g)
    grid = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).to(pos.dtype)
    return grid.permute(0, 2, 3, 1).reshape(size * size, -1)


def _vit_qkv(ckpt: HFCheckpoint, i: int, w: int) -> list[dict[str, torch.Tensor]]:
    """q, k, v of ViT block ``i``; zero biases when the checkpoint was trained without (``qkv_bias: false``)."""
    out = []
    for legacy, new in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        names = (f"encoder.layer.{i}.attention.attention.{legacy}", f"layers.{i}.attention.{new}")
        weight = ckpt.take(*(f"{n}.weight" for n in names), shape=(w, w))
        if ckpt.config.get("qkv_bias", True):
            bias = ckpt.take(*(f"{n}.bias" for n in names), shape=(w,))
        else:
            bias = weight.new_zeros(w)
        out.append({"weight": weight, "bias": bias})
    return out


def vision_state_dict(ckpt: HFCheckpoint, cfg: VisionConfig) -> dict[str, torch.Tensor]:
    """Our VisionEncoder's state dict (without ``temporal_embedding``, which no image checkpoint has) from a CLIP
    or ViT checkpoint: q/k/v packed into ``in_proj``, the position grid resized to ``cfg.image_size``, ViT's
    patch-conv bias folded into the patch positions, the first ``cfg.layers`` blocks kept."""
    c = ckpt.config
    w, p, hidden = cfg.width, cfg.patch_size, int(cfg.width * cfg.mlp_ratio)
    rows = (int(c["image_size"]) // int(c["patch_size"])) ** 2 + 1
    sd: dict[str, torch.Tensor] = {}
    clip = ckpt.model_type == "clip_vision_model"
    if clip:
        sd["class_embedding"] = ckpt.take("embeddings.class_embedding", shape=(w,))
        sd["patch_embed.weight"] = ckpt.take("embeddings.patch_embedding.weight", shape=(w, 3, p, p))
        pos = ckpt.take("embeddings.position_embedding.weight", shape=(rows, w))
        bias = None
        sd.update(_layer_norm(ckpt, ("pre_layrnorm", "pre_layernorm"), "ln_pre", w))  # HF spells it pre_layrnorm
        sd.update(_layer_norm(ckpt, "post_layernorm", "ln_post", w))
    else:
        sd["class_embedding"] = ckpt.take("embeddings.cls_token", shape=(1, 1, w)).reshape(w)
        sd["patch_embed.weight"] = ckpt.take("embeddings.patch_embeddings.projection.weight", shape=(w, 3, p, p))
        bias = ckpt.take("embeddings.patch_embeddings.projection.bias", shape=(w,))
        pos = ckpt.take("embeddings.position_embeddings", shape=(1, rows, w))[0]
        sd.update(_layer_norm(ckpt, "layernorm", "ln_post", w))
    patches = _resize_grid(pos[1:], cfg.image_size // cfg.patch_size)
    sd["positional_embedding"] = torch.cat([pos[:1], patches if bias is None else patches + bias])
    for i in range(cfg.layers):
        o = f"blocks.{i}"
        if clip:
            h = f"encoder.layers.{i}"
            qkv = [{"weight": ckpt.take(f"{h}.self_attn.{n}_proj.weight", shape=(w, w)),
                    "bias": ckpt.take(f"{h}.self_attn.{n}_proj.bias", shape=(w,))} for n in "qkv"]
            sd.update(_linear(ckpt, f"{h}.self_attn.out_proj", f"{o}.attn.proj", w, w))
            sd.update(_layer_norm(ckpt, f"{h}.layer_norm1", f"{o}.ln_1", w))
            sd.update(_layer_norm(ckpt, f"{h}.layer_norm2", f"{o}.ln_2", w))
            sd.update(_linear(ckpt, f"{h}.mlp.fc1", f"{o}.mlp.fc1", hidden, w))
            sd.update(_linear(ckpt, f"{h}.mlp.fc2", f"{o}.mlp.fc2", w, hidden))
        else:
            # files written by save_pretrained use the legacy names (encoder.layer.N...); transformers 5 modules
            # name the same tensors layers.N... in memory, so a raw state_dict() loads too
            h, n = f"encoder.layer.{i}", f"layers.{i}"
            qkv = _vit_qkv(ckpt, i, w)
            sd.update(_linear(ckpt, (f"{h}.attention.output.dense", f"{n}.attention.o_proj"), f"{o}.attn.proj", w, w))
            sd.update(_layer_norm(ckpt, (f"{h}.layernorm_before", f"{n}.layernorm_before"), f"{o}.ln_1", w))
            sd.update(_layer_norm(ckpt, (f"{h}.layernorm_after", f"{n}.layernorm_after"), f"{o}.ln_2", w))
            sd.update(_linear(ckpt, (f"{h}.intermediate.dense", f"{n}.mlp.fc1"), f"{o}.mlp.fc1", hidden, w))
            sd.update(_linear(ckpt, (f"{h}.output.dense", f"{n}.mlp.fc2"), f"{o}.mlp.fc2", w, hidden))
        for part in ("weight", "bias"):
            sd[f"{o}.attn.in_proj.{part}"] = torch.cat([t[part] for t in qkv])  # CLIP's packed (3W, ...) order
    return sd


# ---------------------------------------------------------------------------------------------------- loading


def _load(module: nn.Module, ckpt: HFCheckpoint, sd: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
          ) -> LoadReport:
    """Copy ``sd`` into ``module``: every parameter and buffer but ``skip`` must be given, with its shape."""
    own = {k: v for k, v in module.state_dict().items() if k not in skip}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:  # a converter bug or a model change, not a bad checkpoint
        raise ValueError(f"converted state dict of {ckpt.path} does not fit {type(module).__name__}: "
                         f"missing {missing}, unexpected {unexpected}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"converted {k} from {ckpt.path} has shape {tuple(v.shape)}, "
                             f"{type(module).__name__} needs {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
    unused = sorted(ckpt.prefix + k for k in ckpt.weights if k not in ckpt.used and not _IGNORED.search(k))
    return LoadReport(str(ckpt.path), ckpt.model_type, sorted(ckpt.prefix + k for k in ckpt.used), unused)


def load_text_weights(encoder: TextEncoder, path: str | Path | HFCheckpoint) -> LoadReport:
    """Load a BERT/RoBERTa/MiniLM folder into an existing ``TextEncoder`` (in place). Its config must match the
    checkpoint's architecture (fewer layers / positions allowed: the first ones are kept)."""
    ckpt = path if isinstance(path, HFCheckpoint) else read_text_checkpoint(path)
    _check_compatible("text", encoder.cfg, _text_config(ckpt), _TEXT_EXACT, _TEXT_AT_MOST, ckpt.path)
    return _load(encoder, ckpt, text_state_dict(ckpt, encoder.cfg))


def load_vision_weights(encoder: VisionEncoder, path: str | Path | HFCheckpoint) -> LoadReport:
    """Load a CLIP/ViT folder into an existing ``VisionEncoder`` (in place). Fewer layers keep the first blocks;
    another ``image_size`` resizes the position grid; ``temporal_embedding`` is left as it is."""
    ckpt = path if isinstance(path, HFCheckpoint) else read_vision_checkpoint(path)
    _check_compatible("vision", encoder.cfg, _vision_config(ckpt), _VISION_EXACT, _VISION_AT_MOST, ckpt.path)
    return _load(encoder, ckpt, vision_state_dict(ckpt, encoder.cfg), skip=("temporal_embedding",))


def _uninitialised(kind: type[nn.Module], cfg: Any, attn_backend: str) -> nn.Module:
    """The module with allocated but uninitialised storage: every tensor is overwritten by the checkpoint, and the
    random init of a BERT-base (110M normal draws) would cost seconds for nothing."""
    return kind(cfg, attn_backend=attn_backend, device="meta").to_empty(device="cpu")


def load_text_encoder(path: str | Path, cfg: TextConfig | None = None, *, attn_backend: str = "auto",
                      **overrides: Any) -> TextEncoder:
    """A ``TextEncoder`` built from a local HF folder's config (or ``cfg``) and loaded with its weights."""
    ckpt = read_text_checkpoint(path)
    if cfg is None:
        cfg = _text_config(ckpt, **overrides)
    elif overrides:
        raise ValueError(f"pass overrides only without cfg (set them in cfg instead), got {overrides}")
    encoder = _uninitialised(TextEncoder, cfg, attn_backend)
    load_text_weights(encoder, ckpt)
    return encoder


def load_vision_encoder(path: str | Path, cfg: VisionConfig | None = None, *, attn_backend: str = "auto",
                        keep_layers: int | None = None, image_size: int | None = None,
                        **overrides: Any) -> VisionEncoder:
    """A ``VisionEncoder`` from a local CLIP/ViT folder. ``keep_layers`` keeps the first blocks (the paper: 11 of
    12), ``image_size`` another resolution (position grid resized); both only when ``cfg`` is None. The temporal
    embedding starts at zero, so the encoder is exactly the image model, for videos too."""
    ckpt = read_vision_checkpoint(path)
    if cfg is None:
        if keep_layers is not None:
            overrides["layers"] = keep_layers
        if image_size is not None:
            overrides["image_size"] = image_size
        cfg = _vision_config(ckpt, **overrides)
    elif keep_layers is not None or image_size is not None or overrides:
        raise ValueError("pass keep_layers / image_size / overrides only without cfg (set them in cfg instead), "
                         f"got cfg and keep_layers={keep_layers}, image_size={image_size}, {overrides}")
    encoder = _uninitialised(VisionEncoder, cfg, attn_backend)
    with torch.no_grad():
        encoder.temporal_embedding.zero_()
    load_vision_weights(encoder, ckpt)
    return encoder


def _find(model: nn.Module, kind: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]


def init_from_hf(model: nn.Module, text_path: str | Path | None = None,
                 vision_path: str | Path | None = None) -> dict[str, LoadReport]:
    """Load local HF checkpoints into every ``TextEncoder`` / ``VisionEncoder`` inside ``model`` (the SCL model
    calls this with ``cfg.init_text`` / ``cfg.init_vision``). Returns a report per loaded submodule name."""
    reports: dict[str, LoadReport] = {}
    for path, kind, fn in ((text_path, TextEncoder, load_text_weights),
                           (vision_path, VisionEncoder, load_vision_weights)):
        if path is None:
            continue
        found = _find(model, kind)
        if not found:
            raise ValueError(f"model {type(model).__name__} has no {kind.__name__} to initialise from {path}")
        for name, module in found:
            reports[name or kind.__name__] = fn(module, path)
    return reports


def with_hf_configs(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with its text / vision sections taken from the ``init_text`` / ``init_vision`` folders, so
    ``--model.init_text PATH`` works with any preset. Kept from the preset: text dropout; vision image_size
    (position grid resized), max_frames and layers when fewer than the checkpoint's (the paper keeps 11 of 12)."""
    text, vision = cfg.text, cfg.vision
    if cfg.init_text is not None:
        text = text_config_from_hf(cfg.init_text, dropout=cfg.text.dropout)
    if cfg.init_vision is not None:
        hf = vision_config_from_hf(cfg.init_vision)
        vision = dataclasses.replace(hf, image_size=cfg.vision.image_size, max_frames=cfg.vision.max_frames,
                                     layers=min(cfg.vision.layers, hf.layers))
    return dataclasses.replace(cfg, text=text, vision=vision)


# ------------------------------------------------------------------------------------------------- converted file


def convert(text_path: str | Path | None, vision_path: str | Path | None, out: str | Path, *,
            text_overrides: dict[str, Any] | None = None,
            vision_overrides: dict[str, Any] | None = None) -> list[LoadReport]:
    """Write our state dict (``text_encoder.*``, ``vision_encoder.*``) for the given folders to a safetensors file,
    the resolved configs as JSON in its metadata."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"format": "pt"}
    reports = []
    if text_path is not None:
        ckpt = read_text_checkpoint(text_path)
        enc = _uninitialised(TextEncoder, _text_config(ckpt, **(text_overrides or {})), "auto")
        reports.append(load_text_weights(enc, ckpt))
        tensors.update({f"text_encoder.{k}": v.contiguous() for k, v in enc.state_dict().items()})
        meta["text_config"] = json.dumps(dataclasses.asdict(enc.cfg))
    if vision_path is not None:
        vckpt = read_vision_checkpoint(vision_path)
        venc = _uninitialised(VisionEncoder, _vision_config(vckpt, **(vision_overrides or {})), "auto")
        with torch.no_grad():
            venc.temporal_embedding.zero_()
        reports.append(load_vision_weights(venc, vckpt))
        tensors.update({f"vision_encoder.{k}": v.contiguous() for k, v in venc.state_dict().items()})
        meta["vision_config"] = json.dumps(dataclasses.asdict(venc.cfg))
    if not tensors:
        raise ValueError("nothing to convert: pass a text and/or a vision checkpoint folder")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)  # atomic: a crash never leaves a half-written file under the final name
    return reports


def read_converted(path: str | Path) -> tuple[dict[str, torch.Tensor], TextConfig | None, VisionConfig | None]:
    """Tensors and configs of a file written by :func:`convert`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    text = TextConfig(**json.loads(meta["text_config"])) if "text_config" in meta else None
    vision = None
    if "vision_config" in meta:
        vision = VisionConfig(**json.loads(meta["vision_config"]))
    return load_file(str(path)), text, vision


def load_converted(model: nn.Module, path: str | Path) -> None:
    """Load a :func:`convert` file into the ``TextEncoder`` / ``VisionEncoder`` inside ``model`` (strict names and
    shapes; configs must agree)."""
    tensors, text_cfg, vision_cfg = read_converted(path)
    for prefix, kind, cfg in (("text_encoder.", TextEncoder, text_cfg), ("vision_encoder.", VisionEncoder,
                                                                           vision_cfg)):
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            continue
        found = _find(model, kind)
        if not found:
            raise ValueError(f"{path} holds {prefix}* but model {type(model).__name__} has no {kind.__name__}")
        for _, module in found:
            if cfg is not None and module.cfg != cfg:
                diff = [f"{f.name}={getattr(module.cfg, f.name)!r} (file: {getattr(cfg, f.name)!r})"
                        for f in dataclasses.fields(cfg) if getattr(module.cfg, f.name) != getattr(cfg, f.name)
                        and f.name != "dropout"]
                if diff:
                    raise ValueError(f"{path}: {kind.__name__} config differs: {'; '.join(diff)}")
            result = module.load_state_dict(sd, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ValueError(f"{path}: missing keys {result.missing_keys}, unexpected keys "
                                 f"{result.unexpected_keys} for {kind.__name__}")


def main(argv: list[str] | None = None) -> None:
    """CLI: convert local HF folders into one safetensors file of our parameter names."""
    ap = argparse.ArgumentParser(prog="python -m scl_fast.convert", description=__doc__.split("\n")[0])
    ap.add_argument("--text", help="local BERT/RoBERTa/MiniLM folder")
    ap.add_argument("--vision", help="local CLIP/ViT folder")
    ap.add_argument("--out", required=True, help="output .safetensors file")
    ap.add_argument("--vision-layers", type=int, help="keep the first N vision blocks (the paper: 11 of 12)")
    ap.add_argument("--image-size", type=int, help="resize the vision position grid to this resolution")
    args = ap.parse_args(argv)
    if args.text is None and args.vision is None:
        ap.error("pass --text and/or --vision")
    vision_overrides = {}
    if args.vision_layers is not None:
        vision_overrides["layers"] = args.vision_layers
    if args.image_size is not None:
        vision_overrides["image_size"] = args.image_size
    for report in convert(args.text, args.vision, args.out, vision_overrides=vision_overrides):
        print(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
