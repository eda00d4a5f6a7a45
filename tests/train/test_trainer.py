"""The training loop in-process with a small stand-in model: logs, summary, resume, errors, non-finite steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scl_fast import checkpoint as ckpt
from scl_fast.config import parse_args
from scl_fast.trainer import NonFiniteLossError, Trainer

from .conftest import short_run_args
from .standin import StandInModel, make_standin


def _run(args: list[str], factory=make_standin) -> tuple[Trainer, dict]:
    trainer = Trainer(parse_args(args), model_factory=factory, progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer, summary


def test_short_run_writes_logs_checkpoint_and_summary(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer, summary = _run(short_run_args(demo_cache, run, steps=6, extra=["--train.ckpt_every", "4"]))
    assert summary["steps"] == 6 and summary["samples"] == 6 * 8
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["steps"] == 6
    for direction in ("text->image", "image->text", "text->video", "video->text"):
        m = on_disk["retrieval"][direction]
        assert set(m) >= {"R@1", "R@5", "R@10", "chance_R@1"}
        assert 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1.0 and 0 < m["chance_R@1"] < 1
    assert set(on_disk["final_losses"]) == {"total", "itc", "itm"}
    assert all(math.isfinite(v) for v in on_disk["final_losses"].values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss/total" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    for r in train_records:
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1
    assert any(k.startswith("eval/") for r in records for k in r)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4, 6]
    assert list((run / "tensorboard").iterdir())
    weights = ckpt.load_weights(ckpt.latest_checkpoint(run))
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(weights[name], value), name


def test_lr_schedule_and_head_multiplier_in_the_loop(demo_cache: Path, tmp_path: Path) -> None:
    args = short_run_args(demo_cache, tmp_path / "r", steps=4, extra=["--train.lr", "1e-3", "--train.head_lr_mult",
                                                                       "5", "--train.warmup_frac", "0.5"])
    trainer, _ = _run(args)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[1] == pytest.approx(5 * lrs[0]) and lrs[0] == pytest.approx(0.0, abs=1e-12)  # decayed to 0
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr"] == pytest.approx(1e-3)  # logged after step 2 = the end of the 2 warm-up steps


def test_resume_in_process_is_bit_exact(demo_cache: Path, tmp_path: Path) -> None:
    full, _ = _run(short_run_args(demo_cache, tmp_path / "full", steps=6, extra=["--train.deterministic", "true"]))
    # Same run cut at step 3 (its checkpoint), then resumed to 6.
    cut = short_run_args(demo_cache, tmp_path / "cut", steps=6, extra=["--train.deterministic", "true",
                                                                      "--train.ckpt_every", "3"])
    first = Trainer(parse_args(cut), model_factory=make_standin, progress=False)
    try:
        first.cfg.train.steps = 3  # stop early without changing the saved config (the schedule still spans 6)
        first.train()
    finally:
        first.close()
    (tmp_path / "cut" / "summary.json").unlink()
    resumed, _ = _run([*cut, "--train.resume", "auto"])
    assert resumed.counters.step == 6 and resumed.counters.samples == full.counters.samples
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_errors(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(short_run_args(demo_cache, run, steps=2))
    with pytest.raises(ckpt.CheckpointError, match="different config: train.lr"):
        Trainer(parse_args(short_run_args(demo_cache, run, steps=2, extra=["--train.lr", "0.5", "--train.resume",
                                                                          "auto"])), model_factory=make_standin)
    weights = run / "checkpoints" / "step_00000002" / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        Trainer(parse_args(short_run_args(demo_cache, run, steps=2, extra=["--train.resume", "auto"])),
                model_factory=make_standin)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        Trainer(parse_args(short_run_args(demo_cache, run, steps=2, extra=["--train.resume", str(tmp_path / "x")])),
                model_factory=make_standin)


class _Poisoned(StandInModel):
    """Returns a NaN loss on the listed forward calls (0-based)."""

    def __init__(self, cfg, bad: set[int]) -> None:
        super().__init__(cfg)
        self.bad, self.calls = bad, 0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if self.calls in self.bad:
            out.loss = out.loss * float("nan")
        self.calls += 1
        return out


def test_non_finite_steps_are_skipped_then_abort(demo_cache: Path, tmp_path: Path) -> None:
    trainer, summary = _run(short_run_args(demo_cache, tmp_path / "a", steps=5),
                            factory=lambda cfg: _Poisoned(cfg, {1, 2}))
    assert summary["bad_steps"] == 2 and trainer.counters.bad_in_row == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # NaN gradients never applied
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        _run(short_run_args(demo_cache, tmp_path / "b", steps=8, extra=["--train.max_bad_steps", "3"]),
             factory=lambda cfg: _Poisoned(cfg, {2, 3, 4}))


def test_grad_accumulation_counts_micro_batches(demo_cache: Path, tmp_path: Path) -> None:
    trainer, summary = _run(short_run_args(demo_cache, tmp_path / "acc", steps=3, extra=["--train.grad_accum", "2"]))
    assert summary["steps"] == 3 and summary["samples"] == 3 * 2 * 8
    assert trainer.scheduler.last_epoch == 3
