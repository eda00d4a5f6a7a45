"""The training loop: build model, optimizer, data and logs from a ``Config``, run, checkpoint, evaluate, summarise.

Everything that carries state across a restart exposes ``state_dict``/``load_state_dict`` (model, optimizer, LR
scheduler, grad scaler, data loader, RNGs, the trainer's own counters) and goes into one checkpoint, so a run
killed at any moment continues from its last checkpoint with the same numbers it would have produced (bit-exact
on the CPU in deterministic mode; the resume test checks it).

One optimizer step = ``grad_accum`` micro-batches; under DDP the gradient all-reduce happens only on the last
(``no_sync`` on the others). One host sync per step: the global gradient norm, which tells whether the step is
finite on every rank at once (DDP has already averaged the gradients, so every rank takes the same decision).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scl_fast import checkpoint as ckpt
from scl_fast import distributed as dist_util
from scl_fast import runfolder
from scl_fast.config import Config, to_dict
from scl_fast.errors import UserError
from scl_fast.metrics import MetricsLogger, peak_flops
from scl_fast.optim import build_optimizer, build_scheduler
from scl_fast.preemption import Preempted, StopSignals
from scl_fast.step import TrainStep
from scl_fast.task import Task

log = logging.getLogger("scl_fast.train")

# Config keys that may change between an interrupted run and its resumption: they do not change the numbers, except
# data.num_workers, which moves the data position as a resume on another number of ranks does (same sample order).
RESUMABLE_CHANGES = (
    "train.resume", "train.run_dir", "train.overwrite", "train.log_every", "train.ckpt_every", "train.keep_ckpts",
    "train.eval_every", "train.max_bad_steps", "train.compile", "train.cuda_graphs", "data.cache_dir",
    "data.dali_threads",
    "data.num_workers",
)


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


@dataclasses.dataclass
class Counters:
    """The trainer's own progress, checkpointed with everything else."""

    step: int = 0
    """Optimizer steps taken (skipped non-finite steps included: the schedule moves on)."""
    samples: int = 0
    """Samples consumed, all ranks."""
    tokens: int = 0
    """Text tokens (real, not padding) plus visual tokens consumed, all ranks."""
    bad_steps: int = 0
    """Steps skipped for a non-finite loss or gradient, in total."""
    bad_in_row: int = 0
    """Consecutive skipped steps up to now."""
    train_seconds: float = 0.0
    """Wall time spent in training steps (evaluation and checkpoint writes excluded)."""

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes bf16 on a GPU that supports it (else fp16) and fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_run_dir(cfg: Config, name: str | None = None) -> Path:
    """``runs/<name>-<time>``; ``name`` is the task's ``run_name`` (pre-training: the preset)."""
    return Path("runs") / f"{name or cfg.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _dict_get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _dict_drop(d: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        d = d.get(part, {})
    d.pop(leaf, None)


