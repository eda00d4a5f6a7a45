"""The VQA accuracy and answer normalisation of the official evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``).

Written from the script's behaviour, quirks included, so numbers computed here match the evaluation server's:

- a predicted answer is cleaned of whitespace, punctuation (``process_punctuation``), number words, articles and
  apostrophe-less contractions (``process_digit_article``);
- the human answers are only punctuation-processed, and only when the ten of them are not all identical (so a
  unanimous ``"two"`` never matches a predicted ``"2"``, and a unanimous ``"yes."`` never matches ``"yes"``);
- accuracy = the mean over the 10 leave-one-out subsets of the annotators of min(1, #humans in the subset who gave
  the answer / 3): an answer given by 1, 2, 3 or >= 4 of 10 humans scores 0.3, 0.6, 0.9 or 1.

Training targets use the same numbers (``soft_score``): the soft score of an answer is the accuracy a model would
get by predicting it. Accuracies here are fractions (the official script prints percentages).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scl_fast.errors import ConfigError, PathError

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# The contracted forms the official table restores. Its keys are exactly these forms with one apostrophe removed
# ("couldn't've" <- "couldnt've" and "couldn'tve"); keys with capitals ("Im", "Id've") never match the lowercased
# text, as in the original.
_CONTRACTED = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "I'd've", "I'm", "I've",
    "isn't", "it'd", "it'd've", "it'll", "ma'am", "mightn't", "mightn't've", "might've", "mustn't", "must've",
    "needn't", "not've", "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd've", "should've", "shouldn't",
    "shouldn't've", "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll",
    "someone's", "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've", "there're",
    "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've",
    "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd",
    "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't",
    "wouldn't've", "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)


def _contractions() -> dict[str, str]:
    table = {}
    for form in _CONTRACTED:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        for i in cuts:
            table[form[:i] + form[i + 1:]] = form
    table["somebody'd"] = "somebodyd"  # the official table maps this one backwards; kept for identical scores
    return table


CONTRACTIONS = _contractions()
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)" (a lookahead where a lookbehind was meant), so a period is removed
# unless a digit follows; its re.UNICODE lands in sub()'s count argument: at most 32 periods go.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = 32


def process_punctuation(text: str) -> str:
    """Each punctuation mark is deleted where it touches a space (or anywhere, if the text has a digit,digit
    comma) and replaced by a space elsewhere; periods not followed by a digit are deleted."""
    out = text
    anywhere = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if anywhere or (mark + " " in text or " " + mark in text):  # tested on the input, as the original does
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits, articles dropped, apostrophe-less contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """A predicted answer as the official evaluation compares it (also how answer vocabularies are built)."""
    return process_digit_article(process_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def soft_score(count: int, annotators: int = 10) -> float:
    """Accuracy of an answer that ``count`` of ``annotators`` humans gave: the mean over the leave-one-out subsets
    of min(1, matches / 3) (``count`` subsets lose one match)."""
    if not 0 <= count <= annotators or annotators < 1:
        raise ValueError(f"need 0 <= count <= annotators >= 1, got {count} of {annotators}")
    return ((annotators - count) * min(1.0, count / 3) + count * min(1.0, (count - 1) / 3)) / annotators


def answer_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official accuracy of ``prediction`` for one question whose humans answered ``answers`` (raw strings)."""
    if not answers:
        raise ValueError("a question needs at least one human answer")
    predicted = normalize_answer(prediction)
    humans = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    return soft_score(sum(h == predicted for h in humans), len(humans))


def score(predictions: Mapping[int, str], annotations: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of ``predictions`` (question id -> answer) over the questions they cover, overall and per answer
    type. ``annotations`` maps a question id to its record (``answers``: the humans' answer strings,
    ``answer_type``)."""
    missing = [q for q in predictions if q not in annotations]
    if missing:
        raise ConfigError(f"{len(missing)} predicted question ids have no annotation, e.g. {missing[:3]}")
    per_type: dict[str, list[float]] = defaultdict(list)
    total = 0.0
    for qid, answer in predictions.items():
        record = annotations[qid]
        acc = answer_accuracy(answer, record["answers"])
        total += acc
        per_type[record.get("answer_type") or "unknown"].append(acc)
    n = len(predictions)
    return {"accuracy": total / n if n else 0.0, "questions": n,
            "per_answer_type": {t: sum(v) / len(v) for t, v in sorted(per_type.items())}}


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file, or a one-line error naming what it should have been."""
    path = Path(path)
    if not path.is_file():
        raise PathError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {path} is not valid JSON: {err}") from None


def annotation_records(data: Any, path: str | Path) -> dict[int, dict[str, Any]]:
    """Question id -> {"answers": [10 strings], "answer_type", "question_type", "multiple_choice_answer"} from an
    official annotations file's content (records without answers are left out)."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ConfigError(f"{path} is not a VQA annotations file: no 'annotations' list")
    out = {}
    for ann in data["annotations"]:
        answers = ann.get("answers") if isinstance(ann, dict) else None
        if not isinstance(answers, list) or not answers or "question_id" not in ann:
            continue
        texts = [a["answer"] for a in answers if isinstance(a, dict) and isinstance(a.get("answer"), str)]
        if len(texts) == len(answers):
            out[int(ann["question_id"])] = {"answers": texts, "answer_type": ann.get("answer_type"),
                                            "question_type": ann.get("question_type"),
                                            "multiple_choice_answer": ann.get("multiple_choice_answer")}
    return out


def score_files(predictions_path: str, questions_path: str, annotations_path: str) -> dict[str, Any]:
    """``python -m scl_fast.evaluate vqa --predictions P --questions Q --annotations A``: the accuracy of a
    submission-format predictions file (``[{"question_id": int, "answer": str}]``). As the official API, the
    predictions must answer exactly the questions of the questions file."""
    preds = read_json(predictions_path, "predictions file")
    if not isinstance(preds, list) or not all(isinstance(p, dict) and "question_id" in p and
                                              isinstance(p.get("answer"), str) for p in preds):
        raise ConfigError(f"{predictions_path} is not in the submission format [{{\"question_id\": int, "
                          f"\"answer\": str}}, ...]")
    predictions = {int(p["question_id"]): p["answer"] for p in preds}
    questions = read_json(questions_path, "questions file")
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise ConfigError(f"{questions_path} is not a VQA questions file: no 'questions' list")
    asked = {int(q["question_id"]) for q in questions["questions"]}
    if set(predictions) != asked:
        extra, lacking = set(predictions) - asked, asked - set(predictions)
        raise ConfigError(f"the predictions do not answer the questions of {questions_path}: {len(lacking)} "
                          f"unanswered, {len(extra)} not asked (e.g. {sorted(lacking or extra)[:3]})")
    annotations = annotation_records(read_json(annotations_path, "annotations file"), annotations_path)
    return score(predictions, annotations)


def most_frequent(answers: Iterable[str]) -> str:
    """The most frequent string (ties: the first seen), for the trivial baselines."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.__getitem__)
