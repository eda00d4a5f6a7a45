"""Data pipeline: WebDataset shards / JSONL manifests -> decode + augment (DALI, or PIL/PyAV) -> tokenised batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import DataConfig
from .loader import Batch, Loader, build_loader
from .shards import BadSampleError, Stats
from .text import TextTokenizer, load_tokenizer

if TYPE_CHECKING:
    from .demo import ensure_demo_corpus

__all__ = ["BadSampleError", "Batch", "DataConfig", "Loader", "Stats", "TextTokenizer", "build_loader",
           "ensure_demo_corpus", "load_tokenizer"]


def __getattr__(name: str):
    # Imported on first use, not here: `python -m scl_fast.data.demo` would otherwise find the module already
    # imported by its own package and runpy warns about "unpredictable behaviour".
    if name == "ensure_demo_corpus":
        from .demo import ensure_demo_corpus

        return ensure_demo_corpus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
