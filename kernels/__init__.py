"""scl_kernels: fused kernels for vision-language pre-training (attention, token masking, contrastive losses).

Depends on torch and triton only. Each op is one public function over one ``torch.library`` custom op with
three backends (Triton on CUDA, C++ on CPU where it pays, plain PyTorch reference everywhere): see
``_dispatch.py``. The references live in ``scl_kernels.reference``.
"""

from ._dispatch import use_backend
from .attention import masked_attention
from .contrastive import cosine_recovery, info_nce
from .distributed import all_gather_with_grad
from .masking import mlm_mask, random_masking, scl_text_mask

__all__ = [
    "all_gather_with_grad",
    "cosine_recovery",
    "info_nce",
    "masked_attention",
    "mlm_mask",
    "random_masking",
    "scl_text_mask",
    "use_backend",
]
