"""One training step (forward + backward) end to end: the fused schedule against the naive five-pass reference.

- fused: ``schedule="fused"`` (every shared encoder pass once, batched fusion calls), SDPA attention on CPU and
  the Triton kernel on CUDA, the fused ops of ``scl_kernels`` (C++ on CPU, Triton on CUDA).
- naive: ``schedule="naive"`` (the public release's five passes), eager attention
  (``masked_attention_ref``) and every op through its PyTorch reference (``ops.reference_ops``).

Both get the very same step (same weights, same batch, same masks and negatives from one
``draw_step_inputs``) with dropout off, so their losses must agree: each case asserts it, so a fast wrong
schedule fails. Recorded per case: samples/s (batch / median step time), peak memory (CPU: the peak RSS a first
step adds, measured in a fresh subprocess; CUDA: ``torch.cuda.max_memory_allocated``), the loss, and on the
naive case the fused/naive speedup. ``python -m benchmarks.bench_step`` runs the comparison without pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from benchmarks import shapes as S
from benchmarks import synchronized

ROOT = Path(__file__).resolve().parents[1]
# fp32 on CPU: the two schedules differ only by summation order (attention, batched matmuls, fused losses);
# bf16 autocast on GPU rounds every matmul, so the two paths may differ by bf16 rounding of the losses.
LOSS_RTOL = {"cpu": 1e-4, "cuda": 5e-2}


def _build_config(preset: str, overrides: tuple[tuple[str, object], ...] = ()) -> Any:
    """The preset's ``ModelConfig`` with dropout off and ``overrides`` applied.

    From ``scl_fast.model.config`` on purpose, not ``scl_fast.config``: the latter pulls in the data pipeline (DALI),
    which a bare GPU machine running ``gpu_report`` may not have."""
    from scl_fast.model.config import model_preset

    cfg = model_preset(preset)
    for dotted, value in overrides:
        *path, name = dotted.split(".")
        section = cfg
        for part in path:
            section = getattr(section, part)
        if not hasattr(section, name):
            raise ValueError(f"unknown model config field {dotted!r}")
        setattr(section, name, value)
    cfg.text.dropout = 0.0  # dropout draws differ between schedules: off, so the losses can be compared
    cfg.fusion.dropout = 0.0
    return cfg


def make_batch(cfg: Any, shape: S.StepShape, device: torch.device, seed: int = 0) -> SimpleNamespace:
    """A random but realistic batch: images (B, F, 3, H, W), BERT-style captions with [CLS] ... [SEP] and
    padding of random lengths (so key masks matter)."""
    gen = torch.Generator().manual_seed(seed)
    mc = cfg
    size = mc.vision.image_size
    pixels = torch.randn(shape.batch, shape.frames, 3, size, size, generator=gen)
    length = shape.text_len
    lengths = torch.randint(max(4, length // 3), length + 1, (shape.batch,), generator=gen)
    col = torch.arange(length)[None, :]
    attention_mask = col < lengths[:, None]
    ids = torch.randint(104, mc.text.vocab_size, (shape.batch, length), generator=gen)  # past BERT's special ids
    ids[:, 0] = 101  # [CLS]
    ids = torch.where(col == lengths[:, None] - 1, torch.full_like(ids, 102), ids)  # [SEP]
    ids = torch.where(attention_mask, ids, torch.full_like(ids, mc.text.pad_token_id))
    special_mask = (col == 0) | (col == lengths[:, None] - 1) | ~attention_mask
    return SimpleNamespace(pixels=pixels.to(device), input_ids=ids.to(device),
                           attention_mask=attention_mask.to(device), special_mask=special_mask.to(device),
                           valid=None, padded=0)


STEP_MODES = ("eager", "compiled", "graphed")


class TrainStepRunner:
    """The whole training step as the trainer runs it (``scl_fast.step.TrainStep``: forward, backward, clipping, the
    fused AdamW update with its device-side skip, the LR schedule) on one fixed batch, in one of ``STEP_MODES``:
    eager, compiled (``train.compile``), or compiled and replayed from CUDA graphs (``train.cuda_graphs``)."""

    def __init__(self, shape: S.StepShape, *, mode: str, device: torch.device | str = "cpu",
                 autocast: bool | None = None, seed: int = 0) -> None:
        from scl_fast.config import Config, TrainConfig
        from scl_fast.distributed import DistInfo
        from scl_fast.model.attention import set_attn_backend
        from scl_fast.model.scl import SCLModel
        from scl_fast.optim import build_optimizer, build_scheduler
        from scl_fast.step import TrainStep
        from scl_fast.task import Task

        if mode not in STEP_MODES:
            raise ValueError(f"mode must be one of {STEP_MODES}, got {mode!r}")
        self.shape, self.mode = shape, mode
        self.device = torch.device(device)
        model_cfg = _build_config(shape.preset, shape.overrides)
        train_cfg = TrainConfig(steps=10_000, lr=1e-4, warmup_frac=0.0, lr_schedule="constant")
        self.cfg = Config(model=model_cfg, train=train_cfg)
        torch.manual_seed(seed)
        self.model = SCLModel(model_cfg).to(self.device).train()
        set_attn_backend(self.model, "triton" if self.device.type == "cuda" else "sdpa")
        self.autocast = self.device.type == "cuda" if autocast is None else autocast
        optimizer = build_optimizer(self.model.param_groups(1e-4, 0.01, 5.0), train_cfg, self.device)
        self.batch = make_batch(model_cfg, shape, self.device, seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.train_step = TrainStep(
            task=Task(self.cfg), module=self.model, model=self.model, optimizer=optimizer,
            scheduler=build_scheduler(optimizer, train_cfg),
            scaler=torch.amp.GradScaler(self.device.type, enabled=False),
            info=DistInfo(rank=0, world_size=1, local_rank=0, device=self.device), clip_grad=1.0,
            autocast=self._autocast, generator=self.generator, compile=mode != "eager", cuda_graphs=mode == "graphed")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self) -> torch.Tensor:
        """One training step; returns its total loss, still on the device."""
        return self.train_step([self.batch]).losses["total"]

    def losses(self, steps: int) -> list[float]:
        """The total loss of ``steps`` consecutive steps from this runner's start (one host read at the end)."""
        return torch.stack([self.step() for _ in range(steps)]).tolist()


