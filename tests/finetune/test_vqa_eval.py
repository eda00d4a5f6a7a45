"""The official VQA accuracy and answer normalisation, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scl_fast.errors import ConfigError
from scl_fast.evaluate import main as evaluate_main
from scl_fast.finetune.vqa_eval import (
    CONTRACTIONS,
    answer_accuracy,
    normalize_answer,
    process_punctuation,
    score,
    soft_score,
)


def _humans(answer: str, count: int, other: str = "blue") -> list[str]:
    return [answer] * count + [other] * (10 - count)


@pytest.mark.parametrize(("count", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy_by_hand(count: int, expected: float) -> None:
    # 2 of 10: the 2 subsets without one of them hold 1 match (1/3), the other 8 hold 2 (2/3): (2/3 + 16/3) / 10 = 0.6
    assert answer_accuracy("red", _humans("red", count)) == pytest.approx(expected)
    assert soft_score(count) == pytest.approx(expected)


def test_prediction_normalisation() -> None:
    assert normalize_answer(" Two\t") == "2"
    assert normalize_answer("The red one.") == "red 1"
    assert normalize_answer("dont know") == "don't know"
    assert normalize_answer("1,000") == "1000"  # a digit,digit comma: every mark goes, nothing becomes a space
    assert normalize_answer("yes/no") == "yes no"  # a mark between words becomes a space
    assert normalize_answer("3.5") == "3.5"  # a period before a digit stays
    assert normalize_answer("an apple") == "apple"
    assert process_punctuation("hi !") == "hi "  # a mark touching a space is deleted


def test_contraction_table_matches_the_official_keys() -> None:
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["couldnt've"] == "couldn't've"
    assert CONTRACTIONS["couldn'tve"] == "couldn't've" and CONTRACTIONS["'ows'at"] == "'ow's'at"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # the official table's backwards entry
    assert "im" not in CONTRACTIONS and "lets" not in CONTRACTIONS and "couldntve" not in CONTRACTIONS


def test_human_answers_only_punctuation_processed_and_only_when_they_differ() -> None:
    assert answer_accuracy("2", ["two"] * 10) == 0.0  # human answers are never digit-normalised
    assert answer_accuracy("yes", ["yes."] * 10) == 0.0  # ... nor cleaned when all ten agree
    assert answer_accuracy("yes", ["yes."] * 9 + ["no"]) == pytest.approx(1.0)
    assert answer_accuracy("Yes!", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)


def test_score_per_answer_type() -> None:
    annotations = {1: {"answers": _humans("red", 2), "answer_type": "other"},
                   2: {"answers": _humans("3", 10), "answer_type": "number"}}
    result = score({1: "red", 2: "three"}, annotations)
    assert result["accuracy"] == pytest.approx((0.6 + 1.0) / 2) and result["questions"] == 2
    assert result["per_answer_type"] == pytest.approx({"number": 1.0, "other": 0.6})
    with pytest.raises(ConfigError, match="no annotation"):
        score({3: "red"}, annotations)


def test_predictions_file_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    questions = tmp_path / "q.json"
    annotations = tmp_path / "a.json"
    predictions = tmp_path / "p.json"
    questions.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 5, "question": "?"},
                                                   {"question_id": 2, "image_id": 5, "question": "?"}]}))
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": q, "answer_type": "other", "answers": [{"answer": a} for a in answers]}
        for q, answers in ((1, _humans("red", 2)), (2, _humans("cat", 1, "dog")))]}))
    predictions.write_text(json.dumps([{"question_id": 1, "answer": "Red"}, {"question_id": 2, "answer": "dog"}]))
    args = ["vqa", "--predictions", str(predictions), "--questions", str(questions), "--annotations",
            str(annotations)]
    result = evaluate_main(args)
    assert result["accuracy"] == pytest.approx((0.6 + 1.0) / 2)
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(0.8)
    predictions.write_text(json.dumps([{"question_id": 1, "answer": "red"}]))
    with pytest.raises(ConfigError, match="1 unanswered"):
        evaluate_main(args)
