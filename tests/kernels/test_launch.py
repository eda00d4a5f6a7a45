"""The host-side launch helpers: arithmetic equal to Triton's (it replaces triton.cdiv / next_power_of_2 on the call
path), the autotune switch, and TunedLaunch's memories (the config per key, the compiled kernel per
specialisation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton

from scl_kernels._launch import DIRECT_LAUNCHES, TunedLaunch, cdiv, dot_block, next_pow2


def test_matches_triton() -> None:
    for n in range(1, 5000):
        assert next_pow2(n) == triton.next_power_of_2(n), n
        assert dot_block(n) == max(16, triton.next_power_of_2(n)), n
        for b in (1, 7, 16, 64, 128):
            assert cdiv(n, b) == triton.cdiv(n, b), (n, b)


def test_autotune_switch_reaches_every_pruner(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCL_KERNELS_AUTOTUNE=0 leaves one config to each autotuned kernel (attention and contrastive), so a GPU test
    run compiles one kernel per shape; unset, several stay to be timed."""
    from scl_kernels import contrastive
    from scl_kernels.attention import configs as attention

    bf16 = torch.empty(0, dtype=torch.bfloat16)
    prunes = {
        "attention fwd": lambda: attention._make_prune("fwd")(
            attention._all_configs("fwd"), {"Q_ptr": bf16, "Lq": 788, "Lk": 788}, BLOCK_D=64
        ),
        "attention dq": lambda: attention._make_prune("dq")(
            attention._all_configs("dq"), {"Q_ptr": bf16, "Lq": 788, "Lk": 788}, BLOCK_D=64
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


@pytest.mark.slow  # compiles 24 kernels for sm_90 in a child process: ~30 s on 2 cores
def test_direct_launches_pass_what_jit_function_run_passes() -> None:
    """TunedLaunch launches a remembered ``CompiledKernel`` itself instead of through ``JITFunction.run``. Under
    the offline driver (real compilation for sm_90, launches recorded), ``launch_scenario`` runs ten attention
    forward + backward calls three times: every launch through ``JITFunction.run``, then with direct launches
    twice. Each launch must reach the same compiled kernel with the same grid and arguments, and the last pass
    must not enter ``JITFunction.run`` at all. The calls vary what Triton specialises on (pointer alignment,
    lengths divisible by 16, dtype) so that a key coarser than Triton's would launch a wrong kernel here; one
    runs with a launch-enter hook (a profiler's), which must get each launch's metadata on every path."""
    from tests.kernels import launch_scenario

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(SCL_KERNELS_AUTOTUNE="0")  # one config per kernel: nothing to time without a GPU
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its current default
    proc = subprocess.run([sys.executable, "-c", "from tests.kernels.launch_scenario import main; main()"],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    through_run, remembering, direct = json.loads(proc.stdout.splitlines()[-1]).values()
    n_launches = 3 * len(launch_scenario.CALLS)  # forward, dQ, dK/dV
    assert through_run["jit_runs"] == through_run["launches"] == n_launches
    # a Triton version the direct launches were not checked against launches through JITFunction.run
    assert direct["jit_runs"] == (0 if DIRECT_LAUNCHES else n_launches) and direct["launches"] == n_launches
    assert 0 < remembering["jit_runs"] < n_launches or not DIRECT_LAUNCHES
    for call, records in through_run["records"].items():
        assert remembering["records"][call] == records, call
        assert direct["records"][call] == records, call
    # the calls do reach different compiled kernels wherever Triton specialises differently
    kernels = {call: tuple(r["hash"] for r in records["launches"]) for call, records in through_run["records"].items()}
    assert kernels["key mask again, a launch hook set"] == kernels["key mask"]
    assert kernels["dropout, another seed"] == kernels["dropout"]  # the seed is not specialised on
    assert len(set(kernels.values())) == len(kernels) - 2, kernels
    # the hook read every launch's metadata, in each pass (records compared above), and only while it was set
    hooked = through_run["records"]["key mask again, a launch hook set"]
    assert hooked["hook saw"] == [r["kernel"] for r in hooked["launches"]]
    assert sum(len(records["hook saw"]) for records in through_run["records"].values()) == 3


def _child(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a process of its own without the interpreter (Triton's real launch path)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its current default
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_triton_tells_pointers_apart_by_16_byte_alignment_only() -> None:
    """TunedLaunch remembers a compiled kernel per (pointer dtype, ``data_ptr() % 16 == 0``, exact scalars): it
    relies on Triton specialising a pointer on nothing finer. Triton's own binder, asked about fp16 and fp32
    pointers at every even byte offset up to 256, must give one specialisation for the 16-byte aligned ones and
    one for the others; a Triton that told 32- or 64-byte alignment apart would make a remembered kernel wrong
    for some launches, and fails here."""
    proc = _child("from tests.kernels.launch_scenario import specialization_probe; specialization_probe()")
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(proc.stdout.splitlines()[-1])
    assert set(found) == {"torch.float16", "torch.float32"}, found
    for dtype, rows in found.items():
        classes: dict[bool, set[str]] = {}
        for offset, specialization in rows:
            classes.setdefault(offset % 16 == 0, set()).add(specialization)
        assert len(classes[True]) == 1 and len(classes[False]) == 1, (dtype, classes)
        assert classes[True] != classes[False], (dtype, classes)


def test_installed_triton_is_one_the_direct_launches_were_checked_against() -> None:
    """Outside the checked versions TunedLaunch falls back to JITFunction.run: still correct, but the host time the
    direct launches save (tens of microseconds a launch, three launches a forward + backward) goes, silently. Fail
    instead, so a Triton upgrade re-runs ``test_direct_launches_pass_what_jit_function_run_passes`` and the probe
    above and then widens ``DIRECT_LAUNCHES``."""
    assert DIRECT_LAUNCHES, (
        f"triton {triton.__version__} is outside the versions TunedLaunch's direct launches were checked against "
        "(scl_kernels._launch.DIRECT_LAUNCHES): check it with tests/kernels/test_launch.py and widen the range"
    )
