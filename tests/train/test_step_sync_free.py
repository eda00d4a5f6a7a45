"""The training step reads nothing from the device, and compiles once per frame count.

On a GPU every host read of a device value (``.item()``, ``bool(t)``, ``nonzero``, boolean indexing, ...) stalls
the launch queue until the GPU catches up. A full optimizer step (forward, backward, clipping, the update with its
device-side skip, the LR schedule) runs here under a dispatch mode that fails on every op that reads the device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scl_fast.config import parse_args
from scl_fast.task import Task
from scl_fast.trainer import Trainer

from .conftest import TINY_MODEL, run_program, short_run_args

aten = torch.ops.aten
# ops whose result size or value is read on the host (a device sync on a GPU)
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.nonzero_static.default,
           aten.masked_select.default, aten.is_nonzero.default, aten.equal.default, aten.allclose.default,
           aten.unique_dim.default, aten._unique.default, aten._unique2.default, aten.unique_consecutive.default,
           aten.repeat_interleave.Tensor, aten.item.default}


class FailOnHostSync(TorchDispatchMode):
    """Raise on the first op that would read the device on the host (boolean-mask indexing included)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in SYNCING:
            raise AssertionError(f"host sync in the step: {func}")
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            indices = args[1]
            if any(i is not None and i.dtype == torch.bool for i in indices):
                raise AssertionError(f"host sync in the step: {func} with a boolean mask")
        return func(*args, **kwargs)


def _trainer(cache: Path, run: Path, *extra: str, task_cls: type[Task] = Task) -> Trainer:
    cfg = parse_args(short_run_args(cache, run, steps=6, batch=4, extra=[*TINY_MODEL, "--train.log_every", "1",
                                                                          "--data.num_workers", "0", *extra]))
    return Trainer(cfg, progress=False, task=task_cls(cfg))


def test_a_full_step_reads_nothing_from_the_device(demo_cache: Path, tmp_path: Path) -> None:
    trainer = _trainer(demo_cache, tmp_path / "run", "--model.loss.itm_negatives", "hard")
    try:
        batches = iter(trainer.loader)
        full = next(batches)
        padded = trainer.loader.pad(  # a batch short of two samples, padded as the loader does
            type(full)(full.pixels[:2], full.input_ids[:2], full.attention_mask[:2], full.special_mask[:2],
                       full.captions[:2], full.keys[:2]), full.pixels.shape[1])
        assert padded.padded == 2 and full.valid is None
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        for batch in (full, padded):
            with FailOnHostSync():
                result = trainer.step([batch.to(trainer.device)])
            assert bool(result.applied) and not bool(result.bad) and torch.isfinite(result.grad_norm)
        assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters()), "no update"
        batches.close()
    finally:
        trainer.close()


def test_a_non_finite_step_is_skipped_on_the_device(demo_cache: Path, tmp_path: Path) -> None:
    """A NaN loss: the update is left out by the fused kernel (parameters and moments untouched), with no host
    read, and counted as skipped."""
    trainer = _trainer(demo_cache, tmp_path / "run")
    try:
        batches = iter(trainer.loader)
        batch = next(batches).to(trainer.device)
        trainer.step([batch])  # one real step, so the moments are not zero
        params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
        broken = type(batch)(batch.pixels * float("nan"), batch.input_ids, batch.attention_mask, batch.special_mask,
                             batch.captions, batch.keys)
        with FailOnHostSync():
            result = trainer.step([broken])
        assert not bool(result.applied) and bool(result.bad)
        assert all(torch.equal(p, params[n]) for n, p in trainer.model.named_parameters()), "a NaN step updated"
        assert all(torch.equal(s["exp_avg"], m) for s, m in zip(trainer.optimizer.state.values(), moments,
                                                                 strict=True))
        batches.close()
    finally:
        trainer.close()


@pytest.mark.slow
def test_compiled_step_gives_the_eager_losses_with_one_graph_per_frame_count(demo_cache: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "compile.json"
    args = short_run_args(demo_cache, tmp_path / "unused", steps=6, batch=4, extra=[
        *TINY_MODEL, "--train.log_every", "1", "--data.num_workers", "0", "--model.text.dropout", "0",
        "--model.fusion.dropout", "0"])
    proc = run_program([str(Path(__file__).with_name("compile_probe.py")), str(out), *args], cwd=tmp_path,
                       timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    compiled, eager = result["true"], result["false"]
    assert not compiled["graph_breaks"], f"graph breaks in the step: {compiled['graph_breaks']}"
    frames = [f for f, _ in compiled["seen"]]
    assert set(frames) == {1, 4}, f"the run must see images and videos: {frames}"
    both = max(frames.index(1), frames.index(4))  # the step by which each frame count has been compiled once
    graphs = [g for _, g in compiled["seen"]]
    assert graphs[both] == graphs[-1] == 2, f"graphs compiled by each step: {graphs} (frames {frames})"
    assert eager["seen"] and all(g == 0 for _, g in eager["seen"]), "the eager run compiled something"
    assert len(compiled["losses"]) == len(eager["losses"]) == 6
    for comp, ref in zip(compiled["losses"], eager["losses"], strict=True):
        assert abs(comp - ref) <= 1e-5 * abs(ref), (comp, ref)


def test_cuda_graphs_need_a_gpu(demo_cache: Path, tmp_path: Path) -> None:
    """On a machine without CUDA, --train.cuda_graphs is refused in one line before anything trains."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    from scl_fast.errors import ConfigError

    with pytest.raises(ConfigError, match="train.cuda_graphs needs a CUDA device"):
        _trainer(demo_cache, tmp_path / "run", "--train.cuda_graphs", "true")


@pytest.mark.cuda
def test_graphed_step_gives_the_eager_losses() -> None:
    """The whole step, compiled and replayed from CUDA graphs, against the eager step from the same weights and
    batch: the same losses to bf16's rounding over 8 steps (the first ones warm up and capture)."""
    from benchmarks import shapes as S
    from benchmarks.bench_step import TrainStepRunner

    shape = S.StepShape("tiny", preset="demo", batch=8, text_len=16)
    eager = TrainStepRunner(shape, mode="eager", device="cuda").losses(8)
    graphed = TrainStepRunner(shape, mode="graphed", device="cuda").losses(8)
    for a, b in zip(graphed, eager, strict=True):
        assert abs(a - b) <= 2e-2 * abs(b), (graphed, eager)
