"""Checkpoint files: round trip, atomicity, corruption and mismatch are errors, retention."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from scl_fast import checkpoint as ckpt


def _state() -> tuple[dict[str, torch.Tensor], dict]:
    emb = torch.randn(11, 5)
    model = {"emb.weight": emb, "decoder.weight": emb, "lin.bias": torch.randn(5)}  # tied: one storage
    train = {"optimizer": {"state": {0: {"exp_avg": torch.randn(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
             "counters": {"step": 3}, "ranks": [{"rng": ckpt.rng_state(torch.Generator().manual_seed(1))}]}
    return model, train


def _save(tmp_path, step: int, keep: int = 5):
    model, train = _state()
    path = ckpt.save(tmp_path, step, model_state=model, train_state=train, config={"a": {"b": 1}}, world_size=1,
                     keep=keep)
    return path, model, train


def test_round_trip_with_tied_weights(tmp_path) -> None:
    path, model, train = _save(tmp_path, 7)
    assert path == ckpt.checkpoint_path(tmp_path, 7) and ckpt.verify(path)["step"] == 7
    weights = ckpt.load_weights(path)
    assert set(weights) == set(model)
    for name in model:
        assert torch.equal(weights[name], model[name]), name
    state = ckpt.load_train_state(path)
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], train["optimizer"]["state"][0]["exp_avg"])
    assert ckpt.load_config(path) == {"a": {"b": 1}}
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_rng_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(5)
    state = ckpt.rng_state(gen)
    expected = (torch.rand(4), random.random(), np.random.rand(), torch.rand(3, generator=gen))
    ckpt.set_rng_state(state, gen)
    again = (torch.rand(4), random.random(), np.random.rand(), torch.rand(3, generator=gen))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and expected[2] == again[2]
    assert torch.equal(expected[3], again[3])


def test_latest_skips_temporary_folders_and_keeps_n(tmp_path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20, 30]
    # A write killed half-way leaves a temporary folder: it must be invisible.
    (tmp_path / ckpt.CKPT_DIR / ".tmp-step_00000040-123").mkdir()
    (tmp_path / ckpt.CKPT_DIR / ".tmp-step_00000040-123" / ckpt.WEIGHTS).write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 30)
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


@pytest.mark.parametrize("victim", [ckpt.WEIGHTS, ckpt.STATE, ckpt.CONFIG, ckpt.META])
def test_corruption_is_an_error(tmp_path, victim: str) -> None:
    _save(tmp_path, 10)
    path, _, _ = _save(tmp_path, 20)
    file = path / victim
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt|cannot read") as err:
        ckpt.latest_checkpoint(tmp_path)
    assert "step_00000010" in str(err.value)  # names the previous checkpoint to fall back to by hand


def test_missing_and_truncated_files(tmp_path) -> None:
    path, _, _ = _save(tmp_path, 1)
    (path / ckpt.STATE).write_bytes((path / ckpt.STATE).read_bytes()[:10])
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.verify(path)
    (path / ckpt.STATE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.verify(path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.verify(tmp_path / "nope")


def test_diff_config() -> None:
    assert ckpt.diff_config({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c: checkpoint 2, now 3"]
    assert ckpt.diff_config({"x": 1}, {"x": 1}) == []
