"""Data pipeline: WebDataset shards / JSONL manifests -> DALI decode + augment -> tokenised batches."""

from .config import DataConfig
from .demo import ensure_demo_corpus
from .loader import Batch, Loader, build_loader
from .shards import BadSampleError, Stats
from .text import TextTokenizer, load_tokenizer

__all__ = ["BadSampleError", "Batch", "DataConfig", "Loader", "Stats", "TextTokenizer", "build_loader",
           "ensure_demo_corpus", "load_tokenizer"]
