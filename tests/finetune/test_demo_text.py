"""The demo preset pads every training caption to ``data.max_text_len`` (static shapes): every text of the demo corpus
and of the four fine-tuning demos fits it, so none is cut, and the padding wastes less than one multiple of 8."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from scl_fast.config import preset
from scl_fast.data.demo import write_demo_corpus
from scl_fast.data.shards import expand_spec
from scl_fast.data.text import load_tokenizer
from scl_fast.finetune.config import TASKS, parse_finetune_args
from scl_fast.finetune.tasks import make_task

LIMIT = preset("demo").data.max_text_len


def _longest(texts: list[str]) -> int:
    _, attention, _ = load_tokenizer("demo", 512).encode_batch(texts)
    return int(attention.sum(axis=1).max())


def test_demo_corpus_captions_fit(tmp_path: Path) -> None:
    paths = write_demo_corpus(str(tmp_path), train_images=300, train_videos=100, val_images=10, val_videos=10,
                              seed=3)
    captions = []
    for shard in expand_spec(paths["train"])[1]:
        with tarfile.open(shard) as tar:
            captions += [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    assert len(captions) >= 100
    longest = _longest(captions)
    assert LIMIT - 8 < longest <= LIMIT, (longest, LIMIT)


@pytest.mark.parametrize("task", TASKS)
def test_finetune_demo_texts_fit(task: str, tmp_path: Path) -> None:
    held_out = "demo_test" if task.endswith("retrieval") else "demo_val"
    cfg = parse_finetune_args(task, ["--data.cache_dir", str(tmp_path), f"--{task}.demo_train", "300",
                                     f"--{task}.{held_out}", "20"])
    assert cfg.data.max_text_len == LIMIT
    examples, _ = make_task(cfg).examples("train")
    assert _longest([e.text for e in examples]) <= LIMIT
