"""Typed configuration of the SCL model (the ``--model.*`` section of the training config).

Plain field types only (int/float/str/bool/Literal/None/tuples of numbers/nested dataclasses), so the generic
parser in ``scl_fast/config.py`` can set every field from YAML/JSON or ``--model.vision.width 384``. The
defaults are the ``demo`` preset; ``model_preset`` returns the other two. This module imports nothing from
the rest of the project, so it can be loaded on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AttnBackend = Literal["auto", "eager", "sdpa", "triton", "flash_attn", "xformers"]


def _positive(section: str, **values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value}")


def _unit(section: str, **values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{section}.{name} must be in [0, 1), got {value}")


@dataclass(kw_only=True)
class VisionConfig:
    """CLIP-style ViT (pre-LN blocks, optional ln_pre, final LayerNorm, no projection) with the flexible
    frame-block attention of SCL for videos."""

    image_size: int = 64
    """Training resolution in pixels; the position embedding covers (image_size / patch_size)^2 patches and is
    interpolated (bicubic) for other resolutions."""
    patch_size: int = 16
    """Side of a square patch in pixels (the patch-embedding conv's kernel and stride)."""
    width: int = 128
    """Token width of the encoder."""
    layers: int = 4
    """Transformer blocks (the paper keeps 11 of CLIP ViT-B/16's 12)."""
    heads: int = 4
    """Attention heads; must divide ``width``."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``width``."""
    act: Literal["gelu", "quick_gelu"] = "gelu"
    """MLP activation: OpenAI CLIP checkpoints use quick_gelu, HF ViT uses gelu."""
    ln_pre: bool = True
    """LayerNorm on the tokens before the first block (OpenAI CLIP has it, HF ViT does not)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (CLIP 1e-5, HF ViT 1e-12)."""
    max_frames: int = 8
    """Rows of the learnable temporal embedding: the longest video the encoder accepts."""

    def __post_init__(self) -> None:
        _positive("vision", image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                  layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio, max_frames=self.max_frames)
        if self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size must be a multiple of patch_size={self.patch_size}, "
                             f"got {self.image_size}")
        if self.width % self.heads:
            raise ValueError(f"vision.width must be divisible by heads={self.heads}, got {self.width}")


