"""A run folder belongs to one run: claimed when the run starts, never silently reused, its logs kept consistent.

A fresh run refuses a folder that holds another run's checkpoints or logs (continue it with ``--train.resume auto``,
pick another ``--train.run_dir``, or pass ``--train.overwrite true``, which moves the old contents to a sibling folder
and deletes nothing). Each run gets a random id, its lineage: written to ``run.json`` and into every checkpoint's
metadata, kept by resumed runs, and checked by checkpoint rotation, which deletes only its own lineage's checkpoints.
A resumed run first drops the log records written after its checkpoint (the steps it is about to redo), so
``metrics.jsonl`` never runs backwards.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path

from scl_fast import checkpoint
from scl_fast.errors import UserError

RUN_FILE = "run.json"
LOGS = ("metrics.jsonl", "eval.jsonl")
# What a run leaves that is worth keeping (non-empty). A folder without any (empty, or with only the config.json,
# run.json and empty logs of a start that failed before its first logged step) is free for a new run.
MARKERS = (*LOGS, "summary.json")


class RunFolderInUse(UserError):
    """A fresh run was pointed at a folder that holds another run."""


def contents(run_dir: str | Path) -> list[str]:
    """What of a run ``run_dir`` holds: its checkpoints and logs (empty when the folder is free for a new run)."""
    run_dir = Path(run_dir)
    found = [name for name in MARKERS if (run_dir / name).is_file() and (run_dir / name).stat().st_size]
    steps = [step for step, _ in checkpoint.list_checkpoints(run_dir)]
    if steps:
        found.insert(0, f"{len(steps)} checkpoint(s) up to step {steps[-1]}")
    return found


def read_run_id(run_dir: str | Path) -> str | None:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_run_file(run_dir: Path, run_id: str) -> None:
    tmp = run_dir / f".{RUN_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"run_id": run_id, "created": datetime.now().isoformat(timespec="seconds")}) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to a free sibling ``<name>.replaced-<time>`` (nothing is deleted) and return the new path."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    os.rename(run_dir, aside)
    return aside


def claim_fresh(run_dir: str | Path, *, overwrite: bool) -> tuple[str, Path | None]:
    """Start a new lineage in ``run_dir``; returns (run id, where the old contents went, if ``overwrite`` moved them).

    Raises:
        RunFolderInUse: the folder holds another run and ``overwrite`` is off.
    """
    run_dir = Path(run_dir)
    aside = None
    found = contents(run_dir)
    if found:
        if not overwrite:
            raise RunFolderInUse(
                f"run folder {run_dir} already holds a run ({', '.join(found)}): continue it with --train.resume auto, "
                f"choose another --train.run_dir, or pass --train.overwrite true to move its contents aside")
        aside = move_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    _write_run_file(run_dir, run_id)
    return run_id, aside


def adopt(run_dir: str | Path, run_id: str) -> None:
    """Continue lineage ``run_id`` in ``run_dir`` (a resumed run); refuses a folder of another lineage."""
    run_dir = Path(run_dir)
    mine = read_run_id(run_dir)
    if mine is not None and mine != run_id:
        raise RunFolderInUse(f"run folder {run_dir} holds run {mine}, but the checkpoint resumed belongs to run "
                             f"{run_id}: choose another --train.run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_file(run_dir, run_id)


def truncate_logs(run_dir: str | Path, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` / ``eval.jsonl`` written after ``step`` (a resumed run redoes those
    steps); lines that do not parse (cut by a kill) go too. Rewritten atomically; returns how many were dropped."""
    dropped = 0
    for name in LOGS:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        kept = []
        for line in path.read_text().splitlines():
            try:
                record_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                dropped += bool(line.strip())
                continue
            if record_step <= step:
                kept.append(line)
            else:
                dropped += 1
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped
