"""Loader workers never start as a fork of the trainer: a trainer is a threaded process (the decode-ahead thread,
DALI's pool, the intra-op pool, gloo, CUDA), and a child forked from it inherits whatever those threads held at that
instant. They are forked from a single-threaded fork server instead (``scl_fast.data.loader.worker_context``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from scl_fast.data import DataConfig, Loader


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(entry.name))
    return out


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_workers_are_not_forked_from_the_threaded_trainer(demo_corpus: dict[str, str], tmp_path: Path) -> None:
    busy = threading.Event()
    holder = threading.Thread(target=busy.wait, daemon=True)  # this process is threaded, as a trainer is
    holder.start()
    cfg = DataConfig(batch_size=4, num_workers=2, image_size=32, max_text_len=16, tokenizer="demo",
                     cache_dir=str(tmp_path), decoder="host")
    it = iter(Loader(cfg, demo_corpus["train"], train=True))
    try:
        next(it)  # the workers are up
        children = _children()
        found, todo = set(), [os.getpid()]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        workers = [p for p in found if not children.get(p)
                   and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, (found, workers)
        for pid in workers:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert parent != os.getpid() and _threads(parent) == 1, f"worker {pid} forked from {parent}"
    finally:
        it.close()
        busy.set()
