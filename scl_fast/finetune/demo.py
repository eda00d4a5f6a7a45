"""Synthetic demos of the four downstream tasks, written in their real release formats so the real readers run.

Drawn with the pre-training demo corpus's generator (``scl_fast.data.demo``: its shapes, colours, positions, sizes,
motions and noisy canvases), deterministic for a seed, written once per parameter set under ``data.cache_dir``
(atomically: every rank of a job may ask at once).

- ``vqa``: scenes of 1-3 shapes; questions about a shape's colour, shape, size and place, the number of shapes
  (of a colour) and whether a shape is there; ten "human" answers each, mostly right, some wrong, some written
  ``"red."`` or ``"two"`` (what the official normalisation has to handle); VQAv2's file names and fields.
- ``nlvr2``: statements about pairs of scenes ("both images have a red shape", "the left image has a blue
  circle"), each drawn first and then given a pair it is true (half) or false of, so only the images tell; NLVR2's
  JSONL and image naming (``train/<directory>/train-<set>-0-img0.png``).
- ``retrieval``: single-shape images with five captions each, Karpathy's ``dataset_coco.json`` with
  train/restval/val/test splits.
- ``video_retrieval``: clips of a moving shape (VP9 in mp4), MSR-VTT's ``MSRVTT_data.json``,
  ``MSRVTT_train.9k.csv`` and the 1k-A ``MSRVTT_JSFUSION_test.csv`` (one caption per test video).

    python -m scl_fast.finetune.demo TASK --out DIR
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable

import numpy as np

from scl_fast.data.demo import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    random_motion,
    random_object,
    render_clip,
    render_scene,
    write_once,
)
from scl_fast.errors import run_cli

VERSION = 3
CORNERS = tuple(p for p in POSITIONS if p != "in the center")  # shapes at two corners never overlap
NUMBERS = ("zero", "one", "two", "three")


def _place(position: str) -> str:
    """"at the top left" -> "top left", "in the center" -> "center" (a VQA-style short answer)."""
    return position.split(" the ", 1)[1]


def random_scene(rng: np.random.Generator, most: int = 3) -> list[dict[str, str]]:
    """1 to ``most`` shapes of random attributes; several shapes sit at distinct corners."""
    n = int(rng.integers(1, most + 1))
    places = [str(p) for p in rng.choice(CORNERS, n, replace=False)] if n > 1 else [str(rng.choice(list(POSITIONS)))]
    return [{"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(list(COLOURS))), "size": str(rng.choice(
        list(SIZES))), "position": p} for p in places]


def _unique(objects: list[dict[str, str]], *keys: str) -> list[dict[str, str]]:
    """The objects no other object of the scene shares ``keys`` with (so "the red circle" names one shape)."""
    counts = Counter(tuple(o[k] for k in keys) for o in objects)
    return [o for o in objects if counts[tuple(o[k] for k in keys)] == 1]


# ------------------------------------------------------------------------------------------------------------- VQA

def _questions(rng: np.random.Generator, objects: list[dict[str, str]]) -> list[tuple[str, str, str, str, tuple]]:
    """Every question this scene can answer: (question, answer, question_type, answer_type, wrong-answer pool)."""
    out = [("how many shapes are there?", str(len(objects)), "how many", "number", ("1", "2", "3"))]
    if by_shape := _unique(objects, "shape"):
        o = by_shape[int(rng.integers(len(by_shape)))]
        out.append((f"what color is the {o['shape']}?", o["colour"], "what color is the", "other", tuple(COLOURS)))
    if by_colour := _unique(objects, "colour"):
        o = by_colour[int(rng.integers(len(by_colour)))]
        out.append((f"what shape is the {o['colour']} shape?", o["shape"], "what shape is the", "other", SHAPES))
    if named := _unique(objects, "colour", "shape"):
        o = named[int(rng.integers(len(named)))]
        out.append((f"what size is the {o['colour']} {o['shape']}?", o["size"], "what size is the", "other",
                    tuple(SIZES)))
        out.append((f"where is the {o['colour']} {o['shape']}?", _place(o["position"]), "where is the", "other",
                    tuple(_place(p) for p in POSITIONS)))
    present = {(o["colour"], o["shape"]) for o in objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[int(rng.integers(len(present)))]
    else:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    out.append((f"is there a {colour} {shape}?", "yes" if (colour, shape) in present else "no", "is there a",
                "yes/no", ("yes", "no")))
    colour = objects[0]["colour"] if rng.random() < 0.5 else str(rng.choice(list(COLOURS)))
    out.append((f"how many {colour} shapes are there?", str(sum(o["colour"] == colour for o in objects)), "how many",
                "number", ("0", "1", "2", "3")))
    return out


def _annotators(rng: np.random.Generator, answer: str, pool: tuple) -> list[str]:
    """Ten answers: 0-3 humans pick a wrong one, a few write the right one as "red." or "two"."""
    wrong = int(rng.choice([0, 0, 0, 1, 1, 2, 3]))
    others = [a for a in pool if a != answer]
    answers = [answer] * (10 - wrong) + [str(rng.choice(others)) for _ in range(wrong)]
    for i in rng.choice(10 - wrong, size=int(rng.integers(0, 3)), replace=False):
        answers[i] = NUMBERS[int(answer)] if answer.isdigit() and int(answer) < len(NUMBERS) else answer + "."
    return [answers[i] for i in rng.permutation(10)]


def _vqa_split(out: str, subtype: str, images: int, per_image: int, first_id: int, rng: np.random.Generator,
               size: int) -> tuple[str, str]:
    from .vqa_eval import most_frequent, normalize_answer

    folder = os.path.join(out, "images", subtype)
    os.makedirs(folder)
    questions, annotations = [], []
    for image_id in range(first_id, first_id + images):
        objects = random_scene(rng)
        with open(os.path.join(folder, f"COCO_{subtype}_{image_id:012d}.jpg"), "wb") as f:
            f.write(render_scene(rng, size, objects))
        candidates = _questions(rng, objects)
        for k, i in enumerate(rng.choice(len(candidates), min(per_image, len(candidates)), replace=False)):
            text, answer, qtype, atype, pool = candidates[i]
            qid = image_id * 1000 + k
            humans = _annotators(rng, answer, pool)
            questions.append({"image_id": image_id, "question": text, "question_id": qid})
            annotations.append({"question_type": qtype, "answer_type": atype, "image_id": image_id,
                                "question_id": qid, "multiple_choice_answer": most_frequent(
                                    normalize_answer(a) for a in humans),
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                            for j, a in enumerate(humans)]})
    header = {"info": {"description": "scl_fast synthetic VQA demo"}, "license": {"name": "CC0"},
              "data_subtype": subtype}
    q_path = os.path.join(out, f"v2_OpenEnded_mscoco_{subtype}_questions.json")
    a_path = os.path.join(out, f"v2_mscoco_{subtype}_annotations.json")
    with open(q_path, "w") as f:
        json.dump({**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}, f)
    with open(a_path, "w") as f:
        json.dump({**header, "data_type": "mscoco", "annotations": annotations}, f)
    return q_path, a_path


def write_vqa(out: str, *, train: int, val: int, per_image: int = 3, size: int = 64, seed: int = 0) -> dict[str, str]:
    """``train`` + ``val`` images with ``per_image`` questions each; returns the paths the vqa section takes."""
    rng = np.random.default_rng([seed, 1])
    tq, ta = _vqa_split(out, "train2014", train, per_image, 1, rng, size)
    vq, va = _vqa_split(out, "val2014", val, per_image, 1_000_001, rng, size)
    return {"train_questions": tq, "train_annotations": ta, "val_questions": vq, "val_annotations": va,
            "images": os.path.join(out, "images")}


# ----------------------------------------------------------------------------------------------------------- NLVR2

def _has(scene: list[dict[str, str]], **attributes: str) -> bool:
    return any(all(o[k] == v for k, v in attributes.items()) for o in scene)


def _statement(rng: np.random.Generator) -> tuple[str, Callable[[list, list], bool]]:
    """A random statement about a pair of scenes and the test of its truth: what is in one image or in both.
    (Statements comparing the images' shape counts left a model trained from scratch at chance after 2000 steps,
    measured: the demo keeps what the no-argument run can learn.)"""
    side = str(rng.choice(["left", "right"]))
    pick = {"left": 0, "right": 1}
    colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    templates = [
        (f"the {side} image has a {colour} {shape}",
         lambda p: _has(p[pick[side]], colour=colour, shape=shape)),
        (f"there is a {colour} shape in the {side} image", lambda p: _has(p[pick[side]], colour=colour)),
        (f"both images have a {colour} shape", lambda p: _has(p[0], colour=colour) and _has(p[1], colour=colour)),
        (f"both images have a {shape}", lambda p: _has(p[0], shape=shape) and _has(p[1], shape=shape)),
    ]
    text, test = templates[int(rng.integers(len(templates)))]
    return text, lambda left, right: test((left, right))


def _nlvr2_split(out: str, split: str, pairs: int, rng: np.random.Generator, size: int) -> str:
    """Each statement is drawn first and then a pair of scenes that makes it true (even set ids) or false (odd), as
    NLVR2 pairs one sentence with images it is true and false of: the sentence alone says nothing of its label."""
    path = os.path.join(out, f"{split}.json")
    with open(path, "w") as f:
        for set_id in range(pairs):
            want = set_id % 2 == 0
            while True:
                sentence, truth = _statement(rng)
                for _ in range(200):  # the rarest (a given colour and shape on one side) hold about one time in 12
                    left, right = random_scene(rng), random_scene(rng)
                    if truth(left, right) == want:
                        break
                else:
                    continue
                break
            record = {"identifier": f"{split}-{set_id}-0-0", "sentence": sentence, "label": str(want),
                      "left_url": None, "right_url": None, "synset": "shape", "query": "shapes"}
            folder = os.path.join(out, "images", split)
            if split == "train":
                record["directory"] = set_id % 10
                folder = os.path.join(folder, str(record["directory"]))
            os.makedirs(folder, exist_ok=True)
            for n, scene in enumerate((left, right)):
                with open(os.path.join(folder, f"{split}-{set_id}-0-img{n}.png"), "wb") as img:
                    img.write(render_scene(rng, size, scene, fmt="PNG"))
            f.write(json.dumps(record) + "\n")
    return path


def write_nlvr2(out: str, *, train: int, val: int, size: int = 64, seed: int = 0) -> dict[str, str]:
    """``train`` + ``val`` statement pairs (train.json, dev.json); returns the paths the nlvr2 section takes."""
    rng = np.random.default_rng([seed, 2])
    return {"train": _nlvr2_split(out, "train", train, rng, size), "val": _nlvr2_split(out, "dev", val, rng, size),
            "images": os.path.join(out, "images")}


# ------------------------------------------------------------------------------------------------------- retrieval

def _captions(o: dict[str, str]) -> list[str]:
    """Five captions of one shape, as five annotators would word them (not all give every attribute)."""
    s, c, p, z = o["shape"], o["colour"], o["position"], o["size"]
    return [f"a {z} {c} {s} {p}", f"a {c} {s} {p}", f"there is a {z} {c} {s}", f"{p} there is a {c} {s}",
            f"the {s} is {c} and {z}"]


def write_karpathy(out: str, *, train: int, test: int, size: int = 64, seed: int = 0) -> dict[str, str]:
    """``train`` images (split train, a fifth restval), ``test`` test images and a few val ones, five captions
    each, as ``dataset_coco.json``; returns the paths the retrieval section takes."""
    rng = np.random.default_rng([seed, 3])
    val = max(1, test // 5)
    records, sentid = [], 0
    for imgid in range(train + val + test):
        subset = "train2014" if imgid < train else "val2014"
        split = ("train" if imgid < train * 4 // 5 else "restval") if imgid < train else (
            "val" if imgid < train + val else "test")
        cocoid = 100_000 + imgid
        filename = f"COCO_{subset}_{cocoid:012d}.jpg"
        os.makedirs(os.path.join(out, "images", subset), exist_ok=True)
        obj = random_object(rng)
        with open(os.path.join(out, "images", subset, filename), "wb") as f:
            f.write(render_scene(rng, size, [obj]))
        sentences = [{"tokens": raw.split(), "raw": raw, "imgid": imgid, "sentid": sentid + k}
                     for k, raw in enumerate(_captions(obj))]
        records.append({"filepath": subset, "filename": filename, "imgid": imgid, "split": split, "cocoid": cocoid,
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        sentid += len(sentences)
    path = os.path.join(out, "dataset_coco.json")
    with open(path, "w") as f:
        json.dump({"images": records, "dataset": "coco"}, f)
    return {"karpathy": path, "images": os.path.join(out, "images")}


# ------------------------------------------------------------------------------------------------ video retrieval

def _clip_captions(m: dict[str, str]) -> list[str]:
    s, c, d, v = m["shape"], m["colour"], m["direction"], m["speed"]
    return [f"a {c} {s} moving {d} {v}", f"a {c} {s} moves {d}", f"a {s} moving {d} {v}", f"a {c} shape moves {d} "
            f"{v}", f"the {c} {s} moves {v}"]


def write_msrvtt(out: str, *, train: int, test: int, size: int = 64, seed: int = 0) -> dict[str, str]:
    """``train`` clips with five captions and ``test`` clips with one (the 1k-A test protocol); returns the paths
    the video_retrieval section takes."""
    rng = np.random.default_rng([seed, 4])
    folder = os.path.join(out, "videos", "all")
    os.makedirs(folder)
    videos, sentences, test_rows = [], [], []
    for n in range(train + test):
        vid = f"video{n}"
        motion = random_motion(rng)
        with open(os.path.join(folder, f"{vid}.mp4"), "wb") as f:
            f.write(render_clip(rng, size, motion, container_format="mp4"))
        videos.append({"video_id": vid, "id": n, "category": 0, "split": "train" if n < train else "test"})
        captions = _clip_captions(motion)
        sentences += [{"caption": c, "video_id": vid, "sen_id": len(sentences) + k} for k, c in enumerate(captions)]
        if n >= train:
            test_rows.append({"key": f"ret{n - train}", "vid_key": f"msr{n}", "video_id": vid,
                              "sentence": captions[int(rng.integers(len(captions)))]})
    paths = {"data_json": os.path.join(out, "MSRVTT_data.json"), "train_csv": os.path.join(out, "MSRVTT_train.9k.csv"),
             "test_csv": os.path.join(out, "MSRVTT_JSFUSION_test.csv"), "videos": folder}
    with open(paths["data_json"], "w") as f:
        json.dump({"info": {"description": "scl_fast synthetic MSR-VTT demo"}, "videos": videos,
                   "sentences": sentences}, f)
    with open(paths["train_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id"])
        writer.writerows([v["video_id"]] for v in videos[:train])
    with open(paths["test_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "vid_key", "video_id", "sentence"])
        writer.writeheader()
        writer.writerows(test_rows)
    return paths


WRITERS: dict[str, Callable[..., dict[str, str]]] = {
    "vqa": write_vqa, "nlvr2": write_nlvr2, "retrieval": write_karpathy, "video_retrieval": write_msrvtt}


def ensure_demo(task: str, cache_dir: str, *, seed: int = 0, **sizes: int) -> dict[str, str]:
    """The task's demo under ``cache_dir`` (one folder per parameter set), written on first use; returns the paths
    of its files, keyed by the task section's field names."""
    params = {"version": VERSION, "task": task, "seed": seed, **sizes}
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return write_once(os.path.join(cache_dir, f"finetune-{task}-{digest}"), params,
                      lambda folder: WRITERS[task](folder, seed=seed, **sizes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scl_fast.finetune.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(WRITERS))
    parser.add_argument("--out", required=True, help="folder to write (created; must be empty or this demo)")
    parser.add_argument("--train", type=int, default=200, help="training images / pairs / clips")
    parser.add_argument("--val", type=int, default=50, help="evaluation images / pairs / clips")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    test_key = "val" if args.task in ("vqa", "nlvr2") else "test"
    params = {"version": VERSION, "task": args.task, "seed": args.seed, "train": args.train, test_key: args.val}
    paths = write_once(args.out, params, lambda folder: WRITERS[args.task](
        folder, seed=args.seed, train=args.train, **{test_key: args.val}))
    print(json.dumps(paths, indent=1))


if __name__ == "__main__":
    run_cli(main)
