"""What the training loop trains: the task interface, and pre-training as the first task.

The loop (``trainer.py``) owns what keeps a run safe and fast whatever is trained: the run folder, checkpoints,
signals, distributed wrapping, precision, the optimizer and its schedule, logs. A task owns what is trained: the
model, the data, the loss of one batch, the evaluation and what the summary reports. Pre-training is one task; each
fine-tuning task (``scl_fast.finetune``) is another, so fine-tuning reuses the loop instead of forking it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from scl_fast.config import Config
    from scl_fast.trainer import Trainer


class Task:
    """The interface; the methods below are pre-training's unless a subclass says otherwise."""

    name = "pretrain"
    metric_prefix = "retrieval"

    def __init__(self, cfg: Config, model_factory: Callable[[Config], nn.Module] | None = None) -> None:
        self.cfg = cfg
        self._model_factory = model_factory

    def check(self) -> None:
        """Refuse a configuration this task cannot train, before anything is written (one-line ``UserError``)."""
        from scl_fast.data.text import check_fits, load_tokenizer

        text = self.cfg.model.text  # a mismatch would train on wrong ids without an error
        check_fits(load_tokenizer(self.cfg.data.tokenizer, self.cfg.data.max_text_len), vocab_size=text.vocab_size,
                   pad_token_id=text.pad_token_id, mask_token_id=text.mask_token_id)

    def build_model(self) -> nn.Module:
        """A fresh model (the trainer moves it to the device, wraps it and restores checkpoints into it)."""
        if self._model_factory is not None:
            return self._model_factory(self.cfg)
        from scl_fast.model.scl import SCLModel

        return SCLModel(self.cfg.model)

    @property
    def run_name(self) -> str:
        """The default run folder is ``runs/<run_name>-<time>`` (and ``--train.resume auto`` without a run folder
        continues the newest of those)."""
        return self.cfg.preset

    @property
    def counts_flops(self) -> bool:
        """Whether :meth:`step_flops` describes the model being trained (MFU is left out otherwise)."""
        return self._model_factory is None

    def build_loader(self, split: str, *, rank: int, world_size: int, seed: int) -> Any:
        """The training (``split="train"``) data: an iterable of batches with ``state_dict`` / ``load_state_dict``,
        ``stats``, ``ordered`` and ``at_global_boundary`` (``scl_fast.data.Loader``)."""
        from scl_fast.data import build_loader

        return build_loader(self.cfg.data, split, rank=rank, world_size=world_size, seed=seed)

    @property
    def has_val(self) -> bool:
        return self.cfg.data.val is not None or self.cfg.data.train is None

    def forward(self, module: nn.Module, model: nn.Module, batch: Any, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict]:
        """The loss of one batch (what backward goes through) and its named parts for the logs.

        ``module`` computes (the model as wrapped for the run: DDP, compiled); ``model`` is the bare model. The
        step's random choices are drawn here, on the device, before ``module`` runs: a compiled graph takes them
        as inputs (a generator object cannot be traced)."""
        args = (batch.pixels, batch.input_ids, batch.attention_mask, batch.special_mask)
        if not hasattr(model, "draw_step_inputs"):  # a stand-in model of the tests draws its own
            out = module(*args, generator=generator)
        else:
            steps = model.draw_step_inputs(*args, generator=generator, valid=batch.valid)
            out = module(*args, step_inputs=steps)
        return out.loss, out.losses

    def count(self, batch: Any) -> tuple[int, int]:
        """(samples, tokens) of one batch on this rank, padding rows left out: real text tokens plus visual
        tokens. Called before the batch goes to the device (a count on the device would be a host read)."""
        f = batch.pixels.shape[1]
        mask = batch.attention_mask if batch.valid is None else batch.attention_mask[batch.valid]
        b = len(batch) - batch.padded
        return b, int(mask.sum()) + b * f * (self.cfg.model.num_patches + 1)

    def flops_key(self, batch: Any) -> tuple[int, ...]:
        """The shape one FLOP count stands for: text lengths rounded up to a multiple of 8 (a slight overestimate;
        counting every length would cost more than the steps)."""
        b, f = batch.pixels.shape[:2]
        return b, f, -(-batch.input_ids.shape[1] // 8) * 8

    def step_flops(self, key: tuple[int, ...]) -> float:
        """FLOPs of one forward + backward at the shape ``key`` (:meth:`flops_key`)."""
        from scl_fast.flops import count_step_flops

        b, f, length = key
        counted = count_step_flops(self.cfg.model, b, f, length, schedules=[self.cfg.model.schedule])
        return float(counted[self.cfg.model.schedule]["step"])

    def evaluate(self, trainer: Trainer, model: nn.Module, *, alone: bool) -> dict[str, Any]:
        """Evaluate ``model`` on the val split; every rank calls it (``alone``: rank 0 only, on a full copy of an
        FSDP model). Returns rank 0's result (other ranks may return anything): metric groups as dicts."""
        from scl_fast import distributed as dist_util
        from scl_fast.data import build_loader
        from scl_fast.evaluate import embed, evaluate_retrieval

        data_cfg = dataclasses.replace(self.cfg.data, num_workers=0)  # one pass; workers cost more to start
        info = trainer.info
        rank, world = (0, 1) if alone else (info.rank, info.world_size)
        loader = build_loader(data_cfg, "val", rank=rank, world_size=world, seed=self.cfg.train.seed)
        part = embed(model, loader, trainer.device, autocast=trainer.autocast())
        parts = [part] if alone else dist_util.gather_objects(part, info)
        if not info.is_main:
            return {}
        return evaluate_retrieval(model, parts, pad_id=self.cfg.model.text.pad_token_id)

    def format(self, summary: dict[str, Any]) -> list[str]:
        """The task's lines of the end-of-run summary: the retrieval table with chance levels."""
        rows = [(d, m) for d, m in summary.get(self.metric_prefix, {}).items() if "R@1" in m]
        if not rows:
            return []
        lines = [f"{'retrieval':<14}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'chance R@1':>12}{'x chance':>10}"]
        for direction, m in rows:
            ratio = m["R@1"] / m["chance_R@1"] if m["chance_R@1"] else float("nan")
            lines.append(f"{direction:<14}{m['R@1']:>8.3f}{m['R@5']:>8.3f}{m['R@10']:>8.3f}"
                         f"{m['chance_R@1']:>12.4f}{ratio:>10.1f}")
        return lines
