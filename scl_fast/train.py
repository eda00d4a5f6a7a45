"""Pre-train SCL: ``python -m scl_fast.train [--config FILE] [--preset demo|compact|paper] [--section.key VALUE ...]``.

With no arguments: the ``demo`` preset on the synthetic demo corpus (written on first use), on the GPU if there is
one, else the CPU; then retrieval on the demo val split and a summary (also in ``RUN_DIR/summary.json``).
Under ``torchrun`` every rank runs this same program (DDP by default, ``--train.distributed fsdp`` for FSDP2).
``--help`` lists every option with its default.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scl_fast.config import parse_args
from scl_fast.errors import EXIT_PREEMPTED, run_cli
from scl_fast.preemption import Preempted

if TYPE_CHECKING:
    from scl_fast.config import Config
    from scl_fast.task import Task


def main(argv: list[str] | None = None) -> dict:
    """The program: one-line errors for what a user can fix (``--debug`` for the traceback); returns the summary."""
    return run_cli(_train, argv)


def _train(argv: list[str]) -> dict:
    """Parse, then :func:`run`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return run(parse_args(argv))


def run(cfg: Config, task: Task | None = None) -> dict:
    """Build the trainer for ``task`` (default pre-training), train, and always release the process group and logs;
    a preempted run exits with ``EXIT_PREEMPTED`` after saying how to resume it (fine-tuning runs through here too)."""
    from scl_fast.trainer import Trainer

    trainer = Trainer(cfg, task=task)
    try:
        return trainer.train()
    except Preempted as stop:
        print(f"{stop}: resume with --train.resume auto --train.run_dir {trainer.run_dir}", flush=True)
        raise SystemExit(EXIT_PREEMPTED) from None
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
