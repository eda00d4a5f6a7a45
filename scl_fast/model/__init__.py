"""The SCL model: flexible vision encoder, BERT-style text encoder, METER co-attention fusion, heads, losses and
the two step schedules (``fused`` and the release's ``naive`` five passes)."""

from .config import FusionConfig, LossConfig, ModelConfig, TextConfig, VisionConfig, model_preset
from .fusion import FusionEncoder
from .scl import SCLModel, StepInputs, StepOutput
from .text import TextEncoder
from .vision import VisionEncoder

__all__ = [
    "FusionConfig",
    "FusionEncoder",
    "LossConfig",
    "ModelConfig",
    "SCLModel",
    "StepInputs",
    "StepOutput",
    "TextConfig",
    "TextEncoder",
    "VisionConfig",
    "VisionEncoder",
    "model_preset",
]
