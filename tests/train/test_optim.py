"""Optimizer and LR schedule: warm-up/decay shapes, per-group multipliers, apex errors."""

from __future__ import annotations

import math

import pytest
import torch

from scl_fast.config import TrainConfig
from scl_fast.optim import WarmupDecay, build_optimizer, build_scheduler


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_warmup_then_decay(kind: str) -> None:
    sched = WarmupDecay(total_steps=100, warmup_frac=0.1, kind=kind)
    factors = [sched(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)  # warm-up starts at 1/warmup, not 0: the first step counts
    assert factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10], strict=True))
    if kind == "constant":
        assert all(f == 1.0 for f in factors[9:])
    else:
        tail = factors[10:]
        assert all(a >= b for a, b in zip(tail, tail[1:], strict=False))
        assert sched(100) == pytest.approx(0.0, abs=1e-12)
        mid = sched(55)
        assert mid == pytest.approx(0.5 if kind == "linear" else 0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-9)


def test_schedule_errors() -> None:
    with pytest.raises(ValueError, match="schedule"):
        WarmupDecay(10, 0.1, "step")
    with pytest.raises(ValueError, match="total_steps"):
        WarmupDecay(0, 0.1, "linear")


def test_group_multipliers_survive_the_schedule() -> None:
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    cfg = TrainConfig(steps=10, lr=1e-3, warmup_frac=0.2)
    opt = build_optimizer([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 5e-3, "weight_decay": 0.0}], cfg,
                          torch.device("cpu"))
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(10):
        (a.sum() + b.sum()).backward()
        opt.step()
        opt.zero_grad()
        lrs.append([g["lr"] for g in opt.param_groups])
        sched.step()
    for lr_a, lr_b in lrs:
        assert lr_b == pytest.approx(5 * lr_a)
    assert lrs[1][0] == pytest.approx(1e-3)  # peak right after the 2 warm-up steps
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == cfg.weight_decay
    assert opt.defaults["betas"] == cfg.betas


def test_scheduler_state_round_trips() -> None:
    p = torch.nn.Parameter(torch.randn(2))
    cfg = TrainConfig(steps=20, lr=1e-3)
    opt = build_optimizer([{"params": [p]}], cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer([{"params": [p]}], cfg, torch.device("cpu"))
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7 and sched2.get_last_lr() == sched.get_last_lr()


def test_apex_missing_is_a_clear_error() -> None:
    pytest.importorskip("torch")
    try:
        import apex.optimizers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("apex is installed here")
    cfg = TrainConfig(optimizer="apex_adam")
    with pytest.raises(ImportError, match="NVIDIA apex"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.randn(2))]}], cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="no parameter groups"):
        build_optimizer([], TrainConfig(), torch.device("cpu"))