class StepRunner:
    """One model, one batch, one fixed set of step inputs, run through one schedule (used by gpu_report too)."""

    def __init__(self, shape: S.StepShape, *, schedule: str, device: torch.device | str = "cpu",
                 autocast: bool | None = None, seed: int = 0) -> None:
        from scl_fast.model import ops
        from scl_fast.model.attention import set_attn_backend
        from scl_fast.model.scl import SCLModel

        if schedule not in ("fused", "naive"):
            raise ValueError(f"schedule must be 'fused' or 'naive', got {schedule!r}")
        self.shape, self.schedule = shape, schedule
        self.device = torch.device(device)
        self.cfg = _build_config(shape.preset, shape.overrides)
        torch.manual_seed(seed)
        self.model = SCLModel(self.cfg).to(self.device).train()
        if schedule == "fused":
            set_attn_backend(self.model, "triton" if self.device.type == "cuda" else "sdpa")
            self._ops = contextlib.nullcontext
        else:
            set_attn_backend(self.model, "eager")
            self._ops = ops.reference_ops
        self.autocast = self.device.type == "cuda" if autocast is None else autocast
        self.batch = make_batch(self.cfg, shape, self.device, seed)
        b = self.batch
        gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        with ops.reference_ops():  # the same step for both schedules: drawn once, by the same code
            self.step_inputs = self.model.draw_step_inputs(b.pixels, b.input_ids, b.attention_mask, b.special_mask,
                                                           generator=gen)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def forward(self) -> Any:
        b = self.batch
        with self._ops(), self._autocast():
            return self.model(b.pixels, b.input_ids, b.attention_mask, b.special_mask, schedule=self.schedule,
                              step_inputs=self.step_inputs)

    def step(self) -> None:
        """Forward + backward (what a training step costs before the optimizer)."""
        self.model.zero_grad(set_to_none=True)
        out = self.forward()
        with self._ops():
            out.loss.backward()

    def losses(self) -> dict[str, float]:
        """The step's total and unweighted losses (one forward, no backward)."""
        with torch.no_grad():
            out = self.forward()
        return {"total": out.loss.item(), **{k: v.item() for k, v in out.losses.items()}}

    def loss_once(self) -> float:
        return self.losses()["total"]

    def useful_flops(self) -> float | None:
        """FLOPs of one forward+backward of the fused schedule: the model's useful work (MFU's numerator for both
        schedules: the naive one repeats work, which is not useful). None when they cannot be counted."""
        counts = step_flops(self.shape)
        return counts.get("fused") if counts else None


