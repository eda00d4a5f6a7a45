"""What every downstream task shares: its data (a reader, or the synthetic demo), ``--init``, its loaders, the
evaluation contract and the summary lines. Each task (``vqa.py``, ``nlvr2.py``, ``retrieval.py``) adds its model,
its labels, its loss and its metric; the training loop is pre-training's (``scl_fast.trainer.Trainer``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scl_fast.data.shards import Ledger, Stats
from scl_fast.distributed import DistInfo
from scl_fast.errors import ConfigError
from scl_fast.task import Task

from ..data import ExampleLoader
from ..formats import Example

if TYPE_CHECKING:
    from scl_fast.trainer import Trainer

    from ..config import FinetuneConfig


class FinetuneTask(Task):
    """A downstream task on the SCL model. Subclasses set ``name`` and implement ``read``, ``build_model`` (via
    ``new_model``), ``forward`` and ``evaluate_model``; ``label_fn`` when their batches carry targets.

    Args:
        cfg: the run's config (``scl_fast.finetune.config``).
        load_init: load ``cfg.init``'s weights into a new model (the evaluation CLI, which loads a fine-tuned
            checkpoint right after, passes False).
    """

    name = ""
    demo_sizes: tuple[str, ...] = ()  # the section's demo_* fields, as the demo writer's arguments

    def __init__(self, cfg: FinetuneConfig, *, load_init: bool = True) -> None:
        super().__init__(cfg)
        self.cfg: FinetuneConfig = cfg
        self.load_init = load_init
        self._read: dict[str, tuple[list[Example], Stats]] = {}

    # ------------------------------------------------------------------------------------------------ data

    @property
    def metric_prefix(self) -> str:  # type: ignore[override]  # the summary's key for the evaluation
        return self.name

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.cfg.preset}"

    @property
    def counts_flops(self) -> bool:
        return False  # the FLOP counter knows the pre-training step only: MFU is left out

    @property
    def section(self) -> Any:
        """The task's config section (``cfg.vqa``, ...)."""
        return getattr(self.cfg, self.name)

    def files(self) -> dict[str, Any]:
        """The section's data paths; all None: the demo's, written on first use under ``data.cache_dir``."""
        from ..demo import ensure_demo

        section = self.section
        paths = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
                 if f.type in ("str | None", str | None)}
        if any(v is not None for v in paths.values()):
            return paths
        sizes = {name.removeprefix("demo_"): getattr(section, name) for name in self.demo_sizes}
        return ensure_demo(self.name, self.cfg.data.cache_dir, **sizes)

    def read(self, split: str, ledger: Ledger) -> list[Example]:
        """The examples of ``split`` ("train" or "val"), skips reported to ``ledger``."""
        raise NotImplementedError

    def examples(self, split: str) -> tuple[list[Example], Stats]:
        """``read``'s examples and skip counts, read once per task."""
        if split not in self._read:
            stats = Stats()
            examples = self.read(split, Ledger(stats, self.cfg.data.strict))
            if not examples:
                raise ConfigError(f"{self.name}: no usable {split} example (skipped: {stats.as_dict()['bad']})")
            self._read[split] = (examples, stats)
        return self._read[split]

    def check(self) -> None:
        """Before anything is written: the tokenizer fits, the data reads, ``--init`` exists and fits."""
        super().check()
        if self.cfg.data.train is not None or self.cfg.data.val is not None:
            raise ConfigError(f"{self.name} reads its data from the --{self.name}.* options; --data.train and "
                              f"--data.val are pre-training's")
        self.examples("train")
        if self.cfg.init is not None:
            from ..model import check_fits, resolve

            check_fits(self.cfg.model, resolve(self.cfg.init))

    def label_fn(self, split: str):
        """The targets of a list of example indices of ``split`` (None: the batches carry no labels)."""
        return None

    def build_loader(self, split: str, *, rank: int, world_size: int, seed: int,
                     data_cfg: Any = None) -> ExampleLoader:
        examples, stats = self.examples(split)
        return ExampleLoader(examples, data_cfg or self.cfg.data, train=split == "train", rank=rank,
                             world_size=world_size, seed=seed, label_fn=self.label_fn(split),
                             reader_stats=stats if rank == 0 else None, pad_id=self.cfg.model.text.pad_token_id)

    def val_loader(self, rank: int, world_size: int) -> ExampleLoader:
        """One pass over the evaluation split, this rank's share, decoded in-process (workers cost more to start
        than one pass saves)."""
        return self.build_loader("val", rank=rank, world_size=world_size, seed=self.cfg.train.seed,
                                 data_cfg=dataclasses.replace(self.cfg.data, num_workers=0))

    @property
    def has_val(self) -> bool:
        return True

    # ------------------------------------------------------------------------------------------------ model

    def new_model(self) -> nn.Module:
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module:
        """The ``SCLModel`` inside ``model`` (what ``--init`` loads)."""
        return getattr(model, "backbone", model)

    def model_for(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A model shaped for a checkpoint's ``weights`` (VQA: its answer vocabulary), not yet loaded."""
        return self.new_model()

    def build_model(self) -> nn.Module:
        model = self.new_model()
        if self.cfg.init is not None and self.load_init:
            from ..model import load_backbone, resolve

            load_backbone(self.backbone(model), resolve(self.cfg.init))
            self.load_init = False  # once: a later model (FSDP's evaluation copy) gets the trained weights anyway
        return model

    # ------------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, trainer: Trainer, model: nn.Module, *, alone: bool) -> dict[str, Any]:
        """The trainer's evaluation: :meth:`evaluate_model` with the run's device, precision and ranks."""
        return self.evaluate_model(model, device=trainer.device, autocast=trainer.autocast(), info=trainer.info,
                                   alone=alone, out_dir=str(trainer.run_dir))

    def evaluate_model(self, model: nn.Module, *, device: torch.device, autocast: Any = None,
                       info: DistInfo | None = None, alone: bool = True, out_dir: str | None = None
                       ) -> dict[str, Any]:
        """Score ``model`` on the evaluation split: every rank takes part (``alone``: this process only); rank 0
        returns ``{group: {metric: value}}`` with the trivial baseline beside the metric."""
        raise NotImplementedError

    @staticmethod
    def ranks(info: DistInfo | None, alone: bool, device: torch.device) -> DistInfo:
        return info if info is not None and not alone else DistInfo(rank=0, world_size=1, local_rank=0, device=device)

    @staticmethod
    def autocast_or_not(autocast: Any) -> Any:
        return autocast if autocast is not None else contextlib.nullcontext()
