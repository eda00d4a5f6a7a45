"""Runs never lose work: a used run folder is refused, SIGTERM/SIGUSR1 write checkpoints, a SIGKILLed trainer leaves
no process behind, errors a user can act on are one line, and a finished run is not rewritten by a resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scl_fast import checkpoint as ckpt
from scl_fast import runfolder
from scl_fast.errors import EXIT_PREEMPTED, EXIT_USER_ERROR, PathError, run_cli

from ..data.media import write_tar
from ..processes import alive, descendants
from .conftest import ROOT, TINY_MODEL, run_program, short_run_args


def _train(cache: Path, run: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["-m", "scl_fast.train", *short_run_args(cache, run, steps=steps, batch=4, extra=[*TINY_MODEL, *extra])]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _logged_step(run: Path) -> int:
    """The last step in the run's metrics.jsonl (0 before the first record)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.strip().endswith("}")]
    return max(steps, default=0)


def _wait(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.slow
def test_a_used_run_folder_is_refused_and_left_byte_identical(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_program(_train(demo_cache, run, "--train.ckpt_every", "2", "--train.keep_ckpts", "1"), cwd=tmp_path,
                        timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _digests(run)
    assert "checkpoints/step_00000004/model.safetensors" in before and "metrics.jsonl" in before

    again = run_program(_train(demo_cache, run, "--train.ckpt_every", "2", "--train.keep_ckpts", "1"), cwd=tmp_path,
                        timeout=300)
    assert again.returncode == EXIT_USER_ERROR
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run folder {run} already holds a run"), again.stderr
    assert "--train.resume auto" in lines[0] and "--train.overwrite true" in lines[0]
    assert _digests(run) == before, "the refused run changed the first run's files"

    moved = run_program(_train(demo_cache, run, "--train.overwrite", "true"), cwd=tmp_path, timeout=300)
    assert moved.returncode == 0, moved.stderr[-3000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and _digests(aside[0]) == before, "overwrite must move the old run aside, intact"
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


def test_rotation_deletes_only_its_own_lineage(tmp_path: Path) -> None:
    weights = {"w": torch.randn(3)}

    def save(step: int, run_id: str) -> None:
        ckpt.save(tmp_path, step, model_state=weights, train_state={"counters": {"step": step}}, config={},
                  world_size=1, keep=2, run_id=run_id)

    for step in (100, 200, 300):
        save(step, "old")
    for step in (10, 20, 30, 40):
        save(step, "new")
    left = [(step, json.loads((path / ckpt.META).read_text())["run_id"])
            for step, path in ckpt.list_checkpoints(tmp_path)]
    assert left == [(30, "new"), (40, "new"), (200, "old"), (300, "old")]


def test_truncate_logs_keeps_the_records_up_to_the_resumed_step(tmp_path: Path) -> None:
    records = "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (2, 4, 6, 8))
    (tmp_path / "metrics.jsonl").write_text(records + '{"step": 10, "lo')  # the last line cut by a kill
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 4}) + "\n" + json.dumps({"step": 8}) + "\n")
    assert runfolder.truncate_logs(tmp_path, 5) == 4
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert [json.loads(x)["step"] for x in (tmp_path / "eval.jsonl").read_text().splitlines()] == [4]


@pytest.mark.slow
def test_sigusr1_checkpoints_and_sigterm_stops_resumably_with_the_same_weights(demo_cache: Path,
                                                                               tmp_path: Path) -> None:
    steps = 60
    extra = ("--train.deterministic", "true", "--train.ckpt_every", "1000", "--train.keep_ckpts", "5")
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_program(_train(demo_cache, full, *extra, steps=steps), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = _start(_train(demo_cache, cut, *extra, steps=steps), tmp_path)
    try:
        _wait(lambda: _logged_step(cut) >= 2, proc, "the first metrics")
        proc.send_signal(signal.SIGUSR1)  # checkpoint now and go on
        _wait(lambda: ckpt.list_checkpoints(cut), proc, "the SIGUSR1 checkpoint")
        usr1_step = ckpt.list_checkpoints(cut)[0][0]
        _wait(lambda: _logged_step(cut) > usr1_step, proc, "a step after the SIGUSR1 checkpoint")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    saved = [s for s, _ in ckpt.list_checkpoints(cut)]
    assert saved[0] == usr1_step and len(saved) == 2 and usr1_step < saved[1] < steps, saved
    assert f"stopped by SIGTERM at step {saved[1]}" in out and "--train.resume auto" in out
    assert _logged_step(cut) <= saved[1] and not (cut / "summary.json").exists()

    resumed = run_program(_train(demo_cache, cut, *extra, "--train.resume", "auto", steps=steps), cwd=tmp_path,
                          timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = ckpt.load_weights(ckpt.checkpoint_path(full, steps)), ckpt.load_weights(ckpt.checkpoint_path(cut, steps))
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max diff {(a[name] - b[name]).abs().max()}"
    logged = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    # one record per logged step, then the final evaluation's at the last step: never backwards
    assert logged == sorted(logged) == [*range(2, steps + 1, 2), steps], "metrics.jsonl must not run backwards"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_sigkill_leaves_no_process_of_the_trainer_alive(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # The demo model with 2 loader workers decoding on the host: the workers fill their pipes while the trainer
    # computes, the state in which a worker of a killed trainer blocked forever.
    args = ["-m", "scl_fast.train", *short_run_args(demo_cache, run, steps=500, batch=16),
            "--data.num_workers", "2", "--data.decoder", "host"]
    proc = _start(args, tmp_path)
    try:
        _wait(lambda: _logged_step(run) >= 2, proc, "the first metrics")
        tree = descendants(proc.pid)
        assert len(tree) >= 2, f"expected the loader workers among {tree}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in tree if alive(p)]
    finally:
        for p in tree if "tree" in locals() else ():
            if alive(p):
                os.kill(p, signal.SIGKILL)
    assert not left, f"processes of the killed trainer still alive after 10 s: {left}"


@pytest.mark.slow
def test_errors_a_user_can_act_on_are_one_line(demo_cache: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from scl_fast import evaluate, plot, train

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {steps: [1,\n")
    cases = {  # run in this process through run_cli, the wrapper each program's __main__ calls
        "missing config": (train.main, ["--config", str(tmp_path / "none.yaml")], "config file not found"),
        "malformed config": (train.main, ["--config", str(bad_yaml)], "is not valid YAML"),
        "unknown option": (train.main, ["--train.stpes", "3"], "did you mean 'train.steps'"),
        "evaluate, bad --ckpt": (lambda a: run_cli(evaluate.main, a), ["--ckpt", str(tmp_path / "no")], "not exist"),
        "plot, bad run folder": (lambda a: run_cli(plot.main, a), [str(tmp_path)], "has no metrics.jsonl"),
    }
    for name, (program, args, message) in cases.items():
        with pytest.raises(SystemExit) as stop:
            program(args)
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == EXIT_USER_ERROR and len(lines) == 1, f"{name}: {lines}"
        assert lines[0].startswith("error: ") and message in lines[0], f"{name}: {lines}"
    with pytest.raises(PathError):  # --debug: the exception itself, with its traceback
        run_cli(plot.main, [str(tmp_path), "--debug"])

    # A corrupt checkpoint on resume, and a bad sample in strict mode (raised in a loader worker).
    run = tmp_path / "run"
    assert run_program(_train(demo_cache, run, "--train.ckpt_every", "2"), cwd=tmp_path, timeout=300).returncode == 0
    weights = ckpt.checkpoint_path(run, 4) / ckpt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    corrupt = run_program(_train(demo_cache, run, "--train.resume", "auto"), cwd=tmp_path, timeout=300)
    lines = corrupt.stderr.strip().splitlines()
    assert corrupt.returncode == EXIT_USER_ERROR and len(lines) == 1, corrupt.stderr[-2000:]
    assert "is corrupt: model.safetensors does not match its recorded checksum" in lines[0], lines
    shard = tmp_path / "bad.tar"
    write_tar(str(shard), [("a.jpg", b"\xff\xd8\xff\xe0not a jpeg at all" * 4), ("a.txt", b"a caption")])
    strict = run_program(["-m", "scl_fast.train", *short_run_args(demo_cache, tmp_path / "strict", extra=TINY_MODEL),
                          "--data.train", str(shard), "--data.val", str(shard), "--data.strict", "true",
                          "--data.tokenizer", "demo"], cwd=tmp_path, timeout=300)
    lines = strict.stderr.strip().splitlines()  # the progress bar had started: the error is the last line
    assert strict.returncode == EXIT_USER_ERROR and "Traceback" not in strict.stderr, strict.stderr[-3000:]
    assert lines[-1].startswith("error: bad sample: shard") and "key 'a': corrupt_image" in lines[-1], lines


@pytest.mark.slow
def test_resuming_a_finished_run_keeps_its_summary(demo_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_program(_train(demo_cache, run), cwd=tmp_path, timeout=300).returncode == 0
    before = (run / "summary.json").read_bytes()
    stored = json.loads(before)["final_losses"]
    assert set(stored) == {"total", "itm", "mlm", "itc", "scl"}
    again = run_program(_train(demo_cache, run, "--train.resume", "auto"), cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "summary.json").read_bytes() == before
    assert "final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in stored.items()) in again.stdout