@dataclass(kw_only=True)
class TextConfig:
    """BERT/RoBERTa-compatible post-LN text encoder (HF ``BertModel`` parameter names)."""

    vocab_size: int = 30522
    """Vocabulary size (BERT-uncased, and MiniLM which uses its tokenizer: 30522; RoBERTa: 50265)."""
    width: int = 128
    """Hidden size."""
    layers: int = 2
    """Transformer layers."""
    heads: int = 4
    """Attention heads; must divide ``width``."""
    intermediate: int = 512
    """FFN hidden size."""
    max_positions: int = 512
    """Rows of the position embedding (RoBERTa: 514 because of its position offset)."""
    type_vocab_size: int = 2
    """Rows of the token-type embedding (BERT 2, RoBERTa 1)."""
    pad_token_id: int = 0
    """Padding token (BERT 0, RoBERTa 1)."""
    mask_token_id: int = 103
    """[MASK] token used by MLM and SCL text masking (BERT 103, RoBERTa 50264)."""
    position_offset: int = 0
    """0 = BERT positions 0..L-1. RoBERTa: pad_token_id + 1 (= 2): real tokens get offset, offset+1, ... and
    padding gets pad_token_id, exactly as HF computes them from input_ids."""
    act: Literal["gelu", "gelu_tanh", "relu"] = "gelu"
    """FFN activation (BERT/RoBERTa/MiniLM: exact gelu)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT 1e-12, RoBERTa 1e-5)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention probabilities and residual branches."""

    def __post_init__(self) -> None:
        _positive("text", vocab_size=self.vocab_size, width=self.width, layers=self.layers, heads=self.heads,
                  intermediate=self.intermediate, max_positions=self.max_positions,
                  type_vocab_size=self.type_vocab_size)
        _unit("text", dropout=self.dropout)
        if self.width % self.heads:
            raise ValueError(f"text.width must be divisible by heads={self.heads}, got {self.width}")
        for name in ("pad_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"text.{name} must be in [0, {self.vocab_size}), got {getattr(self, name)}")
        if self.position_offset < 0:
            raise ValueError(f"text.position_offset must be >= 0, got {self.position_offset}")


@dataclass(kw_only=True)
class FusionConfig:
    """METER co-attention fusion encoder: two post-LN streams, each layer self-attention, cross-attention to
    the other stream's previous-layer output, FFN."""

    width: int = 128
    """Hidden size of both streams (each modality is mapped to it by a Linear first)."""
    layers: int = 2
    """Co-attention layers per stream."""
    heads: int = 4
    """Attention heads; must divide ``width``."""
    intermediate: int = 512
    """FFN hidden size."""
    act: Literal["gelu", "gelu_tanh", "relu"] = "gelu"
    """FFN activation."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    dropout: float = 0.1
    """Dropout on attention probabilities and residual branches."""

    def __post_init__(self) -> None:
        _positive("fusion", width=self.width, layers=self.layers, heads=self.heads, intermediate=self.intermediate)
        _unit("fusion", dropout=self.dropout)
        if self.width % self.heads:
            raise ValueError(f"fusion.width must be divisible by heads={self.heads}, got {self.width}")


@dataclass(kw_only=True)
class LossConfig:
    """Pre-training objectives: weights, masking ratios, temperatures and the ITM negative sampler."""

    itm_weight: float = 1.0
    """Weight of image-text matching."""
    mlm_weight: float = 1.0
    """Weight of masked language modelling."""
    itc_weight: float = 0.5
    """Weight of image-text contrastive learning (the paper: 0.5)."""
    scl_weight: float = 1.0
    """Weight of semantic completion learning."""
    itc_dim: int = 512
    """Width of the ITC projections."""
    itc_temperature: float = 0.07
    """Initial value of the learnable ITC temperature."""
    itc_temperature_range: tuple[float, float] = (0.001, 0.5)
    """The learnable temperature is clamped into this range (ALBEF's bounds) so the logits cannot explode."""
    mlm_prob: float = 0.15
    """Fraction of real tokens MLM predicts."""
    mlm_replace: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Of the predicted tokens: fractions replaced by [MASK], by a random token, left unchanged."""
    scl_text_ratio: float = 0.4
    """Fraction of real tokens replaced by [MASK] for SCL's masked-text pass (no 80/10/10)."""
    scl_vision_keep: float = 0.2
    """Fraction of patch positions kept for SCL's masked-vision pass (MAE-style, same subset in every frame)."""
    scl_loss: Literal["infonce", "cosine"] = "infonce"
    """SCL recovery objective: symmetric InfoNCE against the batch (the paper) or 1 - cosine."""
    scl_temperature: float = 0.03
    """Fixed temperature of the SCL InfoNCE."""
    itm_negatives: Literal["in_batch", "hard"] = "in_batch"
    """ITM negatives: a uniformly drawn other image of the batch, or ALBEF hard negatives sampled in
    proportion to the softmax of the (detached) ITC similarity."""

    def __post_init__(self) -> None:
        for name in ("itm_weight", "mlm_weight", "itc_weight", "scl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        _positive("loss", itc_dim=self.itc_dim, itc_temperature=self.itc_temperature,
                  scl_temperature=self.scl_temperature)
        lo, hi = self.itc_temperature_range
        if not 0 < lo <= self.itc_temperature <= hi:
            raise ValueError(f"loss.itc_temperature_range must satisfy 0 < lo <= itc_temperature <= hi, "
                             f"got {self.itc_temperature_range} with itc_temperature={self.itc_temperature}")
        if not 0.0 < self.mlm_prob < 1.0:
            raise ValueError(f"loss.mlm_prob must be in (0, 1), got {self.mlm_prob}")
        if len(self.mlm_replace) != 3 or min(self.mlm_replace) < 0 or abs(sum(self.mlm_replace) - 1.0) > 1e-6:
            raise ValueError(f"loss.mlm_replace must be 3 non-negative fractions summing to 1, got {self.mlm_replace}")
        if not 0.0 < self.scl_text_ratio < 1.0:
            raise ValueError(f"loss.scl_text_ratio must be in (0, 1), got {self.scl_text_ratio}")
        if not 0.0 < self.scl_vision_keep <= 1.0:
            raise ValueError(f"loss.scl_vision_keep must be in (0, 1], got {self.scl_vision_keep}")


@dataclass(kw_only=True)
class ModelConfig:
    """The SCL model: encoders, fusion, heads, losses, attention backend and step schedule."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """Vision encoder."""
    text: TextConfig = field(default_factory=TextConfig)
    """Text encoder."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Co-attention fusion encoder."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Objectives."""
    attn_backend: AttnBackend = "auto"
    """Attention implementation of every encoder: auto = triton on CUDA, sdpa on CPU; eager = the plain PyTorch
    reference; flash_attn / xformers need those packages installed."""
    schedule: Literal["fused", "naive"] = "fused"
    """Step schedule: fused computes every shared encoder pass once and batches the fusion calls; naive runs
    the public release's five full passes (same losses and gradients, for reference and FLOP comparison)."""
    init_text: str | None = None
    """Local Hugging Face checkpoint folder (BERT/RoBERTa/MiniLM) to initialise the text encoder from."""
    init_vision: str | None = None
    """Local Hugging Face checkpoint folder (CLIP/ViT) to initialise the vision encoder from."""
    tie_mlm_decoder: bool = False
    """Share the MLM decoder weight with the text word embeddings (BERT does; METER does not). Needs
    text.width == fusion.width."""
    init_std: float = 0.02
    """Std of the normal initialisation of every Linear, Conv2d and Embedding weight trained from scratch (BERT:
    0.02, about 0.55 / sqrt(768), sized for 768-wide models). A narrow model needs about 1 / sqrt(width): with 0.02
    at width 128 every attention is uniform at init, the CLS features of all samples agree to a cosine of 0.9998
    and ITC/ITM sit at chance for hundreds of steps (the demo preset uses 128 ** -0.5)."""

    def __post_init__(self) -> None:
        _positive("model", init_std=self.init_std)
        if self.tie_mlm_decoder and self.text.width != self.fusion.width:
            raise ValueError(f"tie_mlm_decoder needs text.width == fusion.width, got {self.text.width} and "
                             f"{self.fusion.width}")
        keep = int(self.num_patches * self.loss.scl_vision_keep)
        if keep < 1:
            raise ValueError(f"loss.scl_vision_keep={self.loss.scl_vision_keep} keeps no patch of the "
                             f"{self.num_patches} at image_size={self.vision.image_size}")

    @property
    def num_patches(self) -> int:
        """Patches per frame at the training resolution."""
        return (self.vision.image_size // self.vision.patch_size) ** 2


def model_preset(name: Literal["demo", "compact", "paper"]) -> ModelConfig:
    """A complete model config.

    - ``demo``: tiny, seconds per step on 2 CPU cores at batch 16 (64 px images, 128-wide encoders); the demo
      corpus's 512-token vocabulary (BERT's special-token ids).
    - ``compact``: MiniLM-L6-size text (384 wide, 6 layers, 12 heads) and ViT-S/16-size vision at 224 px, 2-layer
      384-wide fusion.
    - ``paper``: CLIP ViT-B/16 at 288 px with 11 of 12 blocks (ln_pre, quick_gelu), BERT-base text, 6-layer
      768-wide co-attention fusion, 512-d ITC.
    """
    if name == "demo":
        # One fusion layer: the 5-minute 2-core CPU budget of the no-argument run (0.43 vs 0.61 CPU-s per step).
        # init_std 1/sqrt(width): with BERT's 0.02 at width 128 every attention is uniform at init, the CLS features of
        # all samples agree to a cosine of 0.9998, and ITC/ITM sat at chance for 150-350 steps whatever the LR, the
        # temperature, the loss weights or the ITC head (measured); at 128 ** -0.5 ITC takes off after ~40 steps,
        # with the paper's loss weights (SCL 1).
        # 512 text rows: the demo corpus's own tokenizer (scl_fast.data.demo.DEMO_VOCAB_SIZE), BERT's special ids.
        return ModelConfig(text=TextConfig(vocab_size=512), fusion=FusionConfig(layers=1), init_std=128**-0.5)
    if name == "compact":
        return ModelConfig(
            vision=VisionConfig(image_size=224, patch_size=16, width=384, layers=12, heads=6),
            text=TextConfig(width=384, layers=6, heads=12, intermediate=1536),
            fusion=FusionConfig(width=384, layers=2, heads=12, intermediate=1536),
        )
    if name == "paper":
        return ModelConfig(
            vision=VisionConfig(image_size=288, patch_size=16, width=768, layers=11, heads=12, act="quick_gelu"),
            text=TextConfig(width=768, layers=12, heads=12, intermediate=3072),
            fusion=FusionConfig(width=768, layers=6, heads=12, intermediate=3072),
            loss=LossConfig(itc_dim=512),
        )
    raise ValueError(f"unknown model preset {name!r}; choose one of ('demo', 'compact', 'paper')")
