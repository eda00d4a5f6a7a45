"""``python -m scl_fast.plot RUN_DIR [--out FILE]``: one PNG with a run's loss curves and its retrieval results.

Left: every ``loss/*`` series of ``metrics.jsonl`` against the step. Right: R@1/5/10 of each retrieval direction
from the last evaluation (``eval.jsonl``, else ``summary.json``), with the chance R@1 marked, so "better than
chance" is visible at a glance. Written to ``RUN_DIR/curves.png`` by default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scl_fast._optional import require
from scl_fast.errors import PathError, run_cli
from scl_fast.metrics import read_metrics


def _last_eval(run_dir: Path) -> dict[str, Any]:
    records = []
    if (run_dir / "eval.jsonl").is_file():
        for line in (run_dir / "eval.jsonl").read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    if records:
        return records[-1]
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text()).get("retrieval", {})
    return {}


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves and retrieval bars into a PNG; returns its path."""
    matplotlib = require("matplotlib", "python -m scl_fast.plot")
    matplotlib.use("Agg")  # no display needed: this runs on servers
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise PathError(f"{run_dir} has no metrics.jsonl (is it a run folder of scl_fast.train?)")
    records = read_metrics(run_dir)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if key.startswith("loss/") and isinstance(value, int | float):
                xs, ys = series.setdefault(key[5:], ([], []))
                xs.append(rec["step"])
                ys.append(value)
    retrieval = {d: m for d, m in _last_eval(run_dir).items() if isinstance(m, dict) and "R@1" in m}

    fig, (ax_loss, ax_ret) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for name, (xs, ys) in sorted(series.items()):
        ax_loss.plot(xs, ys, label=name, linewidth=2 if name == "total" else 1.2)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training losses")
    ax_loss.grid(alpha=0.3)
    if series:
        ax_loss.legend()
    if retrieval:
        ks = ("R@1", "R@5", "R@10")
        width = 0.8 / len(ks)
        for i, k in enumerate(ks):
            ax_ret.bar([j + i * width for j in range(len(retrieval))], [m[k] for m in retrieval.values()], width,
                       label=k)
        for j, m in enumerate(retrieval.values()):
            ax_ret.hlines(m["chance_R@1"], j - width / 2, j + 2.5 * width, colors="k", linestyles="dashed",
                          label="chance R@1" if j == 0 else None)
        ax_ret.set_xticks([j + width for j in range(len(retrieval))], list(retrieval), rotation=15)
        ax_ret.set_ylim(0, 1)
        ax_ret.legend()
    else:
        ax_ret.text(0.5, 0.5, "no retrieval evaluation", ha="center", va="center", transform=ax_ret.transAxes)
    ax_ret.set_title("retrieval (last evaluation)")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "curves.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m scl_fast.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder of scl_fast.train (holding metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    path = plot_run(args.run_dir, args.out)
    print(path)
    return path


if __name__ == "__main__":
    run_cli(main)
