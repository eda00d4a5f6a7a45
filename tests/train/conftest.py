"""Shared fixtures of the training tests: one small demo corpus per session, short-run overrides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SMALL_CORPUS = ["--data.demo_train_images", "96", "--data.demo_train_videos", "32", "--data.demo_val_images", "24",
                "--data.demo_val_videos", "16"]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo corpus, written once per session (the trainer writes it on first use otherwise)."""
    from scl_fast.data import ensure_demo_corpus

    cache = tmp_path_factory.mktemp("demo_cache")
    ensure_demo_corpus(str(cache), train_images=96, train_videos=32, val_images=24, val_videos=16)
    return cache


def short_run_args(cache: Path, run_dir: Path, *, steps: int = 6, batch: int = 8, extra: list[str] | None = None
                   ) -> list[str]:
    """Overrides for a few-step run on the small corpus (log and checkpoint often, one loader worker)."""
    return ["--train.steps", str(steps), "--train.run_dir", str(run_dir), "--train.log_every", "2",
            "--data.cache_dir", str(cache), "--data.batch_size", str(batch), "--data.num_workers", "1",
            "--data.shuffle_buffer", "16", *SMALL_CORPUS, *(extra or [])]


# A much smaller SCLModel than the demo preset, for subprocess tests whose subject is the loop, not the model.
TINY_MODEL = ["--model.vision.width", "32", "--model.vision.layers", "1", "--model.vision.heads", "2",
              "--model.text.width", "32", "--model.text.layers", "1", "--model.text.heads", "2",
              "--model.text.intermediate", "64", "--model.fusion.width", "32", "--model.fusion.layers", "1",
              "--model.fusion.heads", "2", "--model.fusion.intermediate", "64", "--model.loss.itc_dim", "32"]


def run_program(args: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in its own process group; on timeout the whole group is killed (torchrun's ranks and
    loader workers too, which a plain ``subprocess.run`` timeout would leave running) and the test fails."""
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        # torchrun starts each rank in a session of its own, out of reach of killpg; a surviving rank keeps the
        # pipes open and communicate() would wait for it forever: kill every process that names this test's folder
        _kill_matching(str(cwd))
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            out, err = "", "(output lost: a child process kept the pipes open)"
        pytest.fail(f"{args[:3]} timed out after {timeout} s; stderr tail:\n{err[-3000:]}")
    finally:
        _kill_matching(str(cwd))  # a rank orphaned by its launcher must not outlive the test (or hold the CPU)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def sigkill_after_first_checkpoint(args: list[str], run_dir: Path, *, cwd: Path, timeout: float = 240) -> list[int]:
    """Start ``python ARGS`` (a run writing to ``run_dir``), SIGKILL it as soon as its first checkpoint is there, and
    return the steps of the checkpoints it left."""
    from scl_fast import checkpoint as ckpt

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ckpt.list_checkpoints(run_dir) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return [s for s, _ in ckpt.list_checkpoints(run_dir)]


def _kill_matching(marker: str) -> None:
    """SIGKILL every process of ours whose command line contains ``marker`` (a test's unique tmp folder)."""
    if not Path("/proc").is_dir():  # not Linux: nothing to scan
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmdline:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or not ours
