"""The SCL model: flexible vision encoder, BERT-style text encoder, METER co-attention fusion, heads, losses and
the two step schedules (``fused`` and the release's ``naive`` five passes)."""

from .config import FusionConfig, LossConfig, ModelConfig, TextConfig, VisionConfig, model_preset
from .text import TextEncoder
from .vision import VisionEncoder

__all__ = [
    "FusionConfig",
    "LossConfig",
    "ModelConfig",
    "TextConfig",
    "TextEncoder",
    "VisionConfig",
    "VisionEncoder",
    "model_preset",
]
