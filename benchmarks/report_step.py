"""The GPU report's training-step section: the whole step as the trainer runs it, eager, compiled and graphed.

For each ``shapes.STEP_GPU`` shape (paper preset at batch 32 and a large batch, compact at batch 64), and each mode
of ``bench_step.STEP_MODES``:

- ``eager``: ``scl_fast.step.TrainStep`` as it is (static shapes, no host read inside the step);
- ``compiled``: ``train.compile`` (forward and backward compiled, one graph per frame count);
- ``graphed``: ``train.cuda_graphs`` (the compiled forward and backward replayed from CUDA graphs; CUDA only),

one row with: ms per step (CUDA events, median), the GPU's busy time per step and busy fraction (CUDA profiler:
the rest of the step the GPU waited on the host), samples/s, MFU (the step's useful FLOPs over the step time and
the measured bf16 matmul ceiling), peak memory, and the largest relative difference of the loss from the eager
mode's over the same ``LOSS_STEPS`` steps from the same start. The naive five-pass schedule is compared with the
fused one (forward + backward, ``bench_step.StepRunner``) on the compact preset only: the paper preset's naive step
costs more time than the 8-minute report has.
"""

from __future__ import annotations

import statistics
import time
import traceback
from typing import Any

import torch

from benchmarks import shapes as S

LOSS_STEPS = 20


def run_step(ctx: Any, step_shapes: list[S.StepShape], *, reps: int, modes: tuple[str, ...]) -> None:
    from benchmarks import gpu_report as R
    from benchmarks.bench_step import StepRunner, TrainStepRunner, step_flops

    print(f"== training step ({', '.join(modes)})", flush=True)
    for shape in step_shapes:
        eager_losses: list[float] | None = None
        for mode in modes:
            if mode == "graphed" and ctx.device.type != "cuda":
                continue
            if ctx.left() < 20:
                ctx.notes.append(f"step {shape.name} {mode} skipped: time budget")
                continue
            try:
                runner = TrainStepRunner(shape, mode=mode, device=ctx.device, autocast=not ctx.smoke)
                # the same LOSS_STEPS steps in every mode, from the same weights: also the warm-up (compilation,
                # autotuning, CUDA-graph capture)
                losses = runner.losses(2 if ctx.smoke else LOSS_STEPS)
                if mode == "eager":
                    eager_losses = losses
                diff = (max(abs(a - b) / abs(b) for a, b in zip(losses, eager_losses, strict=True))
                        if eager_losses else None)
                ctx.sync()
                if ctx.device.type == "cuda":
                    ms = R._events_ms(runner.step, reps=reps, warmup=1)
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                    runner.step()
                    ctx.sync()
                    mem = torch.cuda.max_memory_allocated(ctx.device) / 2**20
                    busy, per = R.kernel_ms(ctx, runner.step, reps=2)
                else:
                    times = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        runner.step()
                        times.append((time.perf_counter() - t0) * 1e3)
                    ms, mem, busy, per = statistics.median(times), None, None, {}
                flops = (step_flops(shape) or {}).get("fused")
                achieved = flops / ms / 1e9 if flops else None
                ctx.add(section="step", case=shape.name, impl=mode, pass_="step",
                        dtype="bf16-autocast" if not ctx.smoke else "fp32", ms=ms, kernel_ms=busy,
                        busy=busy / ms if busy else None, kernels=R._top_kernels(per),
                        samples_per_s=shape.batch / ms * 1e3, tflops=achieved,
                        mfu=R._frac(ctx, tflops=achieved) if achieved else None, peak_mb=mem, loss=losses[-1],
                        loss_diff=diff, status="ok")
                del runner
            except Exception as err:  # noqa: BLE001 - an OOM at the large batch is a result, not the end
                traceback.print_exc()
                ctx.add(section="step", case=shape.name, impl=mode, status=f"error: {R._error_text(err)}")
            finally:
                R._free(ctx)
        if shape.preset != "paper":
            _fused_vs_naive(ctx, shape, StepRunner, reps)


def _fused_vs_naive(ctx: Any, shape: S.StepShape, runner_cls: type, reps: int) -> None:
    """The schedules compared: forward + backward of the fused schedule against the release's five passes."""
    from benchmarks import gpu_report as R

    times, losses, peaks = {}, {}, {}
    for schedule in ("fused", "naive"):
        if ctx.left() < 10:
            ctx.notes.append(f"step {shape.name} {schedule} skipped: time budget")
            return
        try:
            runner = runner_cls(shape, schedule=schedule, device=ctx.device, autocast=not ctx.smoke)
            losses[schedule] = runner.loss_once()
            runner.step()
            ctx.sync()
            if ctx.device.type == "cuda":
                times[schedule] = R._events_ms(runner.step, reps=reps, warmup=1)
                torch.cuda.reset_peak_memory_stats(ctx.device)
                runner.step()
                ctx.sync()
                peaks[schedule] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
            else:
                t0 = time.perf_counter()
                runner.step()
                times[schedule] = (time.perf_counter() - t0) * 1e3
            del runner
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            ctx.add(section="step", case=shape.name, impl=f"{schedule} (fwd+bwd)",
                    status=f"error: {R._error_text(err)}")
            return
        finally:
            R._free(ctx)
    ctx.add(section="step", case=shape.name, impl="fused/naive", pass_="fwd+bwd",
            speedup=times["naive"] / times["fused"], loss_diff=abs(losses["fused"] - losses["naive"]),
            mem_ratio=peaks["fused"] / peaks["naive"] if len(peaks) == 2 else None, status="ok")
