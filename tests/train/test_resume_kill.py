"""A run SIGKILLed after a checkpoint and resumed with ``--train.resume auto`` ends with the same weights as a run
that was never interrupted (CPU, deterministic mode, the real model at a tiny size)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scl_fast import checkpoint as ckpt

from .conftest import TINY_MODEL, run_program, short_run_args, sigkill_after_first_checkpoint

STEPS = 10


def _args(cache: Path, run: Path, *extra: str) -> list[str]:
    args = short_run_args(cache, run, steps=STEPS, batch=4, extra=[
        *TINY_MODEL, "--train.deterministic", "true", "--train.ckpt_every", "2", "--train.keep_ckpts", "20", *extra])
    return ["-m", "scl_fast.train", *args]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(demo_cache: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_program(_args(demo_cache, full), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    steps_done = sigkill_after_first_checkpoint(_args(demo_cache, cut), cut, cwd=tmp_path)
    assert steps_done and steps_done[-1] < STEPS, steps_done  # killed mid-run, after at least one checkpoint
    assert not (cut / "summary.json").exists()

    resumed = run_program(_args(demo_cache, cut, "--train.resume", "auto"), cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpt.checkpoint_path(cut, steps_done[-1])}" in resumed.stdout
    a = ckpt.load_weights(ckpt.checkpoint_path(full, STEPS))
    b = ckpt.load_weights(ckpt.checkpoint_path(cut, STEPS))
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max diff {(a[name] - b[name]).abs().max()}"
    state_a = ckpt.load_train_state(ckpt.checkpoint_path(full, STEPS))
    state_b = ckpt.load_train_state(ckpt.checkpoint_path(cut, STEPS))
    assert state_a["counters"]["samples"] == state_b["counters"]["samples"] == STEPS * 4
    assert state_a["ranks"][0]["data"]["positions"] == state_b["ranks"][0]["data"]["positions"]
