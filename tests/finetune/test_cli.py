"""The programs: ``python -m scl_fast.finetune TASK`` on its demo, ``python -m scl_fast.evaluate TASK`` on the run,
the VQA predictions file, and the one-line errors of ``--init``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scl_fast.errors import EXIT_USER_ERROR
from scl_fast.finetune.__main__ import main as finetune_main

from ..train.conftest import TINY_MODEL, run_program

# A demo small enough for seconds: 24 training images (72 questions), 8 evaluation images.
SMALL_VQA = ["--vqa.demo_train", "24", "--vqa.demo_val", "8", "--vqa.min_answer_count", "1"]


def _demo_args(tmp_path: Path, run: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, *SMALL_VQA, "--train.steps", "3", "--train.log_every", "1", "--train.run_dir", str(run),
            "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "8", "--data.num_workers", "1", *extra]


@pytest.mark.slow
def test_vqa_demo_run_then_evaluate_and_score_its_predictions(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = run_program(["-m", "scl_fast.finetune", "vqa", *_demo_args(tmp_path, run)], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no --init, the model starts from random weights" in out.stdout
    assert "== summary" in out.stdout and "baseline" in out.stdout
    val = json.loads((run / "summary.json").read_text())["vqa"]["val"]
    assert val["questions"] == 24 and 0 <= val["accuracy"] <= 1 and 0 < val["baseline"] < 1

    ev = run_program(["-m", "scl_fast.evaluate", "vqa", "--ckpt", str(run), "--out_dir", str(tmp_path),
                      "--out", str(tmp_path / "ev.json")], cwd=tmp_path, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["val"]["accuracy"] == pytest.approx(val["accuracy"])  # the same checkpoint, the same questions
    predictions = json.loads((tmp_path / "vqa_predictions.json").read_text())
    assert len(predictions) == 24
    assert all(set(p) == {"question_id", "answer"} and isinstance(p["question_id"], int) and
               isinstance(p["answer"], str) for p in predictions)

    demo = next((tmp_path / "cache").glob("finetune-vqa-*"))
    scored = run_program(["-m", "scl_fast.evaluate", "vqa", "--predictions", str(tmp_path / "vqa_predictions.json"),
                          "--questions", str(demo / "v2_OpenEnded_mscoco_val2014_questions.json"),
                          "--annotations", str(demo / "v2_mscoco_val2014_annotations.json")], cwd=tmp_path, timeout=120)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(val["accuracy"])

    # --init: a fine-tuning run's backbone starts another task, with the model section of its config
    nlvr2 = run_program(["-m", "scl_fast.finetune", "nlvr2", "--init", str(run), "--train.steps", "1",
                         "--train.run_dir", str(tmp_path / "nlvr2"), "--data.cache_dir", str(tmp_path / "cache"),
                         "--nlvr2.demo_train", "8", "--nlvr2.demo_val", "4", "--data.batch_size", "4",
                         "--data.num_workers", "0"], cwd=tmp_path, timeout=300)
    assert nlvr2.returncode == 0, nlvr2.stderr[-3000:]
    assert json.loads((tmp_path / "nlvr2" / "config.json").read_text())["model"]["fusion"]["width"] == 32


@pytest.mark.parametrize(("extra", "message"), [
    (["--init", "nowhere"], "--init nowhere: no checkpoint there"),
    (["--train.stpes", "3"], "did you mean 'train.steps'"),
    (["--vqa.train_questions", "nowhere.json", "--vqa.train_annotations", "a.json", "--vqa.images", "."],
     "VQA annotations file not found: a.json"),
])
def test_bad_input_is_one_line(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        finetune_main(["vqa", *extra, "--train.run_dir", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == EXIT_USER_ERROR and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_mismatched_init_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scl_fast import checkpoint as ckpt
    from scl_fast.config import to_dict
    from scl_fast.finetune.config import parse_finetune_args
    from scl_fast.model import SCLModel

    cfg = parse_finetune_args("vqa", TINY_MODEL)
    ckpt.save(tmp_path / "pre", 1, model_state=SCLModel(cfg.model).state_dict(), train_state={}, config=to_dict(cfg),
              world_size=1, keep=1)
    with pytest.raises(SystemExit) as stop:  # the checkpoint's model, one fusion layer more than it has
        finetune_main(["vqa", "--init", str(tmp_path / "pre"), "--model.fusion.layers", "2", "--train.run_dir",
                       str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"), *SMALL_VQA])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == EXIT_USER_ERROR and len(lines) == 1, lines
    assert "does not fit the model" in lines[0] and "missing, e.g. fusion.image_layers.1" in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_vqa_demo_learns_beyond_the_baseline(tmp_path: Path) -> None:
    """A small demo and the tiny model, 250 steps: far above always answering the most frequent answer. Labels that
    did not line up with their questions (a row mix-up between loader and targets) would leave it at that baseline."""
    summary = finetune_main(["vqa", *TINY_MODEL, "--vqa.demo_train", "200", "--vqa.demo_val", "40",
                             "--train.steps", "250", "--train.lr", "1e-3", "--data.batch_size", "16",
                             "--train.run_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"),
                             "--data.num_workers", "1"])
    val = summary["vqa"]["val"]
    assert val["accuracy"] > val["baseline"] + 0.2, val
