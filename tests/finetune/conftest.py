"""Fixtures of the fine-tuning tests: a few samples of each task in its released format, written here by hand (not by
the demo writer, so the readers are checked against the formats, not against our own writer), and the options of a
tiny in-process run."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest

from tests.data.media import image_bytes
from tests.train.conftest import TINY_MODEL

RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)


def tiny_run(tmp_path: Path, *extra: str, steps: int = 2) -> list[str]:
    """Options of a few-step run of the tiny model, in-process data loading."""
    return [*TINY_MODEL, "--train.steps", str(steps), "--train.run_dir", str(tmp_path / "run"), "--train.log_every",
            "1", "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "4", "--data.num_workers", "0",
            "--data.tokenizer", "demo", "--model.text.vocab_size", "512", *extra]


def _answers(*counts: tuple[str, int]) -> list[dict]:
    answers = [a for a, n in counts for _ in range(n)]
    assert len(answers) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


@pytest.fixture
def vqa_files(tmp_path: Path) -> dict[str, str]:
    """VQAv2 layout: train2014 questions about images 1-3 (image 3 missing), val2014 about image 9.

    Train: q10 (8 "red", 2 "blue": targets red 1.0, blue 0.6), q11 (10 x "2" but written "2" / "two"), q20 an empty
    question, q21 an answer nobody else gave (unknown with min_answer_count 2), q30 about the missing image, q31 with no
    annotation.
    """
    root = tmp_path / "vqa"
    for folder, image_id, colour in (("train2014", 1, RED), ("train2014", 2, BLUE), ("val2014", 9, GREEN)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"COCO_{folder}_{image_id:012d}.jpg").write_bytes(image_bytes(colour, (64, 64)))
    questions = [(1, 10, "what color is it?"), (1, 11, "how many shapes are there?"), (2, 20, "  "),
                 (2, 21, "what is it?"), (3, 30, "what color is it?"), (2, 31, "is it blue?")]
    annotations = {10: _answers(("red", 8), ("blue", 2)), 11: _answers(("2", 7), ("two", 3)),
                   20: _answers(("blue", 10)), 21: _answers(("zebra", 10)), 30: _answers(("red", 10))}
    kinds = {10: "other", 11: "number", 20: "other", 21: "other", 30: "other"}

    def write(subtype: str, qs: list, anns: dict) -> tuple[str, str]:
        qfile = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
        afile = root / f"v2_mscoco_{subtype}_annotations.json"
        qfile.write_text(json.dumps({"data_subtype": subtype, "task_type": "Open-Ended", "questions": [
            {"image_id": i, "question_id": q, "question": t} for i, q, t in qs]}))
        afile.write_text(json.dumps({"data_subtype": subtype, "annotations": [
            {"question_id": q, "image_id": next(i for i, qq, _ in qs if qq == q), "answers": a,
             "answer_type": kinds.get(q, "other"), "question_type": "what color is",
             "multiple_choice_answer": a[0]["answer"]} for q, a in anns.items()]}))
        return str(qfile), str(afile)

    tq, ta = write("train2014", questions, annotations)
    vq, va = write("val2014", [(9, 90, "what color is it?"), (9, 91, "how many shapes are there?")],
                   {90: _answers(("green", 9), ("red", 1)), 91: _answers(("1", 10))})
    return {"train_questions": tq, "train_annotations": ta, "val_questions": vq, "val_annotations": va,
            "images": str(root)}


@pytest.fixture
def nlvr2_files(tmp_path: Path) -> dict[str, str]:
    """NLVR2 layout: left images red, right images blue (a swapped pair shows in the pixels); train records in
    train/<directory>/, dev in dev/; train-3's right image is missing."""
    root = tmp_path / "nlvr2"
    lines = {"train": [], "dev": []}
    for split, n in (("train", 6), ("dev", 4)):
        for set_id in range(n):
            folder = root / "images" / split / (str(set_id % 2) if split == "train" else "")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}-{set_id}-1-img0.png").write_bytes(image_bytes(RED, (64, 48), fmt="PNG"))
            if (split, set_id) != ("train", 3):
                (folder / f"{split}-{set_id}-1-img1.png").write_bytes(image_bytes(BLUE, (48, 64), fmt="PNG"))
            record = {"identifier": f"{split}-{set_id}-1-0", "sentence": "the left image has a red shape",
                      "label": "True" if set_id % 3 else "False", "left_url": "x", "right_url": "y"}
            if split == "train":
                record["directory"] = set_id % 2
            lines[split].append(json.dumps(record))
    lines["train"].append("not json")
    lines["train"].append(json.dumps({"identifier": "train-9-0-0", "sentence": "x", "label": "maybe"}))
    for split, name in (("train", "train.json"), ("dev", "dev.json")):
        (root / name).write_text("\n".join(lines[split]) + "\n")
    return {"train": str(root / "train.json"), "val": str(root / "dev.json"), "images": str(root / "images")}