def _unwrap(model: nn.Module) -> nn.Module:
    """The SCL model under DDP / torch.compile wrappers (for encode_* and state_dict)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class Trainer:
    """One pre-training run. ``train.py`` does ``Trainer(cfg)``, ``try: trainer.train() finally: trainer.close()``.

    Args:
        cfg: the resolved config.
        device: "auto" (this rank's GPU if any, else CPU) or "cpu"/"cuda".
        model_factory: builds the model from the config (tests inject small models; default ``SCLModel``).
        progress: show the tqdm bar (rank 0).
        task: what is trained (``scl_fast.task``); default pre-training.
    """

    def __init__(self, cfg: Config, *, device: str = "auto", model_factory: Callable[[Config], nn.Module] | None = None,
                 progress: bool = True, task: Task | None = None) -> None:
        # From the start, so a SIGUSR1 or SIGTERM during set-up is answered after the first step instead of killing
        # the process; released by close(), or here if set-up fails.
        self.signals = StopSignals().__enter__()
        try:
            self._setup(cfg, device, task or Task(cfg, model_factory), progress)
        except BaseException:
            self.signals.__exit__(None, None, None)
            raise

    def _setup(self, cfg: Config, device: str, task: Task, progress: bool) -> None:
        self.cfg, self.task = cfg, task
        tc = cfg.train
        task.check()  # refuse before anything starts
        self.info = dist_util.init_distributed(device)
        self.device = self.info.device
        self.precision = resolve_precision(tc.precision, self.device)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        seed_everything(tc.seed + self.info.rank)
        self.run_dir = self._resolve_run_dir()
        self.config_dict = to_dict(cfg)
        resume_from = self._claim_run_folder()  # refuses another run's folder before anything is written
        if self.info.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(self.config_dict, indent=2) + "\n")
            _print(f"run folder: {self.run_dir}")
            _print("resolved config (also in config.json):\n" + "\n".join(
                f"  {name}: {json.dumps(section)}" for name, section in self.config_dict.items()))
        dist_util.barrier(self.info)

        # Model and optimizer. The generator drives the step's random masks (MLM, SCL, ITM negatives) and is
        # checkpointed; dropout uses the global RNG, also checkpointed.
        self.model = task.build_model().to(self.device)
        # Wrap before the optimizer is built: FSDP2 replaces the parameters with sharded ones in place, and an
        # optimizer holding the old tensors would step parameters the model no longer uses.
        # Unused parameters are normal here (a loss weight of 0, the temporal embedding of a batch of images).
        self.step_module = dist_util.wrap_model(self.model, self.info, tc.distributed, find_unused_parameters=True)
        groups = self.model.param_groups(tc.lr, tc.weight_decay, tc.head_lr_mult)
        self.optimizer = build_optimizer(groups, tc, self.device)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.generator = torch.Generator(self.device).manual_seed(tc.seed + self.info.rank)
        self.step = TrainStep(task=task, module=self.step_module, model=self.model, optimizer=self.optimizer,
                              scheduler=self.scheduler, scaler=self.scaler, info=self.info, clip_grad=tc.clip_grad,
                              autocast=self.autocast, generator=self.generator, compile=tc.compile,
                              cuda_graphs=tc.cuda_graphs)
        self.counters = Counters()
        self._bad = _BadSteps(self.device)

        self.loader = task.build_loader("train", rank=self.info.rank, world_size=self.info.world_size, seed=tc.seed)
        self.has_val = task.has_val
        self.last_losses: dict[str, float] = {}
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            if self.info.is_main:
                runfolder.truncate_logs(self.run_dir, self.counters.step)  # the steps after it are redone
        self.logger = MetricsLogger(self.run_dir, enabled=self.info.is_main, total_steps=tc.steps,
                                    start_step=self.counters.step, progress=progress)
        self.peak, peak_note = peak_flops(self.device, self.precision) if self.info.is_main else (None, "")
        if self.info.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            engine = tc.distributed if self.info.distributed else "single process"
            _print(f"device {self.device} x {self.info.world_size} ranks ({engine}), precision {self.precision}, "
                   f"{n_params / 1e6:.2f} M parameters; MFU peak: {peak_note}")
        self._flops_cache: dict[tuple[int, ...], float | None] = {}
        if not task.counts_flops:
            self.peak = None
        self.last_eval: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Set-up helpers
    # ------------------------------------------------------------------------------------------------------------

    def _resolve_run_dir(self) -> Path:
        tc = self.cfg.train
        if tc.run_dir is not None:
            path = Path(tc.run_dir)
        elif tc.resume == "auto":
            runs = sorted(Path("runs").glob(f"{self.task.run_name}-*"), key=lambda p: p.name)
            runs = [p for p in runs if ckpt.list_checkpoints(p)]
            path = runs[-1] if runs else default_run_dir(self.cfg, self.task.run_name)
        else:
            path = default_run_dir(self.cfg, self.task.run_name)
        return Path(dist_util.broadcast_object(str(path), self.info))

    def _claim_run_folder(self) -> Path | None:
        """Find the checkpoint to resume, if any, and claim the run folder for this run's lineage (rank 0 decides,
        every rank gets its answer or its error); returns the checkpoint."""
        outcome: Any = None
        if self.info.is_main:
            try:
                outcome = self._claim_on_main()
            except UserError as err:
                outcome = err
        outcome = dist_util.broadcast_object(outcome, self.info)
        if isinstance(outcome, UserError):
            raise outcome
        path, self.run_id = outcome
        return None if path is None else Path(path)

    def _claim_on_main(self) -> tuple[str | None, str]:
        tc = self.cfg.train
        path = None
        if tc.resume == "auto":
            path = ckpt.latest_checkpoint(self.run_dir)
            if path is None:
                _print(f"resume auto: no checkpoint in {self.run_dir}, starting fresh")
        elif tc.resume is not None:
            path = Path(tc.resume)
        if path is None:
            # resume auto without a checkpoint: an attempt that died before its first one left only logs; they are
            # moved aside with the rest, not mixed into this run's
            run_id, aside = runfolder.claim_fresh(self.run_dir, overwrite=tc.overwrite or tc.resume == "auto")
            if aside is not None:
                _print(f"moved the earlier contents of {self.run_dir} to {aside}")
            return None, run_id
        meta = ckpt.verify(path)
        run_id = meta.get("run_id") or runfolder.read_run_id(path.parent.parent) or uuid.uuid4().hex
        runfolder.adopt(self.run_dir, run_id)
        return str(path), run_id

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------------------------

    def _model_state(self) -> dict[str, torch.Tensor]:
        if dist_util.is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.model.state_dict()

    def _optim_state(self) -> dict[str, Any]:
        if dist_util.is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0 writes; every rank contributes RNG and data state)."""
        self._flush_bad_steps()
        per_rank = {"rng": ckpt.rng_state(self.generator), "data": self.loader.state_dict()}
        gathered = dist_util.gather_objects(per_rank, self.info)
        model_state = self._model_state()  # collective under FSDP: every rank calls it
        optim_state = self._optim_state()
        path = None
        if self.info.is_main:
            train_state = {
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "counters": self.counters.state_dict(),
                "last_losses": self.last_losses,
                "ranks": gathered,
            }
            path = ckpt.save(self.run_dir, self.counters.step, model_state=model_state, train_state=train_state,
                             config=self.config_dict, world_size=self.info.world_size, keep=self.cfg.train.keep_ckpts,
                             run_id=self.run_id)
        dist_util.barrier(self.info)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything from ``path``; a corrupt or mismatched checkpoint raises ``CheckpointError``."""
        path = Path(path)
        ckpt.verify(path)
        state = ckpt.load_train_state(path)
        ranks = state["ranks"]
        mine = self.loader.state_dict()
        old = ranks[0]["data"]
        same_layout = (len(ranks), old["num_workers"], old.get("batch_size", mine["batch_size"])) == (
            self.info.world_size, mine["num_workers"], mine["batch_size"])
        saved = ckpt.load_config(path)
        current = json.loads(json.dumps(self.config_dict))
        # On another layout the per-rank batch may change too (e.g. to keep the global batch): the data position
        # moves as a count of samples.
        for key in (*RESUMABLE_CHANGES, *(() if same_layout else ("data.batch_size",))):
            _dict_drop(saved, key)
            _dict_drop(current, key)
        diff = ckpt.diff_config(saved, current)
        if diff:
            raise ckpt.CheckpointError(f"checkpoint {path} belongs to a different config: " + "; ".join(diff[:8]))
        weights = ckpt.load_weights(path)
        if dist_util.is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            try:
                self.model.load_state_dict(weights)
            except RuntimeError as err:
                raise ckpt.CheckpointError(f"checkpoint {path} does not fit the model: {err}") from err
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.counters.load_state_dict(state["counters"])
        self._bad = _BadSteps(self.device, in_row=self.counters.bad_in_row)
        self.last_losses = dict(state.get("last_losses", {}))
        if same_layout:
            ckpt.set_rng_state(ranks[self.info.rank]["rng"], self.generator)
            self.loader.load_state_dict(ranks[self.info.rank]["data"])
        else:
            self._load_other_layout(path, ranks, mine["num_workers"])
        if self.info.is_main:
            _print(f"resumed from {path} at step {self.counters.step}")

    def _load_other_layout(self, path: Path, ranks: list[dict[str, Any]], workers: int) -> None:
        """Continue a checkpoint written by another number of ranks, loader workers or samples per rank: the model
        and optimizer were loaded from full state dicts (resharded by FSDP2 as they load), the LR schedule and
        counters are global; the data position moves as a global count of consumed samples. Per-rank random streams
        cannot carry over."""
        from scl_fast.data.loader import global_position

        try:
            position = global_position([r["data"] for r in ranks])
        except UserError as err:
            raise ckpt.CheckpointError(f"checkpoint {path}: {err}") from None
        if not self.info.is_main:
            position = {**position, "stats": {"good": 0, "bad": {}, "repaired": {}, "info": {}}}  # counted once
        self.loader.load_state_dict(position)
        seed = self.cfg.train.seed + self.info.rank + 1_000_003 * self.counters.step
        seed_everything(seed)
        self.generator.manual_seed(seed)
        if self.info.is_main:
            _print(f"resuming on {self.info.world_size} rank(s) x {workers} loader worker(s) a checkpoint of "
                   f"{len(ranks)} x {ranks[0]['data']['num_workers']}: model, optimizer, LR schedule and data position "
                   f"carry over; the random streams (masks, dropout) restart from seed + rank + 1000003 * step")

    # ------------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------------

    def _step_flops(self, batch: Any) -> float | None:
        """FLOPs of one forward+backward at this batch's shape, for MFU: counted once per shape key of the task
        (``Task.flops_key``) on the meta device, and cached."""
        key = self.task.flops_key(batch)
        if key not in self._flops_cache:
            try:
                # The counter draws example masks from the global RNG: keep it out of the training stream, or a
                # resumed run (which counts each shape again) would diverge from an uninterrupted one.
                with torch.random.fork_rng(devices=[]):
                    self._flops_cache[key] = self.task.step_flops(key)
            except Exception as err:  # noqa: BLE001 - MFU is informative; a counting failure must not stop training
                if not self._flops_cache:
                    log.warning("FLOP counting failed (%s): MFU omitted", err)
                self._flops_cache[key] = None
        return self._flops_cache[key]

    def train(self) -> dict[str, Any]:
        """Run to ``train.steps``, checkpoint, evaluate, write ``summary.json``; returns the summary.

        Raises:
            Preempted: SIGTERM or SIGINT arrived; the checkpoint of the step reached is written (``preemption.py``).
        """
        if self.counters.step >= self.cfg.train.steps:
            return self._already_finished()
        self._run_steps(self.signals)
        self.logger.close_bar()
        if self.has_val:
            self.evaluate()
        summary = self.write_summary()
        self.logger.close()
        return summary

    def _already_finished(self) -> dict[str, Any]:
        """A resumed run that had reached ``train.steps``: report its stored summary without rewriting it (or, when
        it was stopped between its last checkpoint and its summary, evaluate and write the summary now)."""
        stored = None
        if self.info.is_main and (self.run_dir / "summary.json").is_file():
            stored = json.loads((self.run_dir / "summary.json").read_text())
        stored = dist_util.broadcast_object(stored, self.info)
        if stored is None:
            if self.has_val:
                self.evaluate()
            return self.write_summary()
        if self.info.is_main:
            _print(f"the run had finished at step {self.counters.step}: nothing to train; its summary "
                   f"({self.run_dir / 'summary.json'}) is unchanged")
            _print(format_summary(stored, self.task))
        return stored

    def _stop_requests(self, signals: StopSignals) -> tuple[str | None, bool]:
        """(the stop signal's name or None, whether a checkpoint was asked for), the same on every rank: a signal
        that reached one rank stops them all at the same step, so they write one checkpoint together."""
        stop, checkpoint_now = signals.stop, signals.checkpoint_requested
        if self.info.distributed:  # host flags through a CPU group: no device read
            asked, checkpoint_now = dist_util.any_rank([stop is not None, checkpoint_now], self.info)
            stop = (stop or "a signal on another rank") if asked else None
        return stop, checkpoint_now

    def _at_global_boundary(self) -> bool:
        return not self.loader.ordered or self.loader.at_global_boundary()

    def _run_steps(self, signals: StopSignals) -> None:
        """The loop. Nothing in a step reads the device (``step.py``): the losses, the count of updates applied and
        of skipped steps stay on the device until a log line (every ``log_every`` steps) or a checkpoint reads them."""
        tc = self.cfg.train
        batches: Iterator = iter(self.loader)
        self._batches = batches
        window: dict[str, torch.Tensor] = {}
        applied = torch.zeros((), device=self.device)
        win_samples = win_tokens = 0
        win_wait = win_time = win_flops = 0.0
        flops_known = True
        self.model.train()
        while self.counters.step < tc.steps:
            t0 = time.perf_counter()
            wait = flops = 0.0
            samples = tokens = 0
            micro = []
            for _ in range(tc.grad_accum):
                tw = time.perf_counter()
                # The DataLoader draws its worker seed from the global RNG when it starts: keep that draw out of
                # the RNG stream dropout uses, or a resumed run (which starts its loader later) would diverge.
                with torch.random.fork_rng(devices=[]):
                    batch = next(batches)
                b, t = self.task.count(batch)  # on the host, before the copy
                samples, tokens = samples + b, tokens + t
                if flops_known and self.peak is not None:
                    step_f = self._step_flops(batch)
                    flops_known = step_f is not None
                    flops += step_f or 0.0
                micro.append(batch.to(self.device, non_blocking=True))
                wait += time.perf_counter() - tw
            result = self.step(micro)
            for name, value in result.losses.items():  # on the device: a skipped step adds nothing
                window[name] = window.get(name, 0.0) + torch.where(result.applied, value, 0.0)
            applied = applied + result.applied
            self._bad.add(result.bad)
            self.last_grad_norm = result.grad_norm
            self.counters.step += 1
            world = self.info.world_size
            self.counters.samples += samples * world
            self.counters.tokens += tokens * world
            dt = time.perf_counter() - t0
            self.counters.train_seconds += dt
            win_samples += samples * world
            win_tokens += tokens * world
            win_wait += wait
            win_time += dt
            win_flops += flops
            step = self.counters.step
            if step % tc.log_every == 0 or step == tc.steps:
                self._flush_bad_steps()  # the loop's one host read of the device, with the log line's
                record = self._log_window(window, applied, win_samples, win_tokens, win_wait, win_time,
                                          win_flops if flops_known else None)
                window, applied, win_samples, win_tokens = {}, torch.zeros((), device=self.device), 0, 0
                win_wait = win_time = win_flops = 0.0
                self.logger.advance(0, {"loss": f"{record.get('loss/total', float('nan')):.3f}",
                                        "samples/s": f"{record['samples_per_s']:.0f}"})
            self.logger.advance(1)
            stop, checkpoint_now = self._stop_requests(signals)
            if (stop or checkpoint_now) and step < tc.steps and not self._at_global_boundary():
                # At most data.num_workers - 1 more steps: a checkpoint at a global-batch boundary also resumes on
                # another number of ranks or workers (data/loader.py, global_position).
                stop, checkpoint_now = None, False
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or checkpoint_now or stop or step == tc.steps:
                path = self.save_checkpoint()
                signals.checkpoint_requested = False
            if stop:
                raise Preempted(stop, step, str(path or ckpt.checkpoint_path(self.run_dir, step)))
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps and self.has_val:
                self.evaluate()
                self.model.train()

    def _flush_bad_steps(self) -> None:
        """Read the device's counts of skipped steps into the counters (a host read: at log lines and checkpoints
        only); too many in a row stop the run."""
        total, in_row, worst = self._bad.take()
        self.counters.bad_steps += total
        self.counters.bad_in_row = in_row
        limit = self.cfg.train.max_bad_steps
        if total and self.info.is_main:
            self.logger.write(f"step {self.counters.step}: {total} step(s) skipped since the last log line for a "
                              f"non-finite loss or gradient (at most {worst} in a row)")
        if worst >= limit:
            raise NonFiniteLossError(f"{worst} consecutive steps had a non-finite loss or gradient "
                                     f"(train.max_bad_steps={limit}); lower train.lr, enable clipping or use bf16 "
                                     f"instead of fp16")

    def _log_window(self, window: dict[str, torch.Tensor], steps: torch.Tensor, samples: int, tokens: int,
                    wait: float, elapsed: float, flops: float | None) -> dict[str, Any]:
        """One log record from the window's device sums (``steps``: the updates applied in it); the host reads the
        device here."""
        names = sorted(window)
        if names:
            vec = torch.stack([torch.as_tensor(window[n], device=self.device, dtype=torch.float32) for n in names])
        else:
            vec = torch.zeros(0, device=self.device)
        vec = torch.cat([vec, steps.reshape(1).to(device=self.device, dtype=torch.float32)])
        dist_util.all_reduce_sum(vec, self.info)
        total_steps = float(vec[-1])
        losses = {}
        if total_steps:
            losses = {n: float(v) / total_steps for n, v in zip(names, vec[:-1].tolist(), strict=True)}
        self.last_losses = losses or self.last_losses
        record: dict[str, Any] = {f"loss/{n}": v for n, v in losses.items()}
        record |= {
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(getattr(self, "last_grad_norm", float("nan"))),
            "samples_per_s": samples / max(elapsed, 1e-9),
            "tokens_per_s": tokens / max(elapsed, 1e-9),
            "data_wait_frac": wait / max(elapsed, 1e-9),
            "bad_steps": self.counters.bad_steps,
            "samples": self.counters.samples,
        }
        if flops is not None and self.peak:
            record["mfu"] = flops / max(elapsed, 1e-9) / self.peak  # per rank: own FLOPs over own peak
        self.logger.log(self.counters.step, record)
        if self.info.is_main:
            parts = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in record.items() if k.startswith("loss/"))
            mfu = f" mfu={record['mfu']:.1%}" if "mfu" in record else ""
            self.logger.write(f"step {self.counters.step}/{self.cfg.train.steps} {parts} "
                              f"samples/s={record['samples_per_s']:.1f} wait={record['data_wait_frac']:.0%}{mfu}")
        return record

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation and summary
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The task's evaluation on the val split (every rank takes part; rank 0 gets the result, logs it to
        ``eval.jsonl`` and the metrics, and every rank returns it)."""
        model = _unwrap(self.model)
        t0 = time.perf_counter()
        alone = dist_util.is_fsdp(self.model)
        if alone:
            # Sharded layers gather their parameters collectively, and the ranks' val shares (and rank 0's ITM
            # re-ranking) make unequal numbers of calls: rank 0 evaluates alone on a full, unsharded copy.
            state = self._model_state()  # collective; the full state lands on rank 0 only
            model = None
            if self.info.is_main:
                model = self.task.build_model().to(self.device)
                model.load_state_dict(state)
        result: dict[str, Any] = {}
        if model is not None:
            model.eval()
            result = self.task.evaluate(self, model, alone=alone)
        if self.info.is_main:
            result["seconds"] = time.perf_counter() - t0
            flat = {f"eval/{d}/{k}": v for d, ms in result.items() if isinstance(ms, dict)
                    for k, v in ms.items() if isinstance(v, int | float)}
            self.logger.log(self.counters.step, flat)
            with open(self.run_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps({"step": self.counters.step, **result}) + "\n")
        self.last_eval = dist_util.broadcast_object(result, self.info)
        return self.last_eval

    def write_summary(self) -> dict[str, Any]:
        c = self.counters
        summary = {
            "run_dir": str(self.run_dir),
            "preset": self.cfg.preset,
            "steps": c.step,
            "world_size": self.info.world_size,
            "device": str(self.device),
            "precision": self.precision,
            "samples": c.samples,
            "train_seconds": round(c.train_seconds, 2),
            "samples_per_s": c.samples / max(c.train_seconds, 1e-9),
            "tokens_per_s": c.tokens / max(c.train_seconds, 1e-9),
            "bad_steps": c.bad_steps,
            "final_losses": self.last_losses,
            self.task.metric_prefix: {k: v for k, v in self.last_eval.items() if isinstance(v, dict)},
            "data_stats": self.loader.stats.as_dict(),
        }
        if self.info.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            _print(format_summary(summary, self.task))
        return summary

    def close(self) -> None:
        """Release logs, loader workers, signal handlers and the process group (called from ``finally``, also after
        an error)."""
        self.signals.__exit__(None, None, None)
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        batches = getattr(self, "_batches", None)
        if batches is not None:  # stop the loader's workers now: left to a destructor at exit it can hang (gloo)
            batches.close()
            self._batches = None
        dist_util.close_distributed()


