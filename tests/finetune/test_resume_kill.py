"""Must show 3: an NLVR2 fine-tuning run SIGKILLed after a checkpoint and resumed with ``--train.resume auto`` ends
with the weights of a run never interrupted (CPU, deterministic mode). NLVR2: its two loaders in lock-step are the
fine-tuning data path with the most position to restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scl_fast import checkpoint as ckpt

from ..train.conftest import TINY_MODEL, run_program, sigkill_after_first_checkpoint

STEPS = 8


def _args(tmp_path: Path, run: Path, *extra: str) -> list[str]:
    return ["-m", "scl_fast.finetune", "nlvr2", *TINY_MODEL, "--nlvr2.demo_train", "24", "--nlvr2.demo_val", "4",
            "--train.steps", str(STEPS), "--train.run_dir", str(run), "--train.log_every", "2", "--train.ckpt_every",
            "2", "--train.keep_ckpts", "20", "--train.deterministic", "true", "--data.cache_dir",
            str(tmp_path / "cache"), "--data.batch_size", "4", "--data.num_workers", "1", "--data.shuffle_buffer", "8",
            *extra]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_program(_args(tmp_path, full), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    steps_done = sigkill_after_first_checkpoint(_args(tmp_path, cut), cut, cwd=tmp_path)
    assert steps_done and steps_done[-1] < STEPS, steps_done  # killed mid-run, after at least one checkpoint

    resumed = run_program(_args(tmp_path, cut, "--train.resume", "auto"), cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpt.checkpoint_path(cut, steps_done[-1])}" in resumed.stdout
    a = ckpt.load_weights(ckpt.checkpoint_path(full, STEPS))
    b = ckpt.load_weights(ckpt.checkpoint_path(cut, STEPS))
    assert set(a) == set(b) and "head.mlp.0.weight" in a and "second_image" in a
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max diff {(a[name].float() - b[name].float()).abs().max()}"
    state_a = ckpt.load_train_state(ckpt.checkpoint_path(full, STEPS))
    state_b = ckpt.load_train_state(ckpt.checkpoint_path(cut, STEPS))
    assert state_a["counters"]["samples"] == state_b["counters"]["samples"] > 0
    assert state_a["ranks"][0]["data"] == state_b["ranks"][0]["data"]  # both loaders' positions, the pair count