@pytest.fixture
def karpathy_files(tmp_path: Path) -> dict[str, str]:
    """dataset_coco.json: 4 train / 1 restval / 3 test images, 2 captions each, COCO's filepath/filename."""
    root = tmp_path / "coco"
    images, sentid = [], 0
    colours = [RED, BLUE, GREEN, (200, 200, 20), (200, 20, 200), RED, BLUE, GREEN]
    for imgid, colour in enumerate(colours):
        split = "train" if imgid < 4 else "restval" if imgid == 4 else "test"
        folder = "train2014" if imgid < 5 else "val2014"
        name = f"COCO_{folder}_{imgid:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(image_bytes(colour, (64, 64)))
        sentences = [{"raw": f"a picture number {imgid}", "sentid": sentid, "imgid": imgid, "tokens": []},
                     {"raw": "a flat colour", "sentid": sentid + 1, "imgid": imgid, "tokens": []}]
        sentid += 2
        images.append({"filepath": folder, "filename": name, "imgid": imgid, "split": split, "sentences": sentences,
                       "sentids": [s["sentid"] for s in sentences], "cocoid": imgid})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return {"karpathy": str(root / "dataset_coco.json"), "images": str(root)}


@pytest.fixture
def msrvtt_files(tmp_path: Path) -> dict[str, str]:
    """MSR-VTT 1k-A layout: video0-3 train (two captions each in MSRVTT_data.json), video4-6 the test csv; each clip
    its own shade (retrieval tells gallery items apart by their pixels)."""
    root = tmp_path / "msrvtt"
    videos = root / "videos"
    videos.mkdir(parents=True)
    for n in range(7):
        (videos / f"video{n}.mp4").write_bytes(_clip(shade=30 * n))
    sentences = [{"caption": f"clip {n} caption {k}", "video_id": f"video{n}", "sen_id": 2 * n + k}
                 for n in range(7) for k in range(2)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [{"video_id": f"video{n}"} for n in range(7)],
                                                       "sentences": sentences}))
    with open(root / "MSRVTT_train.9k.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id"], *[[f"video{n}"] for n in range(4)]])
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerows([[f"ret{n}", f"msr{n}", f"video{n}", f"clip {n} caption 0"] for n in range(4, 7)])
    return {"train_csv": str(root / "MSRVTT_train.9k.csv"), "data_json": str(root / "MSRVTT_data.json"),
            "test_csv": str(root / "MSRVTT_JSFUSION_test.csv"), "videos": str(videos)}


def _clip(shade: int, frames: int = 6, size: int = 32) -> bytes:
    """VP9 in mp4 (MSR-VTT ships mp4), frame t a flat gray of ``shade + 5 t``."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libvpx-vp9", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0", "lag-in-frames": "0"}
        for t in range(frames):
            frame = np.full((size, size, 3), shade + 5 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def section_args(task: str, files: dict[str, str]) -> list[str]:
    return [arg for key, value in files.items() for arg in (f"--{task}.{key}", value)]
