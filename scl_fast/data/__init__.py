"""Data pipeline: WebDataset shards / JSONL manifests -> decode + augment (DALI, or PIL/PyAV) -> tokenised batches.

The names below are imported on first use (PEP 562): ``scl_fast.data.config`` (what every config needs) loads
without the loader and its decoders, so a machine without PyAV or DALI can still build configs and models (the GPU
report's training step), and ``python -m scl_fast.data.demo`` does not find its module already imported by its
own package (runpy warns about "unpredictable behaviour" then).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import DataConfig

if TYPE_CHECKING:
    from .demo import ensure_demo_corpus
    from .loader import Batch, Loader, build_loader
    from .shards import BadSampleError, Stats
    from .text import TextTokenizer, load_tokenizer

__all__ = ["BadSampleError", "Batch", "DataConfig", "Loader", "Stats", "TextTokenizer", "build_loader",
           "ensure_demo_corpus", "load_tokenizer"]

_WHERE = {"Batch": "loader", "Loader": "loader", "build_loader": "loader", "BadSampleError": "shards",
          "Stats": "shards", "TextTokenizer": "text", "load_tokenizer": "text", "ensure_demo_corpus": "demo"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
