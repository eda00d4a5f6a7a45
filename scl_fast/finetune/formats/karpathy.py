"""COCO and Flickr30K retrieval splits as Karpathy released them: ``dataset_coco.json``, ``dataset_flickr30k.json``.

``{"images": [{"filepath": "val2014", "filename": ..., "split": "train"|"restval"|"val"|"test", "imgid": int,
"sentences": [{"raw": str, "sentid": int, ...}, ...]}, ...], "dataset": ...}``; Flickr30K has no ``filepath``.
An image's file is ``IMAGES/<filepath>/<filename>``. Every (image, sentence) is one example whose label is the
image's ``imgid``: retrieval counts a caption as found when its own image is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from scl_fast.data.shards import Ledger
from scl_fast.errors import ConfigError

from ..vqa_eval import read_json
from . import Example


def read_captions(path: str, images: str, splits: Sequence[str], ledger: Ledger) -> list[Example]:
    """Every (image, caption) of the images whose ``split`` is in ``splits`` (training: train + restval for COCO,
    as ALBEF and METER; evaluation: test)."""
    data = read_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"{path} is not a Karpathy dataset_*.json: no 'images' list")
    wanted = set(splits)
    root = os.path.abspath(images)
    examples = []
    for image in data["images"]:
        if not isinstance(image, dict) or image.get("split") not in wanted:
            continue
        if not isinstance(image.get("filename"), str) or "imgid" not in image or \
                not isinstance(image.get("sentences"), list):
            ledger.skip(path, str(image.get("imgid", "?")), "bad_label", "image record without filename, imgid "
                        "or sentences")
            continue
        file = os.path.join(root, image.get("filepath") or "", image["filename"])
        for n, sentence in enumerate(image["sentences"]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                ledger.skip(path, f"{image['imgid']}/{n}", "bad_label", "sentence without 'raw'")
                continue
            examples.append(Example((file,), raw, f"{image['imgid']}/{sentence.get('sentid', n)}", image["imgid"]))
    return examples
