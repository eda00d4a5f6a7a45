"""MSR-VTT's 1k-A split (JSFusion's), in the files CLIP4Clip and most video-text work distribute.

- test: ``MSRVTT_JSFUSION_test.csv`` with columns ``key,vid_key,video_id,sentence``, 1,000 (video, sentence) pairs;
- train: the 9,000 videos of ``MSRVTT_train.9k.csv`` (column ``video_id``) with every caption ``MSRVTT_data.json``
  (the release's annotations: ``{"sentences": [{"video_id", "caption"}, ...]}``) gives them, 180,000 pairs.

A video's file is ``VIDEOS/<video_id>.<ext>`` (mp4 in the release). The label is the video id.
"""

from __future__ import annotations

import csv
import os

from scl_fast.data.shards import Ledger
from scl_fast.errors import ConfigError, PathError

from ..vqa_eval import read_json
from . import Example


def _rows(path: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise PathError(f"MSR-VTT file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path} lacks the column(s) {missing} (has {reader.fieldnames})")
        return list(reader)


def video_path(videos: str, video_id: str, ext: str) -> str:
    return os.path.join(os.path.abspath(videos), f"{video_id}.{ext}")


def read_test(csv_path: str, videos: str, ext: str, ledger: Ledger) -> list[Example]:
    """The 1k-A test pairs of ``MSRVTT_JSFUSION_test.csv``."""
    examples = []
    for n, row in enumerate(_rows(csv_path, ("video_id", "sentence"))):
        if not row["video_id"] or row["sentence"] is None:
            ledger.skip(csv_path, f"row{n + 1}", "bad_label", "empty video_id or sentence")
            continue
        examples.append(Example((video_path(videos, row["video_id"], ext),), row["sentence"],
                                row.get("key") or f"{row['video_id']}/0", row["video_id"]))
    return examples


def read_train(csv_path: str, data_json: str, videos: str, ext: str, ledger: Ledger) -> list[Example]:
    """Every caption of the training videos listed in ``MSRVTT_train.9k.csv``."""
    wanted = {row["video_id"] for row in _rows(csv_path, ("video_id",))}
    data = read_json(data_json, "MSR-VTT annotations (MSRVTT_data.json)")
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise ConfigError(f"{data_json} is not MSRVTT_data.json: no 'sentences' list")
    seen: dict[str, int] = {}
    examples = []
    for s in data["sentences"]:
        vid, caption = (s.get("video_id"), s.get("caption")) if isinstance(s, dict) else (None, None)
        if vid not in wanted:
            continue
        if not isinstance(caption, str):
            ledger.skip(data_json, str(vid), "bad_label", "sentence without a caption")
            continue
        seen[vid] = seen.get(vid, 0) + 1
        examples.append(Example((video_path(videos, vid, ext),), caption, f"{vid}/{seen[vid] - 1}", vid))
    return examples
