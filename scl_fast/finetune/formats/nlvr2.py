"""NLVR2 as released: one JSON record per line (``train.json``, ``dev.json``, ``test1.json``), two images each.

A record's ``identifier`` is ``<split>-<set>-<pair>-<sentence>``; its images are the pair's, named by the release's
rule: ``<split>-<set>-<pair>-img0.png`` (left) and ``-img1.png`` (right), in ``IMAGES/<split>/`` for dev and test1
and in ``IMAGES/train/<directory>/`` for train (the record's ``directory`` field, 0-99). ``label`` is the string
``"True"`` or ``"False"``.
"""

from __future__ import annotations

import json
import os

from scl_fast.data.shards import Ledger
from scl_fast.errors import PathError

from . import Example


def pair_images(images: str, identifier: str, directory: int | str | None = None) -> tuple[str, str]:
    """(left, right) image paths of the record ``identifier`` under the image root ``images``."""
    split, _, _ = identifier.partition("-")
    prefix = identifier.rsplit("-", 1)[0]
    folder = os.path.join(os.path.abspath(images), split)
    if directory is not None:
        folder = os.path.join(folder, str(directory))
    return os.path.join(folder, f"{prefix}-img0.png"), os.path.join(folder, f"{prefix}-img1.png")


def read_statements(path: str, images: str, ledger: Ledger) -> list[Example]:
    """Every statement of an NLVR2 JSONL file with its truth value as label (bool); malformed records are skipped
    as ``bad_json`` (not JSON) or ``bad_label`` (no identifier, sentence or True/False label)."""
    if not os.path.isfile(path):
        raise PathError(f"NLVR2 file not found: {path}")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                ledger.skip(path, f"line{lineno}", "bad_json", str(err))
                continue
            identifier = record.get("identifier") if isinstance(record, dict) else None
            label = {"True": True, "False": False, True: True, False: False}.get(
                record.get("label") if isinstance(record, dict) else None)
            if not isinstance(identifier, str) or identifier.count("-") < 3 or label is None or \
                    not isinstance(record.get("sentence"), str):
                ledger.skip(path, identifier if isinstance(identifier, str) else f"line{lineno}", "bad_label",
                            "needs identifier <split>-<set>-<pair>-<n>, sentence and label True/False")
                continue
            left, right = pair_images(images, identifier, record.get("directory"))
            examples.append(Example((left, right), record["sentence"], identifier, label))
    return examples
