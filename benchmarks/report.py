"""Turn a pytest-benchmark JSON file into a Markdown table and a PNG bar plot.

    pytest benchmarks/ --benchmark-only --benchmark-json results.json
    python -m benchmarks.report results.json [--out DIR]

One table per benchmark group (the ``group`` a benchmark sets, else its module). Columns: median and IQR of
the time per call, rounds, and every ``extra_info`` key the benchmarks recorded (samples/s, GB/s, TFLOP/s,
max error, peak memory, ...). Within a group, the row whose name says ``reference``/``naive``/``eager``
is the baseline and every row gets a ``speedup`` (baseline median / row median); with several baselines in a
group (one per shape), each row is paired with the baseline whose name differs from its own in one token. The
PNG has one panel per group with the medians as horizontal bars.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

BASELINE_WORDS = ("reference", "naive", "eager", "ref")


def load(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a pytest-benchmark JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read pytest-benchmark JSON {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def _group_of(bench: dict[str, Any]) -> str:
    if bench.get("group"):
        return str(bench["group"])
    fullname = str(bench.get("fullname", bench.get("name", "?")))
    return fullname.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")


def _is_baseline(bench: dict[str, Any]) -> bool:
    words = re.split(r"[^a-z0-9]+", str(bench.get("name", "")).lower())
    return any(w in BASELINE_WORDS for w in words)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        mag = abs(value)
        if mag >= 1e4 or mag < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3g}" if mag < 100 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def groups(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Benchmarks by group, in file order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for bench in data["benchmarks"]:
        out.setdefault(_group_of(bench), []).append(bench)
    return out


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[\[\],\-]+", name) if t]


def speedups(rows: list[dict[str, Any]]) -> dict[str, float]:
    """name -> baseline median / median.

    With one baseline row in the group, every row is compared with it. With several (one per shape, say
    ``op[shape_a-reference]`` and ``op[shape_b-reference]``), a row is compared with the baseline whose name is
    its own with one token (the implementation's name) swapped: ``op[shape_a-native]`` with ``op[shape_a-reference]``.
    """
    base = [b for b in rows if _is_baseline(b)]
    if not base:
        return {}
    if len(base) == 1:
        ref = base[0]["stats"]["median"]
        return {b["name"]: ref / b["stats"]["median"] for b in rows if b["stats"]["median"] > 0}
    keys: dict[tuple[str, ...], float] = {}
    for b in base:
        toks = _tokens(b["name"])
        for i, t in enumerate(toks):
            if t.lower() in BASELINE_WORDS:
                keys[tuple(toks[:i] + toks[i + 1:])] = b["stats"]["median"]
    out: dict[str, float] = {}
    for b in rows:
        toks = _tokens(b["name"])
        for i in range(len(toks)):
            ref = keys.get(tuple(toks[:i] + toks[i + 1:]))
            if ref is not None and b["stats"]["median"] > 0:
                out[b["name"]] = ref / b["stats"]["median"]
                break
    return out


def to_markdown(data: dict[str, Any], *, title: str = "Benchmark results") -> str:
    """The whole report as Markdown: a header with machine and commit, then one table per group."""
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}) or {}
    commit = data.get("commit_info", {}) or {}
    lines = [f"# {title}", ""]
    lines.append(
        f"- machine: {machine.get('node', '?')}, {cpu.get('brand_raw', machine.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} logical CPUs; python {machine.get('python_version', '?')}"
    )
    lines.append(f"- date: {data.get('datetime', '?')}; pytest-benchmark {data.get('version', '?')}")
    if commit.get("id"):
        dirty = " (dirty tree)" if commit.get("dirty") else ""
        lines.append(f"- commit: {str(commit['id'])[:12]}{dirty}")
    lines.append("")
    for group, rows in groups(data).items():
        extra_keys: list[str] = []
        for b in rows:
            for key, value in (b.get("extra_info") or {}).items():
                if key not in extra_keys and not isinstance(value, (dict, list)):
                    extra_keys.append(key)
        sp = speedups(rows)
        header = ["case", "median ms", "IQR ms", "rounds"] + (["speedup"] if sp else []) + extra_keys
        lines += [f"## {group}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for b in rows:
            st = b["stats"]
            cells = [
                _fmt(b["name"]),
                _fmt(st["median"] * 1e3),
                _fmt(st.get("iqr", float("nan")) * 1e3),
                str(st.get("rounds", "?")),
            ]
            if sp:
                cells.append(f"{sp[b['name']]:.2f}x" if b["name"] in sp else "")
            extra = b.get("extra_info") or {}
            cells += [_fmt(extra[k]) if k in extra else "" for k in extra_keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: str | Path) -> bool:
    """Horizontal bars of the median time, one panel per group (log scale). False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    grouped = groups(data)
    if not grouped:
        return False
    heights = [max(1.2, 0.35 * len(rows) + 0.8) for rows in grouped.values()]
    fig, axes = plt.subplots(len(grouped), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (group, rows) in zip(axes[:, 0], grouped.items(), strict=True):
        names = [b["name"] for b in rows]
        medians = [b["stats"]["median"] * 1e3 for b in rows]
        colors = ["tab:gray" if _is_baseline(b) else "tab:blue" for b in rows]
        ax.barh(range(len(rows)), medians, color=colors)
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        lo, hi = min(medians), max(medians)
        if lo > 0 and hi / lo > 30:  # wide range: log axis, starting below the shortest bar so it stays visible
            ax.set_xscale("log")
            ax.set_xlim(lo / 3, hi * 1.5)
        else:
            ax.set_xlim(0, hi * 1.05)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("median ms per call (grey = baseline)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("json", help="pytest-benchmark JSON (from --benchmark-json)")
    parser.add_argument("--out", default=None, help="folder for <name>.md and <name>.png (default: beside the JSON)")
    parser.add_argument("--title", default="Benchmark results")
    args = parser.parse_args(argv)
    try:
        data = load(args.json)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    src = Path(args.json)
    out = Path(args.out) if args.out else src.parent
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(data, title=args.title)
    md_path = out / f"{src.stem}.md"
    md_path.write_text(md + "\n")
    png_path = out / f"{src.stem}.png"
    made = plot(data, png_path)
    print(md)
    print(f"wrote {md_path}" + (f" and {png_path}" if made else " (no plot: matplotlib not installed)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
