"""Pre-train SCL: ``python -m scl_fast.train [--config FILE] [--preset demo|compact|paper] [--section.key VALUE ...]``.

With no arguments: the ``demo`` preset on the synthetic demo corpus (written on first use), on the GPU if there is
one, else the CPU; then retrieval on the demo val split and a summary (also in ``RUN_DIR/summary.json``).
Under ``torchrun`` every rank runs this same program (DDP by default, ``--train.distributed fsdp`` for FSDP2).
``--help`` lists every option with its default.
"""

from __future__ import annotations

import logging
import sys

from scl_fast._optional import MissingDependency
from scl_fast.config import parse_args


def main(argv: list[str] | None = None) -> dict:
    """Parse, build, train, and always release the process group and logs; returns the run summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    from scl_fast.trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except MissingDependency as err:
        raise SystemExit(f"error: {err}") from None
    try:
        return trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
