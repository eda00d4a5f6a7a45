"""scl_kernels: fused kernels for vision-language pre-training (attention, token masking, contrastive losses).

Depends on torch and triton only. Each op is one public function over one ``torch.library`` custom op with
three backends (Triton on CUDA, C++ on CPU where it pays, plain PyTorch reference everywhere): see
``_dispatch.py``. The references live in ``scl_kernels.reference``.

The package's source root is the repository's ``kernels/`` folder (``kernels/scl_kernels/``), the "src layout":
``kernels/`` itself has no ``__init__.py``, so from the repository root ``import kernels`` finds Hugging Face's
``kernels`` package (which current transformers imports) wherever it is installed, and never this one. A folder
without ``__init__.py`` is a PEP 420 namespace portion, which the import system ranks below any regular package of
the same name on ``sys.path``.
"""

if __name__ != "scl_kernels":
    # Only reachable as ``kernels.scl_kernels`` from the repository root, where ``kernels/`` is a namespace folder.
    # A second copy would register every torch.library op again and keep its own backend counters.
    raise ImportError(f"import this package as scl_kernels, not {__name__} (pip install -e . from the checkout)")

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
