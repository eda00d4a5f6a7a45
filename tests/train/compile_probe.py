"""Helper of ``test_step_sync_free.py`` (not a test): a short run with and without ``--train.compile``, in a process
of its own (compiling starts threads and worker pools that a DataLoader worker forked later by another test of the
same process could deadlock on).

    python tests/train/compile_probe.py OUT [--section.key VALUE ...]

Writes to OUT (JSON): each run's logged total losses, the graph breaks, and per training forward its frame count
and the number of graphs dynamo had compiled by then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    from torch._dynamo.utils import counters

    from scl_fast.config import parse_args
    from scl_fast.task import Task
    from scl_fast.trainer import Trainer

    seen: list[tuple[int, int]] = []

    class Recording(Task):
        def forward(self, module, model, batch, generator):  # noqa: ANN001, ANN201
            out = super().forward(module, model, batch, generator)
            seen.append((batch.pixels.shape[1], counters["stats"]["unique_graphs"]))
            return out

    out, argv = Path(sys.argv[1]), sys.argv[2:]
    result: dict = {}
    for compiled in ("false", "true"):
        torch._dynamo.reset()
        counters.clear()
        seen.clear()
        run = out.parent / f"run-{compiled}"
        cfg = parse_args([*argv, "--train.run_dir", str(run), "--train.compile", compiled])
        trainer = Trainer(cfg, progress=False, task=Recording(cfg))
        try:
            trainer.train()
        finally:
            trainer.close()
        result[compiled] = {
            "losses": [json.loads(line)["loss/total"] for line in (run / "metrics.jsonl").read_text().splitlines()
                       if "loss/total" in line],
            "graph_breaks": {k: v for k, v in counters["graph_break"].items()},
            "seen": list(seen),
        }
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
