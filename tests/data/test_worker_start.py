"""Loader workers never start as a fork of the trainer: a trainer is a threaded process (the decode-ahead thread,
DALI's pool, the intra-op pool, gloo, CUDA), and a child forked from it inherits whatever those threads held at that
instant. They are forked from a single-threaded fork server instead (``scl_fast.data.loader.worker_context``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from scl_fast.data import DataConfig, Loader

from ..processes import children_by_parent, descendants, parent_of, threads


def test_workers_are_not_forked_from_the_threaded_trainer(demo_corpus: dict[str, str], tmp_path: Path) -> None:
    busy = threading.Event()
    holder = threading.Thread(target=busy.wait, daemon=True)  # this process is threaded, as a trainer is
    holder.start()
    cfg = DataConfig(batch_size=4, num_workers=2, image_size=32, max_text_len=16, tokenizer="demo",
                     cache_dir=str(tmp_path), decoder="host")
    it = iter(Loader(cfg, demo_corpus["train"], train=True))
    try:
        next(it)  # the workers are up
        children = children_by_parent()
        found = descendants(os.getpid(), children)
        workers = [p for p in found if not children.get(p)
                   and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, (found, workers)
        for pid in workers:
            parent = parent_of(pid)
            assert parent != os.getpid() and threads(parent) == 1, f"worker {pid} forked from {parent}"
    finally:
        it.close()
        busy.set()
