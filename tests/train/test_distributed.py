"""torchrun on the CPU (gloo): the first step's gradients equal one process's on the same global batch, and the
demo preset trains a few steps with 2 ranks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tests.utils import assert_close

from .conftest import TINY_MODEL, run_program, short_run_args

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]


def _check(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_first_step_gradients_match_one_process(demo_cache: Path, tmp_path: Path) -> None:
    args = [*short_run_args(demo_cache, tmp_path / "run", batch=4), *TINY_MODEL, "--model.text.dropout", "0",
            "--model.fusion.dropout", "0", "--model.loss.itm_weight", "0", "--model.loss.mlm_weight", "0"]
    helper = str(Path(__file__).with_name("ddp_grads.py"))
    single, multi = tmp_path / "single.pt", tmp_path / "multi.pt"
    _check(run_program([helper, str(single), *args, "--data.batch_size", "8"], cwd=tmp_path, timeout=300,
                       env=ONE_THREAD))
    _check(run_program(_torchrun(2, [helper, str(multi), *args]), cwd=tmp_path, timeout=300, env=ONE_THREAD))
    one, two = torch.load(single), torch.load(multi)
    assert one["batch"] == two["batch"] == 8 and two["world_size"] == 2
    assert set(one["grads"]) == set(two["grads"]) and len(one["grads"]) > 10
    names = sorted(one["grads"])
    flat_one = torch.cat([one["grads"][n].double().flatten() for n in names])
    flat_two = torch.cat([two["grads"][n].double().flatten() for n in names])
    # fp32 sums in another order (per-rank halves, then the all-reduce): ~1e-5; a missing gather gives ~1e-1.
    assert_close(flat_two, flat_one, rtol=1e-4, name="all gradients")
    scale = max(float(g.norm()) for g in one["grads"].values())
    checked = 0
    for name in names:
        g = one["grads"][name].double()
        # Some gradients are zero in exact arithmetic (attention key biases): their float values are rounding noise.
        if g.norm() > 1e-6 * scale:
            assert_close(two["grads"][name].double(), g, rtol=1e-3, name=name)
            checked += 1
    assert checked > 10  # the comparison is not between zeros


@pytest.mark.slow
def test_torchrun_trains_the_demo_preset(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = short_run_args(demo_cache, run, steps=3, batch=4)
    proc = run_program(_torchrun(2, ["-m", "scl_fast.train", *args]), cwd=tmp_path, timeout=400, env=ONE_THREAD)
    _check(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["samples"] == 3 * 4 * 2
    assert set(summary["final_losses"]) == {"total", "itm", "mlm", "itc", "scl"}
    assert all(v > 0 and v == v for v in summary["final_losses"].values())
    assert summary["retrieval"]["text->image"]["chance_R@1"] > 0
    assert proc.stdout.count("== summary") == 1  # only rank 0 prints


ORPHAN = """
import subprocess, sys, time
# like torchrun: the worker in a session of its own, holding our stdout/stderr, then the launcher hangs
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]], start_new_session=True)
time.sleep(600)
"""


def test_run_program_kills_ranks_in_other_sessions(tmp_path: Path) -> None:
    """A timed-out run whose child sits in another session (as torchrun's ranks do) fails the test within the
    timeout instead of hanging pytest, and leaves no process behind."""
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        run_program(["-c", ORPHAN, str(tmp_path)], cwd=tmp_path, timeout=3)
    assert time.monotonic() - start < 30
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(tmp_path).encode() in (proc / "cmdline").read_bytes():
                left.append(proc.name)
        except OSError:
            continue  # exited while we looked
    assert not left