class _BadSteps:
    """Counts of skipped steps kept on the device: added to every step without a host read, read at log lines."""

    def __init__(self, device: torch.device, in_row: int = 0) -> None:
        self.total = torch.zeros((), dtype=torch.int64, device=device)
        self.in_row = torch.full((), in_row, dtype=torch.int64, device=device)
        self.worst = self.in_row.clone()

    def add(self, bad: torch.Tensor) -> None:
        bad = bad.to(torch.int64)
        self.total += bad
        self.in_row = (self.in_row + bad) * bad  # back to 0 after a good step
        self.worst = torch.maximum(self.worst, self.in_row)

    def take(self) -> tuple[int, int, int]:
        """(skipped since the last take, the current run of skipped steps, the longest run since the last take)."""
        total, in_row, worst = (int(v) for v in torch.stack([self.total, self.in_row, self.worst]).tolist())
        self.total.zero_()
        self.worst.copy_(self.in_row)
        return total, in_row, worst


def format_summary(summary: dict[str, Any], task: Task) -> str:
    """The end-of-run text: throughput, final losses, then the task's own lines (pre-training: retrieval)."""
    lines = [
        f"== summary ({summary['run_dir']}) ==",
        f"steps {summary['steps']}, {summary['samples']} samples in {summary['train_seconds']:.1f} s "
        f"({summary['samples_per_s']:.1f} samples/s, {summary['tokens_per_s']:.0f} tokens/s), "
        f"skipped steps {summary['bad_steps']}",
        "final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["final_losses"].items()),
        *task.format(summary),
    ]
    return "\n".join(lines)


def _print(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
