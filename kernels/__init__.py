"""scl_kernels: fused kernels for vision-language pre-training (attention, token masking, contrastive losses).

Depends on torch and triton only. Each op is one public function over one ``torch.library`` custom op with
three backends (Triton on CUDA, C++ on CPU where it pays, plain PyTorch reference everywhere): see
``_dispatch.py``. The references live in ``scl_kernels.reference``.
"""

import sys as _sys

if __name__ != "scl_kernels":
    # From the repository root this folder is also importable as "kernels", and transformers probes `import
    # kernels` (the HF kernel-hub package of that name): hand it this package rather than a second copy that would
    # re-register every torch.library op and keep its own backend counters.
    import importlib as _importlib

    _sys.modules[__name__] = _importlib.import_module("scl_kernels")
else:
    from ._dispatch import use_backend
    from .attention import masked_attention
    from .contrastive import cosine_recovery, info_nce
    from .distributed import all_gather_with_grad
    from .hf import patch_hf, unpatch_hf
    from .masking import mlm_mask, random_masking, scl_text_mask

__all__ = [
    "all_gather_with_grad",
    "cosine_recovery",
    "info_nce",
    "masked_attention",
    "mlm_mask",
    "patch_hf",
    "random_masking",
    "scl_text_mask",
    "unpatch_hf",
    "use_backend",
]
