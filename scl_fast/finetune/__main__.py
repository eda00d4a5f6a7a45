"""Fine-tune: ``python -m scl_fast.finetune TASK [--init CKPT_OR_RUN_DIR] [--config FILE] [--section.key VALUE ...]``.

TASK is ``vqa``, ``nlvr2``, ``retrieval`` or ``video_retrieval``. With no data option the task runs on its synthetic
demo (written on first use, in the real release format); ``--init`` starts from a pre-training checkpoint, else from
random weights. The run is pre-training's loop (``scl_fast.trainer``): run folder, checkpoints, ``--train.resume
auto``, signals, torchrun (DDP / FSDP2), precision, logs; it ends with the task's metric beside its trivial baseline
(also in ``RUN_DIR/summary.json``). ``python -m scl_fast.finetune TASK --help`` lists every option.
"""

from __future__ import annotations

import logging
import os
import sys

from scl_fast.errors import run_cli


def main(argv: list[str] | None = None) -> dict:
    """The program; returns the run's summary."""
    return run_cli(_finetune, argv)


def _finetune(argv: list[str]) -> dict:
    from scl_fast.train import run

    from .config import parse_finetune_args
    from .tasks import make_task

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = parse_finetune_args(argv[0], argv[1:])
    if cfg.init is None and os.environ.get("RANK", "0") == "0":  # one line per job, not per torchrun rank
        print(f"{argv[0]}: no --init, the model starts from random weights", flush=True)
    return run(cfg, make_task(cfg))


if __name__ == "__main__":
    main(sys.argv[1:])
