"""``python -m benchmarks.report``: a real pytest-benchmark JSON in, Markdown + PNG out."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]

# Two real benchmarks in one group (a "reference" baseline and a contender) plus one in its own group, so the
# table, the speedup column and the per-group panels all have something to show.
QUICK_BENCH = textwrap.dedent(
    """
    import random

    import pytest

    # pure Python, so the subprocess does not pay for importing torch
    @pytest.mark.parametrize("impl", ["reference", "fused"])
    def test_sort(benchmark, impl):
        benchmark.group = "sort 2000"
        xs = [random.random() for _ in range(2000)]
        fn = (lambda: sorted(xs)) if impl == "fused" else (lambda: [x for _, x in sorted((x, x) for x in xs)])
        out = benchmark.pedantic(fn, rounds=5, iterations=2, warmup_rounds=1)
        benchmark.extra_info["max_err"] = max(abs(a - b) for a, b in zip(out, sorted(xs)))
        benchmark.extra_info["melems_per_s"] = len(xs) / benchmark.stats.stats.median / 1e6

    def test_sum(benchmark):
        xs = list(range(1000))
        benchmark.pedantic(sum, args=(xs,), rounds=3, iterations=1)
    """
)


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the quick benchmark file for real and return its JSON."""
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "test_quick.py").write_text(QUICK_BENCH)
    out = tmp / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp), "-c", "/dev/null",
         str(tmp / "test_quick.py"), "--benchmark-only", f"--benchmark-json={out}"],
        cwd=tmp, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_report_markdown_and_png(bench_json: Path, tmp_path: Path) -> None:
    data = json.loads(bench_json.read_text())
    assert len(data["benchmarks"]) == 3
    rc = report.main([str(bench_json), "--out", str(tmp_path / "out"), "--title", "quick"])
    assert rc == 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.startswith("# quick")
    assert "## sort 2000" in md and "## test_quick" in md
    # every benchmark becomes one row carrying its own median (ms) and extra_info values
    for bench in data["benchmarks"]:
        row = next(line for line in md.splitlines() if line.startswith(f"| {bench['name']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(bench["stats"]["median"] * 1e3, rel=5e-3)
        if "max_err" in bench["extra_info"]:
            assert report._fmt(bench["extra_info"]["max_err"]) in cells
    # the group with a reference row gets speedups: reference is 1.00x, the other is ref / its median
    by_name = {b["name"]: b for b in data["benchmarks"]}
    ref = by_name["test_sort[reference]"]["stats"]["median"]
    fused = by_name["test_sort[fused]"]["stats"]["median"]
    assert "| 1.00x |" in next(line for line in md.splitlines() if "test_sort[reference]" in line)
    assert f"| {ref / fused:.2f}x |" in next(line for line in md.splitlines() if "test_sort[fused]" in line)
    png = (tmp_path / "out" / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_report_rejects_non_benchmark_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert report.main([str(bad)]) == 2
    bad.write_text("{not json")
    assert report.main([str(bad)]) == 2


def test_report_cli_module(bench_json: Path, tmp_path: Path) -> None:
    """The documented command line, as a user types it."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", str(bench_json), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| test_sum |" in proc.stdout
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.png").is_file()


def test_speedups_pair_rows_with_their_own_baseline() -> None:
    """Pairing logic only: with one reference per shape, each row is compared with its shape's reference."""

    def row(name: str, median: float) -> dict:
        return {"name": name, "stats": {"median": median}}

    rows = [row("op[a-native]", 1.0), row("op[a-reference]", 3.0), row("op[b-native]", 2.0),
            row("op[b-reference]", 5.0), row("op[c-native]", 1.0)]
    sp = report.speedups(rows)
    assert sp == {"op[a-native]": 3.0, "op[a-reference]": 1.0, "op[b-native]": 2.5, "op[b-reference]": 1.0}
    assert report.speedups([row("x[fused]", 1.0), row("x[naive]", 2.0)]) == {"x[fused]": 2.0, "x[naive]": 1.0}
    assert report.speedups([row("x[fused]", 1.0), row("x[other]", 2.0)]) == {}
