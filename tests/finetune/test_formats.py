"""The readers of the released formats, on files written here by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scl_fast.data.shards import Ledger, Stats
from scl_fast.errors import ConfigError
from scl_fast.finetune.formats import karpathy, msrvtt, nlvr2, vqa


def _ledger() -> tuple[Ledger, Stats]:
    stats = Stats()
    return Ledger(stats, strict=False), stats


def test_vqa_questions_vocabulary_and_soft_targets(vqa_files: dict[str, str]) -> None:
    ledger, stats = _ledger()
    examples = vqa.read_questions([vqa_files["train_questions"]], [vqa_files["train_annotations"]],
                                  vqa_files["images"], ledger)
    assert [e.uid for e in examples] == ["10", "11", "20", "21", "30"]
    assert stats.bad == {"bad_label": 1}  # q31 has no annotation
    assert examples[0].media == (os.path.join(vqa_files["images"], "train2014", "COCO_train2014_000000000001.jpg"),)
    vocabulary = vqa.answer_vocabulary(examples, max_answers=3, min_count=1)
    assert vocabulary == ["red", "2", "blue"]  # red twice, then alphabetical; "zebra" does not fit in 3
    kept, targets = vqa.training_targets(examples, vocabulary, ledger, "train")
    assert [e.uid for e in kept] == ["10", "11", "20", "30"] and stats.bad["unknown_answer"] == 1
    assert targets[0].indices == [0, 2] and targets[0].scores == pytest.approx([1.0, 0.6])  # 8 red, 2 blue
    assert targets[1].indices == [1] and targets[1].scores == pytest.approx([1.0])  # "2" x7 and "two" x3
    assert vqa.image_path("/c", "test-dev2015", 7).endswith("test2015/COCO_test2015_000000000007.jpg")
    with pytest.raises(ConfigError, match="occurs 50 times"):
        vqa.answer_vocabulary(examples, max_answers=3, min_count=50)


def test_nlvr2_file_naming_rule_and_bad_records(nlvr2_files: dict[str, str]) -> None:
    ledger, stats = _ledger()
    train = nlvr2.read_statements(nlvr2_files["train"], nlvr2_files["images"], ledger)
    assert len(train) == 6 and stats.bad == {"bad_json": 1, "bad_label": 1}
    left, right = train[1].media
    assert left == os.path.join(nlvr2_files["images"], "train", "1", "train-1-1-img0.png") and os.path.isfile(left)
    assert right.endswith("train/1/train-1-1-img1.png") and train[1].label is True and train[0].label is False
    dev = nlvr2.read_statements(nlvr2_files["val"], nlvr2_files["images"], ledger)
    assert all(os.path.isfile(p) for e in dev for p in e.media)
    assert dev[2].media[0] == os.path.join(nlvr2_files["images"], "dev", "dev-2-1-img0.png")


def test_karpathy_splits(karpathy_files: dict[str, str], tmp_path: Path) -> None:
    ledger, _ = _ledger()
    train = karpathy.read_captions(karpathy_files["karpathy"], karpathy_files["images"], ("train", "restval"), ledger)
    test = karpathy.read_captions(karpathy_files["karpathy"], karpathy_files["images"], ("test",), ledger)
    assert len(train) == 10 and len(test) == 6 and {e.label for e in test} == {5, 6, 7}
    assert all(os.path.isfile(e.media[0]) for e in train + test)
    flickr = tmp_path / "dataset_flickr30k.json"  # Flickr30K's file has no filepath
    flickr.write_text(json.dumps({"images": [{"filename": "1000092795.jpg", "imgid": 0, "split": "test",
                                              "sentences": [{"raw": "Two young guys .", "sentid": 0}]}]}))
    (example,) = karpathy.read_captions(str(flickr), "/f30k", ("test",), ledger)
    assert example.media == (os.path.join("/f30k", "1000092795.jpg"),) and example.text == "Two young guys ."


def test_msrvtt_1k_a(msrvtt_files: dict[str, str], tmp_path: Path) -> None:
    ledger, _ = _ledger()
    train = msrvtt.read_train(msrvtt_files["train_csv"], msrvtt_files["data_json"], msrvtt_files["videos"], "mp4",
                              ledger)
    test = msrvtt.read_test(msrvtt_files["test_csv"], msrvtt_files["videos"], "mp4", ledger)
    assert len(train) == 8 and {e.label for e in train} == {"video0", "video1", "video2", "video3"}
    assert [e.label for e in test] == ["video4", "video5", "video6"] and test[0].text == "clip 4 caption 0"
    assert all(os.path.isfile(e.media[0]) for e in train + test)
    bad = tmp_path / "bad.csv"
    bad.write_text("key,video\nret0,video1\n")
    with pytest.raises(ConfigError, match="lacks the column"):
        msrvtt.read_test(str(bad), msrvtt_files["videos"], "mp4", ledger)
