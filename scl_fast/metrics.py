"""Run logs: a tqdm progress bar, JSONL metrics, TensorBoard (when installed), and the MFU denominator.

Only rank 0 builds a ``MetricsLogger``; the other ranks get a disabled one whose methods do nothing, so the loop
has no ``if rank == 0`` around each call.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from scl_fast._optional import missing

log = logging.getLogger("scl_fast.train")

# Dense bf16/fp16 tensor-core peak (no sparsity) and dense TF32 peak, FLOP/s, from the vendors' data sheets.
# Matched by substring of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" precedes "H100").
GPU_PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 495e12),
    ("GH200", 989e12, 495e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 495e12),
    ("H800", 989e12, 495e12),
    ("B200", 2250e12, 1100e12),
    ("A100", 312e12, 156e12),
    ("A800", 312e12, 156e12),
    ("A6000", 155e12, 77e12),
    ("L40S", 362e12, 183e12),
    ("L40", 181e12, 90e12),
    ("L4", 121e12, 60e12),
    ("A10G", 70e12, 35e12),
    ("A10", 125e12, 62e12),
    ("RTX 4090", 165e12, 83e12),
    ("RTX 3090", 71e12, 36e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
)


def measured_cpu_flops(size: int = 512, repeats: int = 5) -> float:
    """FLOP/s of an fp32 matmul on this CPU, best of ``repeats`` (a practical peak for CPU MFU; ~0.1 s)."""
    gen = torch.Generator().manual_seed(0)  # not the global RNG: a resumed run must see the same random stream
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    a @ b  # warm-up: thread pool and caches
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """Peak FLOP/s of one device for MFU and where the number comes from (a note for the logs)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, tf32 in GPU_PEAK_FLOPS:
            if key in name:
                peak = half if precision in ("bf16", "fp16") else tf32
                return peak, f"{name}: {peak / 1e12:.0f} TFLOP/s dense ({'bf16/fp16' if peak == half else 'tf32'})"
        return None, f"{name} is not in the peak-FLOP table: MFU omitted"
    peak = measured_cpu_flops()
    return peak, f"CPU: measured fp32 matmul rate {peak / 1e9:.1f} GFLOP/s"


class MetricsLogger:
    """Writes ``metrics.jsonl`` (one JSON object per log step), TensorBoard scalars, and drives the progress bar."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered: readable while running
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("%s; skipped", missing("tensorboard", "TensorBoard logging"))
            else:
                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             desc="train", smoothing=0.1)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one record; numbers also go to TensorBoard under their key (``loss/itc``, ``eval/...``)."""
        if self._jsonl is None:
            return
        record = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def advance(self, steps: int, postfix: dict[str, str] | None = None) -> None:
        """Move the bar (ETA comes from tqdm's rate) and show the latest loss and throughput."""
        if self._bar is None:
            return
        self._bar.update(steps)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar (rank 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close_bar(self) -> None:
        """End the progress bar (before the evaluation and summary lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a line cut by a kill at the end is ignored)."""
    records = []
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
