"""``python -m scl_fast.finetune.table``: the README's downstream table, measured on the demos.

Pre-trains the demo model twice with ``python -m scl_fast.train``'s defaults (the demo corpus, 700 steps): once as
is and once without the SCL loss (``--model.loss.scl_weight 0``). Then fine-tunes every task's demo three times,
with the demo preset: from the SCL run, from the run without SCL, and from random weights. Prints (and writes to
``OUT/table.md``, with every summary in ``OUT/table.json``) a Markdown table: each task's metric and trivial
baseline, the three results side by side, and the wall-clock minutes of each fine-tuning run on this machine.

    python -m scl_fast.finetune.table [--tasks vqa,nlvr2,retrieval,video_retrieval] [--out DIR]
                                      [--pretrain-steps N] [--section.key VALUE ...]

Extra ``--section.key VALUE`` options go to every fine-tuning run (e.g. ``--train.steps 100`` for a quick look).
Called again with the same ``--out``, it reuses the finished runs there (delete a run's folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from scl_fast.errors import run_cli

from .config import TASKS

INITS = (("SCL pre-training", "scl"), ("pre-training without SCL", "no_scl"), ("random weights", None))


def metric(task: str, summary: dict[str, Any]) -> tuple[str, float, float, str]:
    """(metric name, value, trivial baseline, format) of a fine-tuning run's summary."""
    groups = summary[task]
    if task in ("vqa", "nlvr2"):
        return "accuracy", groups["val"]["accuracy"], groups["val"]["baseline"], ".3f"
    return "R-sum (R@1+5+10, both ways, %)", groups["val"]["rsum"], groups["val"]["chance_rsum"], ".1f"


def detail(task: str, summary: dict[str, Any]) -> str:
    """A second number worth reading: VQA's question-type prior, retrieval's R@1 and median rank."""
    groups = summary[task]
    if task == "vqa":
        return f"prior {groups['val']['prior_baseline']:.3f}"
    if task == "nlvr2":
        return ""
    kind = "video" if task == "video_retrieval" else "image"
    m = groups[f"text->{kind}"]
    return f"t->{kind[0]} R@1 {m['R@1']:.3f}, MdR {m['MdR']:.1f}"


def markdown(results: dict[str, dict[str, dict[str, Any]]], minutes: dict[str, dict[str, float]]) -> str:
    head = " | ".join(f"from {name}" for name, _ in INITS)
    lines = [f"| task | metric | trivial baseline | {head} | minutes (each run, 2 CPU cores) |",
             "|---|---|---:|" + "---:|" * len(INITS) + "---|"]
    for task, runs in results.items():
        name, _, baseline, fmt = metric(task, next(iter(runs.values())))
        cells = []
        for label, _ in INITS:
            _, value, _, _ = metric(task, runs[label])
            extra = detail(task, runs[label])
            cells.append(f"{value:{fmt}}" + (f" ({extra})" if extra else ""))
        mins = " / ".join(f"{minutes[task][label]:.1f}" for label, _ in INITS)
        lines.append(f"| {task} | {name} | {baseline:{fmt}} | " + " | ".join(cells) + f" | {mins} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    from scl_fast.train import main as train_main

    from .__main__ import main as finetune_main

    parser = argparse.ArgumentParser(prog="python -m scl_fast.finetune.table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument("--out", default=None, help="default: runs/finetune-table-<time>")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default: the demo preset's 700")
    args, extra = parser.parse_known_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {TASKS}")
    root = Path(args.out or f"runs/finetune-table-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    steps = ["--train.steps", str(args.pretrain_steps)] if args.pretrain_steps else []
    started = time.perf_counter()
    for variant, options in (("scl", []), ("no_scl", ["--model.loss.scl_weight", "0"])):
        if (root / variant / "summary.json").is_file():
            print(f"=== pre-training ({variant}): {root / variant} is finished, reused", flush=True)
            continue
        print(f"=== pre-training ({variant}) -> {root / variant}", flush=True)
        train_main([*steps, *options, "--train.run_dir", str(root / variant)])
    # A finished run of an earlier call in the same folder is reused with its minutes (delete its folder to redo it)
    before = json.loads((root / "table.json").read_text()) if (root / "table.json").is_file() else {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    minutes: dict[str, dict[str, float]] = {}
    for task in tasks:
        for label, init in INITS:
            run = root / f"{task}-{init or 'random'}"
            took = before.get("minutes", {}).get(task, {}).get(label)
            if (run / "summary.json").is_file() and took is not None:
                print(f"=== {task} from {label}: {run} is finished, reused", flush=True)
                summary = json.loads((run / "summary.json").read_text())
            else:
                print(f"=== {task} from {label} -> {run}", flush=True)
                t0 = time.perf_counter()
                summary = finetune_main([task, *(["--init", str(root / init)] if init else []), *extra,
                                         "--train.run_dir", str(run)])
                took = (time.perf_counter() - t0) / 60
            minutes.setdefault(task, {})[label] = took
            results.setdefault(task, {})[label] = summary
            # after every run, so an interrupted table resumes with the runs it finished
            (root / "table.json").write_text(json.dumps({"results": results, "minutes": minutes}, indent=2) + "\n")
    table = markdown(results, minutes)
    (root / "table.md").write_text(table + "\n")
    print(f"\ndownstream demos ({root}, {(time.perf_counter() - started) / 60:.1f} min in all):\n\n{table}")
    return table


if __name__ == "__main__":
    run_cli(main)
