"""pytest setup of the benchmark suites: collect ``bench_*.py``, make ``--benchmark-only`` work despite the
project-wide ``--benchmark-disable``, skip GPU cases on CPU-only machines, print a count at the end.

The Triton interpreter is deliberately *not* switched on here (tests/conftest.py does that for unit tests):
timing NumPy-interpreted kernels would measure nothing useful, so Triton cases are marked ``gpu`` and skip.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

NO_CUDA_REASON = "no CUDA device"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-threads", type=int, default=None,
        help="torch intra-op threads for CPU benchmarks (default: torch's). On a shared, busy machine 1 is far "
             "steadier: two OpenMP threads competing with other processes were measured 15x slower.",
    )


def pytest_configure(config: pytest.Config) -> None:
    # pyproject's addopts carry --benchmark-disable so that `pytest tests/` never times anything; pytest-benchmark
    # refuses --benchmark-only together with it. Its own pytest_configure is trylast, so flipping the enable
    # switch here (before it builds its session) lets an explicit --benchmark-only win.
    if config.getoption("benchmark_only", default=False):
        config.option.benchmark_enable = True
    threads = config.getoption("bench_threads", default=None)
    if threads:
        torch.set_num_threads(threads)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with the reason 'no CUDA device' without)")
    config.addinivalue_line("markers", "cuda: same as gpu")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    """Collect ``bench_*.py`` as test modules (pytest's default pattern is ``test_*.py``)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path) or any(
        file_path.match(pattern) for pattern in parent.config.getini("python_files")
    ):
        # pytest's own collector already takes files named on the command line or matching python_files
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if "gpu" in item.keywords or "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every benchmark draws the same inputs, so two runs time the same problem."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    """One line that says how many cases ran and why the others were skipped (the count CI looks for)."""
    stats = terminalreporter.stats
    passed = [r for r in stats.get("passed", []) if r.when == "call"]
    failed = [r for r in stats.get("failed", []) if r.when in ("call", "setup")]
    reasons: Counter[str] = Counter()
    for report in stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    skipped = sum(reasons.values())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    terminalreporter.section("scl_fast benchmarks")
    terminalreporter.write_line(
        f"{len(passed)} benchmark cases ran and passed, {len(failed)} failed, {skipped} skipped ({device})"
    )
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"  skipped {count}: {reason}")
