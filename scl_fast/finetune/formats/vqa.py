"""VQAv2 as released: ``v2_OpenEnded_mscoco_<subtype>_questions.json`` and ``v2_mscoco_<subtype>_annotations.json``.

Questions refer to COCO images by id; the image of a question of subtype ``train2014`` is
``IMAGES/train2014/COCO_train2014_<12-digit id>.jpg`` (test-dev questions use the test2015 images). Annotations
carry the ten human answers of each question. The answer vocabulary is the answers most often chosen as
``multiple_choice_answer`` in the training annotations, normalised as the official evaluation does, kept when they
occur at least ``min_count`` times, at most ``max_answers`` of them (ViLT and METER: >= 9 times in train+val, 3,129
answers). A question's training target is the soft score of every vocabulary answer its humans gave
(``vqa_eval.soft_score``: 0.3, 0.6, 0.9, 1 for 1, 2, 3, >= 4 of 10), learnt with a binary cross-entropy per answer.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scl_fast.data.shards import Ledger
from scl_fast.errors import ConfigError

from ..vqa_eval import annotation_records, normalize_answer, read_json, soft_score
from . import Example


@dataclass
class Targets:
    """A training question's sparse soft target over the answer vocabulary."""

    indices: list[int]
    scores: list[float]


def image_path(images: str, subtype: str, image_id: int) -> str:
    """The COCO file of an image id for a questions file of ``subtype`` (train2014, val2014, test2015, test-dev2015:
    the test-dev questions ask about test2015 images)."""
    folder = "test2015" if subtype.startswith("test") else subtype
    return os.path.join(os.path.abspath(images), folder, f"COCO_{folder}_{int(image_id):012d}.jpg")


def read_questions(questions: Sequence[str], annotations: Sequence[str] | None, images: str,
                   ledger: Ledger) -> list[Example]:
    """Every question of the ``questions`` files with its annotation record as label (None without annotation
    files: test-dev). A question whose annotation is missing is skipped as ``bad_label``."""
    records: dict[int, dict] = {}
    for path in annotations or ():
        records |= annotation_records(read_json(path, "VQA annotations file"), path)
    examples = []
    for path in questions:
        data = read_json(path, "VQA questions file")
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise ConfigError(f"{path} is not a VQA questions file: no 'questions' list")
        subtype = data.get("data_subtype")
        if not isinstance(subtype, str):
            raise ConfigError(f"{path} has no 'data_subtype' (train2014, val2014, test2015, test-dev2015)")
        for q in data["questions"]:
            try:
                qid, image_id, text = int(q["question_id"]), int(q["image_id"]), str(q["question"])
            except (KeyError, TypeError, ValueError) as err:
                ledger.skip(path, str(q.get("question_id", "?") if isinstance(q, dict) else "?"), "bad_label",
                            f"malformed question record: {err}")
                continue
            label = records.get(qid)
            if annotations and label is None:
                ledger.skip(path, str(qid), "bad_label", "no annotation for this question")
                continue
            examples.append(Example((image_path(images, subtype, image_id),), text, str(qid), label))
    return examples


def answer_vocabulary(examples: Sequence[Example], *, max_answers: int, min_count: int) -> list[str]:
    """The normalised ``multiple_choice_answer``s of the training questions seen at least ``min_count`` times, most
    frequent first (ties: alphabetical), at most ``max_answers``."""
    counts = Counter(normalize_answer(e.label["multiple_choice_answer"]) for e in examples
                     if e.label and isinstance(e.label.get("multiple_choice_answer"), str))
    ranked = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    if not ranked:
        raise ConfigError(f"no answer occurs {min_count} times in the training annotations: lower "
                          f"--vqa.min_answer_count")
    return ranked[:max_answers]


def soft_targets(answers: Sequence[str], vocabulary: dict[str, int]) -> Targets:
    """The soft score of each vocabulary answer among one question's human ``answers`` (normalised first)."""
    counts = Counter(normalize_answer(a) for a in answers)
    hits = sorted((vocabulary[a], soft_score(n, len(answers))) for a, n in counts.items() if a in vocabulary)
    return Targets([i for i, _ in hits], [s for _, s in hits])


def training_targets(examples: Sequence[Example], vocabulary: list[str], ledger: Ledger, source: str
                     ) -> tuple[list[Example], list[Targets]]:
    """The questions with at least one answer in ``vocabulary`` and their targets; the others are skipped as
    ``unknown_answer`` (an all-zero target teaches nothing but "no answer")."""
    index = {a: i for i, a in enumerate(vocabulary)}
    kept, targets = [], []
    for e in examples:
        t = soft_targets(e.label["answers"], index)
        if not t.indices:
            ledger.skip(source, e.uid, "unknown_answer")
            continue
        kept.append(e)
        targets.append(t)
    return kept, targets