_FLOPS: dict[str, dict[str, float]] = {}


def step_flops(shape: S.StepShape) -> dict[str, float]:
    """{"fused": flops, "naive": flops} of one forward+backward, from ``scl_fast.flops.count_step_flops`` (counted on
    the meta device, attention as dense matmuls); {} if the counter is unavailable. Cached per shape."""
    if shape.name not in _FLOPS:
        try:
            from scl_fast.flops import count_step_flops

            cfg = _build_config(shape.preset, shape.overrides)
            counted = count_step_flops(cfg, shape.batch, shape.frames, shape.text_len)
            _FLOPS[shape.name] = {k: float(counted[k]["step"]) for k in ("fused", "naive") if k in counted}
        except Exception as err:  # noqa: BLE001 - FLOPs are informative; timing and numerics still stand
            print(f"step FLOPs not counted: {type(err).__name__}: {err}", file=sys.stderr)
            _FLOPS[shape.name] = {}
    return _FLOPS[shape.name]


def peak_rss_mb(shape: S.StepShape, schedule: str) -> float | None:
    """Peak resident memory (MiB) one fused/naive CPU step adds, measured in a fresh process so that neither
    the other schedule nor pytest's own allocations are in it (Linux: VmHWM reset through clear_refs)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_step", "--peak-rss", "--preset", shape.preset,
           "--batch", str(shape.batch), "--frames", str(shape.frames), "--schedule", schedule]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-RSS subprocess failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_peak_rss(shape: S.StepShape, schedule: str) -> dict[str, float]:
    runner = StepRunner(shape, schedule=schedule, device="cpu")
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    runner.step()
    peak = _status_kib("VmHWM")
    return {"peak_rss_mb": (peak - base) / 1024}


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark cases
# ----------------------------------------------------------------------------------------------------------------

_LOSSES: dict[tuple[str, str], dict[str, float]] = {}
_MEDIANS: dict[tuple[str, str], float] = {}

CASES = [pytest.param(s, d, id=f"{s.name}-{d}") for s in S.STEP_CPU for d in ("fused", "naive")] + [
    pytest.param(s, d, id=f"{s.name}-{d}", marks=pytest.mark.cuda) for s in S.STEP_GPU for d in ("fused", "naive")
]


def _losses(shape: S.StepShape, schedule: str, device: torch.device, runner: StepRunner | None = None
            ) -> dict[str, float]:
    key = (shape.name, schedule)
    if key not in _LOSSES:
        _LOSSES[key] = (runner or StepRunner(shape, schedule=schedule, device=device)).losses()
    return _LOSSES[key]


def _assert_losses_equal(a: dict[str, float], b: dict[str, float], rtol: float) -> float:
    """Worst relative difference over the total and each loss; NaN/inf never passes."""
    worst = 0.0
    for name in a:
        x, y = a[name], b[name]
        assert math.isfinite(x) and math.isfinite(y), f"loss {name} not finite: fused {x}, naive {y}"
        diff = abs(x - y) / max(abs(y), 1e-6)
        assert diff <= rtol, f"loss {name}: fused {x} vs naive {y} (rel diff {diff:.2e} > {rtol:.0e})"
        worst = max(worst, diff)
    return worst


@pytest.mark.parametrize(("shape", "schedule"), CASES)
def test_train_step(benchmark: Any, shape: S.StepShape, schedule: str) -> None:
    device = torch.device("cuda" if shape in S.STEP_GPU else "cpu")
    benchmark.group = f"train step {shape.name} (fwd+bwd)"
    runner = StepRunner(shape, schedule=schedule, device=device)
    mine = _losses(shape, schedule, device, runner)
    other = "naive" if schedule == "fused" else "fused"
    theirs = _losses(shape, other, device)
    fused, naive = (mine, theirs) if schedule == "fused" else (theirs, mine)
    worst = _assert_losses_equal(fused, naive, LOSS_RTOL[device.type])

    step = synchronized(runner.step, device)
    rounds = 10 if device.type == "cuda" else (5 if shape.preset == "demo" else 3)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    if benchmark.disabled:  # plain `pytest benchmarks/` (addopts' --benchmark-disable): one step ran, nothing timed
        return
    median = benchmark.stats.stats.median
    _MEDIANS[(shape.name, schedule)] = median
    info = benchmark.extra_info
    info["samples_per_s"] = shape.batch / median
    info["loss"] = mine["total"]
    info["loss_rel_diff"] = worst
    info["threads"] = torch.get_num_threads()
    info["loadavg_1m"] = os.getloadavg()[0]  # other processes on the machine skew CPU timings: say how busy it was
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        info["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        del runner  # free this model before the subprocess measures its own
        info["peak_rss_mb"] = peak_rss_mb(shape, schedule)
    flops = step_flops(shape)
    if flops.get(schedule):
        info["gflop_per_step"] = flops[schedule] / 1e9
        info["gflops_per_s"] = flops[schedule] / median / 1e9
    if schedule == "naive" and flops.get("fused") and flops.get("naive"):
        info["flop_ratio_naive_over_fused"] = flops["naive"] / flops["fused"]
    if schedule == "naive" and (shape.name, "fused") in _MEDIANS:
        speedup = median / _MEDIANS[(shape.name, "fused")]
        info["fused_speedup"] = speedup
        print(f"\n{shape.name}: fused {shape.batch / _MEDIANS[(shape.name, 'fused')]:.2f} samples/s, naive "
              f"{shape.batch / median:.2f} samples/s: fused/naive = {speedup:.2f}x (goal >= 1.5x)")
        # the fused schedule does strictly less work (demo: 1.43x fewer FLOPs); clearly slower than the reference
        # means something broke (0.9, not 1.0: wall-clock noise on a shared CPU)
        assert speedup > 0.9, f"fused step slower than the naive reference: {speedup:.2f}x"


# ----------------------------------------------------------------------------------------------------------------
# command line: python -m benchmarks.bench_step [--preset demo --batch 16]
# ----------------------------------------------------------------------------------------------------------------


def compare(shape: S.StepShape, device: torch.device, reps: int, timer: str = "wall") -> dict[str, Any]:
    """Time both schedules on one step shape; median seconds, samples/s, speedup, loss agreement.

    ``timer="cpu"`` uses the process' CPU time (CPU only): steady on a machine shared with other work."""
    if timer == "cpu" and device.type != "cpu":
        raise ValueError(f"timer='cpu' measures host CPU time and cannot time {device} work")
    clock = time.process_time if timer == "cpu" else time.perf_counter
    out: dict[str, Any] = {"shape": shape.name, "preset": shape.preset, "batch": shape.batch,
                           "device": str(device), "timer": timer, "threads": torch.get_num_threads(),
                           "loadavg_1m": os.getloadavg()[0]}
    losses = {}
    for schedule in ("fused", "naive"):
        runner = StepRunner(shape, schedule=schedule, device=device)
        losses[schedule] = runner.losses()
        step = synchronized(runner.step, device)
        step()
        times = []
        for _ in range(reps):
            t0 = clock()
            step()
            times.append(clock() - t0)
        med = statistics.median(times)
        out[schedule] = {"median_s": med, "samples_per_s": shape.batch / med, "loss": losses[schedule]["total"]}
        del runner
    out["speedup"] = out["fused"]["samples_per_s"] / out["naive"]["samples_per_s"]
    out["loss_rel_diff"] = _assert_losses_equal(losses["fused"], losses["naive"], LOSS_RTOL[device.type])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_step", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", choices=("demo", "compact", "paper"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--schedule", default="fused", choices=("fused", "naive"), help="with --peak-rss")
    parser.add_argument("--peak-rss", action="store_true", help="print the peak RSS of one CPU step as JSON")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--timer", default="wall", choices=("wall", "cpu"),
                        help="wall clock, or process CPU time (CPU only; steady on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = S.StepShape(f"{args.preset}_b{args.batch}", preset=args.preset, batch=args.batch, frames=args.frames)
    if args.peak_rss:
        print(json.dumps(_measure_peak_rss(shape, args.schedule)))
        return 0
    print(json.dumps(compare(shape, torch.device(args.device), args.reps, args.timer), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
