"""Must show 4: ``torchrun --nproc_per_node 2`` on the CPU (gloo) fine-tunes VQA for a few steps: every rank trains,
the evaluation gathers both ranks' answers, rank 0 alone reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..train.conftest import TINY_MODEL, run_program


@pytest.mark.slow
def test_torchrun_fine_tunes_vqa(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "scl_fast.finetune", "vqa",
            *TINY_MODEL, "--vqa.demo_train", "24", "--vqa.demo_val", "8", "--vqa.min_answer_count", "1",
            "--train.steps", "3", "--train.log_every", "1", "--train.run_dir", str(run), "--data.cache_dir",
            str(tmp_path / "cache"), "--data.batch_size", "4", "--data.num_workers", "1"]
    proc = run_program(args, cwd=tmp_path, timeout=400, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["samples"] == 3 * 4 * 2
    val = summary["vqa"]["val"]
    assert val["questions"] == 24 and val["skipped"] == 0  # each rank answered its half, rank 0 got both
    assert len(json.loads((run / "vqa_predictions.json").read_text())) == 24
    assert proc.stdout.count("== summary") == 1
