"""The host-side launch helpers: arithmetic equal to Triton's (it replaces triton.cdiv / next_power_of_2 on the call
path), the autotune switch, and the per-key config memory of TunedLaunch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import triton

from scl_kernels._launch import TunedLaunch, cdiv, dot_block, next_pow2


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


class _FakeKernel:
    """Records direct launches ``fn[grid](*args, **kwargs)`` (what TunedLaunch does once a key has its config)."""

    def __init__(self) -> None:
        self.launches: list[tuple[object, tuple, dict]] = []

    def __getitem__(self, grid: object):  # noqa: ANN204
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


class _FakeAutotuner:
    """A triton.autotune stand-in: each launch through it counts as a tuning, and picks a config from LQ_BUCKET."""

    arg_names = ("Q_ptr", "K_ptr", "n", "LQ_BUCKET")

    def __init__(self) -> None:
        self.fn = _FakeKernel()
        self.tunings = 0
        self.best_config = None
        self.cache = {"seen": "by the report"}

    def __getitem__(self, grid: object):  # noqa: ANN204
        def launch(*args: object, **kwargs: object) -> None:
            self.tunings += 1
            self.best_config = triton.Config({"BLOCK_M": 32 if args[3] <= 64 else 128}, num_warps=4, num_stages=3)

        return launch


def test_tuned_launch_keeps_the_chosen_config_per_key() -> None:
    """The autotuner runs once per key; later launches of that key go to the kernel with the chosen config. The key
    separates the pointer arguments' dtypes, the named positional arguments and the keyword flags, and nothing
    else (``n`` varies freely)."""
    tuner = _FakeAutotuner()
    launch = TunedLaunch(tuner, key_args=("LQ_BUCKET",))
    q, k16, k32 = torch.empty(1), torch.empty(1, dtype=torch.float16), torch.empty(1)

    def go(k: torch.Tensor, n: int, bucket: int, **flags: bool) -> None:
        launch["grid"](q, k, n, bucket, **flags)

    go(k32, 5, 64, HAS_MASK=True)
    go(k32, 9, 64, HAS_MASK=True)  # same key, other n: straight to the kernel
    assert tuner.tunings == 1 and len(tuner.fn.launches) == 1
    grid, args, kwargs = tuner.fn.launches[0]
    assert grid == "grid" and args == (q, k32, 9, 64)
    assert kwargs["HAS_MASK"] is True and kwargs["BLOCK_M"] == 32 and kwargs["num_warps"] == 4
    go(k32, 5, 128, HAS_MASK=True)  # other bucket
    go(k16, 5, 64, HAS_MASK=True)  # other dtype of a pointer argument
    go(k32, 5, 64, HAS_MASK=False)  # other flag
    assert tuner.tunings == 4 and len(tuner.fn.launches) == 1
    go(k32, 7, 128, HAS_MASK=True)
    assert tuner.fn.launches[-1][2]["BLOCK_M"] == 128
    assert launch.cache == {"seen": "by the report"}  # the autotuner's state stays readable
    with pytest.raises(ValueError, match="not a \\*_ptr parameter"):
        TunedLaunch(SimpleNamespace(arg_names=("n", "Q_ptr")), key_args=())
