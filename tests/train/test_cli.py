"""The command-line programs: train (help, errors, a short real run), evaluate, plot, ablate's table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scl_fast.ablate import markdown_table
from scl_fast.plot import plot_run

from .conftest import TINY_MODEL, run_program, short_run_args


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_program(args, cwd=cwd, timeout=timeout)


def test_help_lists_every_option_and_bad_options_fail(tmp_path: Path) -> None:
    out = _run(["-m", "scl_fast.train", "--help"], tmp_path)
    assert out.returncode == 0
    for option in ("--train.steps", "--train.resume", "--train.distributed", "--model.loss.scl_weight",
                   "--data.batch_size", "--train.compile"):
        assert option in out.stdout
    bad = _run(["-m", "scl_fast.train", "--train.stpes", "3"], tmp_path)
    assert bad.returncode != 0 and "did you mean 'train.steps'" in bad.stderr


@pytest.mark.slow
def test_short_real_run_then_evaluate_and_plot(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = _run(["-m", "scl_fast.train", *short_run_args(demo_cache, run, steps=4, batch=8, extra=TINY_MODEL)],
               tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resolved config" in out.stdout and "== summary" in out.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and set(summary["final_losses"]) == {"total", "itm", "mlm", "itc", "scl"}
    for direction in ("text->image", "image->text", "text->video", "video->text"):
        assert 0 < summary["retrieval"][direction]["chance_R@1"] <= summary["retrieval"][direction]["R@10"] + 1

    ev = _run(["-m", "scl_fast.evaluate", "--ckpt", str(run), "--itm_k", "3", "--out", str(tmp_path / "ev.json")],
              tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["itm_k"] == 3
    for direction in ("text->image", "image->text", "text->video", "video->text"):
        m = result[direction]
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1

    png = _run(["-m", "scl_fast.plot", str(run)], tmp_path)
    assert png.returncode == 0, png.stderr[-2000:]
    _check_png(Path(png.stdout.strip()))


def _check_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1200, 450)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # not blank
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7].astype(int)}
    assert len(colours) > 50  # curves, bars, text: many colours, not a flat image


def test_plot_from_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(10, 110, 10):
            f.write(json.dumps({"step": step, "loss/total": 5 / step ** 0.3 + rng.random() * 0.1,
                                "loss/itc": 3 / step ** 0.2}) + "\n")
        f.write('{"step": 110, "loss/to')  # a line cut by a kill: ignored
    metrics = {"R@1": 0.2, "R@5": 0.5, "R@10": 0.7, "chance_R@1": 0.01}
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 100, "text->image": metrics,
                                                     "image->text": metrics}) + "\n")
    _check_png(plot_run(tmp_path))
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "missing")


def test_ablation_table() -> None:
    def summary(r1: float) -> dict:
        m = {"R@1": r1, "R@5": 0.5, "R@10": 0.6, "chance_R@1": 0.005}
        ret = {d: m for d in ("text->image", "image->text", "text->video", "video->text")}
        return {"steps": 10, "final_losses": {"total": 3.0},
                "retrieval": {**ret, "n_image": {"pairs": 200, "gallery": 200}}}

    table = markdown_table({"with": summary(0.25), "without": summary(0.125)}).splitlines()
    assert table[0].startswith("| run | steps | final loss | text->image R@1")
    assert table[2] == "| with | 10 | 3.000 | 0.250 | 0.250 | 0.250 | 0.250 |"
    assert table[3].startswith("| without | 10 | 3.000 | 0.125")
    assert table[4] == "| chance | | | 0.005 | 0.005 | 0.005 | 0.005 |"
