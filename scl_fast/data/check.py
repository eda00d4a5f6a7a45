"""Pre-flight check: run every sample of a shard set or manifest through the CPU pipeline and count outcomes.

    python -m scl_fast.data.check 'data/{00000..00099}.tar' [--json] [--max-bad-fraction F]

Exit status, so it can guard a pipeline: 0 when the data is usable; 1 when there is no good sample, any shard is
unreadable (missing or not a tar), or the skipped fraction is over ``--max-bad-fraction``; 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from scl_fast.errors import run_cli

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
    parser.add_argument("--max-bad-fraction", type=float, default=None,
                        help="fail (exit 1) when skipped / (good + skipped) samples is over this fraction")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.json else logging.WARNING, format="%(message)s")
    start = time.perf_counter()
    stats = check(args.spec, frames=args.frames, image_size=args.image_size, strict=args.strict,
                  tokenizer=args.tokenizer, workers=args.workers)
    result = stats.as_dict()
    problems = failures(stats, args.max_bad_fraction)
    if args.json:
        print(json.dumps({**result, "failures": problems}))
    else:
        _print_report(args.spec, result, time.perf_counter() - start)
    for problem in problems:
        print(f"check failed: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)


def failures(stats: Stats, max_bad_fraction: float | None = None) -> list[str]:
    """Why the checked data is not usable as it is (empty when it is)."""
    problems = []
    skipped = sum(stats.bad.values())
    if stats.good == 0:
        problems.append("no good sample")
    if stats.bad.get("unreadable_shard"):
        problems.append(f"{stats.bad['unreadable_shard']} unreadable shard(s): missing or not a tar")
    total = stats.good + skipped
    if max_bad_fraction is not None and skipped and skipped / total > max_bad_fraction:
        problems.append(f"{skipped} of {total} samples skipped ({skipped / total:.1%}), over --max-bad-fraction "
                        f"{max_bad_fraction}")
    return problems


def _print_report(spec: str, result: dict, seconds: float) -> None:
    print(f"{spec}: {result['good']} good samples, {sum(result['bad'].values())} skipped, "
          f"{sum(result['repaired'].values())} repaired ({seconds:.1f} s)")
    for title, counts, meaning in (("skipped", result["bad"], SKIPPED), ("repaired", result["repaired"], REPAIRED),
                                   ("decode path", result["info"], {})):
        for reason, n in counts.items():
            print(f"  {title:11s} {reason:18s} {n:8d}  {meaning.get(reason, '')}")


if __name__ == "__main__":
    run_cli(main)
