"""``backend="auto"`` on CUDA: the fused kernels or PyTorch's SDPA, whichever a measured table says is faster for
the call.

The table (``crossover.json`` beside this file) holds measured cases: one shape (batch x heads, Lq, Lk, D), mask
kind and pass (forward alone, or forward + backward), with the wall time of each backend in the same run. A call
takes the winner of the nearest measured case of its own mask kind and pass, nearest in log2 of each size, so the
crossover points are where the nearest case changes winner. ``python -m benchmarks.gpu_report`` writes a new table
(``attention_crossover.json`` in its output folder) from its attention section; copy it over this one to update.

Only calls SDPA can serve with the same answer and that the table measured are candidates: no frame-block or dense
``attn_mask`` (the structured masks are the fused kernels' point), no ``is_causal`` and no grouped K/V heads (not
measured yet), fp16/bf16 (the measured dtype; fp32 stays on the kernels' full-fp32 products), no ``return_lse``
(SDPA's public function does not return it). Everything else, and every call when the table is empty or missing,
runs the fused kernels. The choice never changes the answer beyond rounding (``sdpa.py`` keeps the op's contract;
with dropout, the mask is another draw of the same distribution); it is cached per shape, so a call costs one dict
lookup of host time.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch

TABLE_PATH = Path(__file__).with_name("crossover.json")
_MEASURED_DTYPES = (torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One measured case: both backends' wall time (ms) on one shape, in the same run."""

    case: str  # the GPU report's shape name
    mask: str  # "none", "key" (key padding), or another kind the rule never consults ("frames", "key+frames")
    grad: bool  # forward + backward (True) or forward alone
    bh: int  # batch x heads
    lq: int
    lk: int
    d: int
    triton_ms: float
    sdpa_ms: float

    @property
    def winner(self) -> str:
        return "sdpa" if self.sdpa_ms < self.triton_ms else "triton"


def load(path: Path = TABLE_PATH) -> list[Measured]:
    """The measured cases of a table file ([] if it does not exist)."""
    if not path.exists():
        return []
    return [Measured(**row) for row in json.loads(path.read_text())["cases"]]


def dump(cases: Iterable[Measured], path: Path, *, source: str, device: str, dtype: str) -> None:
    """Write a table file: where the numbers come from, the GPU, the dtype timed, the cases."""
    head = {"source": source, "device": device, "dtype": dtype}
    rows = ",\n".join(f"  {json.dumps(dataclasses.asdict(c))}" for c in cases)  # one case a line: a table to read
    path.write_text(json.dumps(head, indent=1)[:-2] + ',\n "cases": [\n' + rows + "\n ]\n}\n")


TABLE: list[Measured] = load()
_decisions: dict[tuple, str] = {}


def set_table(cases: list[Measured]) -> None:
    """Replace the table in use (tests, or a freshly measured one) and forget the cached decisions."""
    global TABLE
    TABLE = list(cases)
    _decisions.clear()


def applies(device: torch.device) -> bool:
    """Whether ``auto`` chooses per call on ``device``: on CUDA (on the CPU it is the reference backend)."""
    return device.type == "cuda"


def nearest(cases: list[Measured], mask: str, grad: bool, bh: int, lq: int, lk: int, d: int) -> Measured | None:
    """The measured case of this mask kind and pass closest to the shape (sum of |log2| of the size ratios).
    A plain loop: dynamo traces it (``min`` with a key function is a graph break)."""
    best, best_distance = None, math.inf
    for c in cases:
        if c.mask != mask or c.grad != grad:
            continue
        distance = (abs(math.log2(bh / c.bh)) + abs(math.log2(lq / c.lq)) + abs(math.log2(lk / c.lk))
                    + abs(math.log2(d / c.d)))  # fmt: skip
        if distance < best_distance:
            best, best_distance = c, distance
    return best


def pick(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    key_mask: torch.Tensor | None,
    frames: int | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    return_lse: bool,
    needs_grad: bool,
) -> str:
    """The backend for one call, ``"triton"`` or ``"sdpa"`` (module docstring)."""
    if frames is not None or attn_mask is not None or is_causal or return_lse:
        return "triton"
    if q.dtype not in _MEASURED_DTYPES or k.shape[1] != q.shape[1]:
        return "triton"
    b, h, lq, d = q.shape
    key = ("key" if key_mask is not None else "none", needs_grad, b * h, lq, k.shape[2], d)
    choice = None if torch.compiler.is_compiling() else _decisions.get(key)  # dynamo traces the rule, a constant
    if choice is None:
        found = nearest(TABLE, *key) if min(key[2:]) > 0 else None
        choice = found.winner if found is not None else "triton"
        if not torch.compiler.is_compiling():
            _decisions[key] = choice
    return choice
