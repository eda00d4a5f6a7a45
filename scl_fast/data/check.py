"""Pre-flight check: run every sample of a shard set or manifest through the CPU pipeline and count outcomes.

    python -m scl_fast.data.check 'data/{00000..00099}.tar' [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from .config import DataConfig
from .loader import build_loader
from .shards import REPAIRED, SKIPPED, Stats


def check(spec: str, *, frames: int = 4, image_size: int = 64, batch_size: int = 64, strict: bool = False,
          tokenizer: str | None = None, workers: int = 0) -> Stats:
    """Decode every sample of ``spec`` once (CPU, no augmentation, no sample dropped by batching).

    ``workers`` loader processes read and validate shards in parallel (each sample still counted once).
    """
    cfg = DataConfig(train=spec, val=spec, frames=frames, image_size=image_size, batch_size=batch_size,
                     num_workers=workers, device="cpu", strict=strict, tokenizer=tokenizer,
                     dali_threads=max(1, min(8, os.cpu_count() or 1)))
    loader = build_loader(cfg, "val", epochs=1, drop_last=False)
    for _ in loader:
        pass
    return loader.stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="tar shard spec with brace expansion, folder of .tar, or .jsonl manifest")
    parser.add_argument("--json", action="store_true", help='print {"good": N, "bad": {reason: N}, ...} only')
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad sample")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="loader processes reading and validating shards (default: min(4, CPUs))")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.json else logging.WARNING, format="%(message)s")
    start = time.perf_counter()
    stats = check(args.spec, frames=args.frames, image_size=args.image_size, strict=args.strict,
                  tokenizer=args.tokenizer, workers=args.workers)
    result = stats.as_dict()
    if args.json:
        print(json.dumps(result))
        return
    seconds = time.perf_counter() - start
    print(f"{args.spec}: {result['good']} good samples, {sum(result['bad'].values())} skipped, "
          f"{sum(result['repaired'].values())} repaired ({seconds:.1f} s)")
    for title, counts, meaning in (("skipped", result["bad"], SKIPPED), ("repaired", result["repaired"], REPAIRED),
                                   ("decode path", result["info"], {})):
        for reason, n in counts.items():
            print(f"  {title:11s} {reason:18s} {n:8d}  {meaning.get(reason, '')}")


if __name__ == "__main__":
    main()
