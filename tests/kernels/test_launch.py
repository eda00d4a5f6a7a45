"""The host-side launch arithmetic equals Triton's (it replaces triton.cdiv / next_power_of_2 on the call path)."""

from __future__ import annotations

import pytest
import torch
import triton

from scl_kernels._launch import cdiv, dot_block, next_pow2


def test_matches_triton() -> None:
    for n in range(1, 5000):
        assert next_pow2(n) == triton.next_power_of_2(n), n
        assert dot_block(n) == max(16, triton.next_power_of_2(n)), n
        for b in (1, 7, 16, 64, 128):
            assert cdiv(n, b) == triton.cdiv(n, b), (n, b)


def test_autotune_switch_reaches_every_pruner(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCL_KERNELS_AUTOTUNE=0 leaves one config to each autotuned kernel (attention and contrastive), so a GPU test
    run compiles one kernel per shape; unset, several stay to be timed."""
    from scl_kernels import attention, contrastive

    bf16 = torch.empty(0, dtype=torch.bfloat16)
    prunes = {
        "attention fwd": lambda: attention._make_prune("fwd")(
            attention.FWD_CONFIGS, {"Q_ptr": bf16, "Lq": 788, "Lk": 788}, BLOCK_D=64
        ),
        "attention dq": lambda: attention._make_prune("dq")(
            attention.DQ_CONFIGS, {"Q_ptr": bf16, "Lq": 788, "Lk": 788}, BLOCK_D=64
        ),
        "info_nce fwd": lambda: contrastive._prune_by_d(contrastive._FWD_GPU_CONFIGS, {"D": 512}),
        "info_nce bwd": lambda: contrastive._prune_by_d(contrastive._BWD_GPU_CONFIGS, {"D": 512}),
    }
    monkeypatch.delenv("SCL_KERNELS_AUTOTUNE", raising=False)
    assert all(len(prune()) > 1 for prune in prunes.values()), {k: len(p()) for k, p in prunes.items()}
    monkeypatch.setenv("SCL_KERNELS_AUTOTUNE", "0")
    assert {k: len(p()) for k, p in prunes.items()} == dict.fromkeys(prunes, 1)
