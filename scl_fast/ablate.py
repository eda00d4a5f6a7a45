"""``python -m scl_fast.ablate [--section.key VALUE ...]``: the demo run with and without the SCL loss.

Trains twice with the same config and seed, once as given and once with ``--model.loss.scl_weight 0``, and
prints a Markdown table of retrieval R@1 (with chance) for the README. Extra options apply to both runs (e.g.
``--train.steps 100`` for a quicker look); the runs go to ``runs/ablate-<timestamp>/{scl,no_scl}``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from scl_fast.errors import run_cli

DIRECTIONS = ("text->image", "image->text", "text->video", "video->text")


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """Rows = runs, columns = R@1 per retrieval direction, plus a chance row (from the first run)."""
    first = {d: m for d, m in next(iter(results.values()))["retrieval"].items() if "R@1" in m}  # not n_image etc.
    dirs = [d for d in DIRECTIONS if d in first] + [d for d in first if d not in DIRECTIONS]
    lines = ["| run | steps | final loss | " + " | ".join(f"{d} R@1" for d in dirs) + " |",
             "|---|---:|---:|" + "---:|" * len(dirs)]
    for name, summary in results.items():
        ret = summary["retrieval"]
        loss = summary["final_losses"].get("total", float("nan"))
        lines.append(f"| {name} | {summary['steps']} | {loss:.3f} | "
                     + " | ".join(f"{ret[d]['R@1']:.3f}" if d in ret else "-" for d in dirs) + " |")
    lines.append("| chance | | | " + " | ".join(f"{first[d]['chance_R@1']:.3f}" for d in dirs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    from scl_fast.train import main as train_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip() + "\n\nEvery option of `python -m scl_fast.train --help` is accepted.")
        raise SystemExit(0)
    if any(a.startswith("--train.run_dir") for a in argv):
        raise SystemExit("error: scl_fast.ablate chooses the run folders itself; drop --train.run_dir")
    root = Path("runs") / f"ablate-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    results = {}
    variants = (("SCL (ITM+MLM+ITC+SCL)", []), ("without SCL (scl_weight 0)", ["--model.loss.scl_weight", "0"]))
    for name, extra in variants:
        run_dir = root / ("no_scl" if extra else "scl")
        print(f"=== ablation run: {name} -> {run_dir}", flush=True)
        results[name] = train_main([*argv, *extra, "--train.run_dir", str(run_dir)])
    table = markdown_table(results)
    root.mkdir(parents=True, exist_ok=True)
    (root / "ablation.md").write_text(table + "\n")
    (root / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nablation ({root}):\n")
    print(table)
    return table


if __name__ == "__main__":
    run_cli(main)
