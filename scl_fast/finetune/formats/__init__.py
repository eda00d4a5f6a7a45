"""Readers of the downstream datasets' public formats, each returning :class:`Example` records.

One module per release: ``vqa`` (VQAv2 questions and annotations JSON), ``nlvr2`` (the NLVR2 JSONL and its image
naming rule), ``karpathy`` (COCO / Flickr30K ``dataset_*.json``), ``msrvtt`` (MSR-VTT's 1k-A split). Readers only
parse annotations and build paths: media are opened later by the pre-training loader (``scl_fast.data``), which
skips and counts a missing or corrupt file as it does in pre-training. What a reader itself drops (an unknown
answer, a record without a label) is counted in its ``Ledger`` under the reasons of ``scl_fast.data.shards``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Example:
    """One labelled sample of a downstream task."""

    media: tuple[str, ...]
    """Absolute paths of its media: one image or video; NLVR2's two images (left, right)."""
    text: str
    """The question, statement or caption."""
    uid: str
    """The release's id: the VQA question id, the NLVR2 identifier, ``imgid/sentid`` (Karpathy), ``video/n``."""
    label: Any = None
    """The task's target: VQA's annotation record, NLVR2's truth value, the retrieval gallery item's id."""


def media_kind(path: str) -> str:
    """``image`` or ``video`` by file extension (the loader's own extension lists)."""
    from scl_fast.data.shards import VIDEO_EXTS

    return "video" if path.rsplit(".", 1)[-1].lower() in VIDEO_EXTS else "image"
