"""NLVR2: is the statement true of the pair of images? Both images are fused with the statement, their pooled
features concatenated and classified true/false (METER's "pair" setting); cross-entropy. Evaluation: accuracy
against the majority class of the training set.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scl_fast import distributed as dist_util
from scl_fast.data.shards import Ledger
from scl_fast.errors import ConfigError, UserError
from scl_fast.model.ops import row_mean

from ..data import PAD_LABEL
from ..formats import Example
from ..formats.nlvr2 import read_statements
from ..model import PooledClassifier
from .base import FinetuneTask

CLASSES = ["False", "True"]


class NLVR2Task(FinetuneTask):
    name = "nlvr2"
    demo_sizes = ("demo_train", "demo_val")

    def read(self, split: str, ledger: Ledger) -> list[Example]:
        files = self.files()
        path = files["train" if split == "train" else "val"]
        if path is None:
            if split == "train":
                raise ConfigError("nlvr2: training needs --nlvr2.train (train.json) and --nlvr2.images")
            return []
        if files["images"] is None:
            raise ConfigError("nlvr2: --nlvr2.images (the folder holding train/, dev/, test1/) is not set")
        return read_statements(path, files["images"], ledger)

    def check(self) -> None:
        super().check()
        if self.cfg.data.hflip and self.cfg.data.flip_swaps_left_right:
            raise ConfigError("nlvr2 statements name the left and right image, and --data.flip_swaps_left_right "
                              "would swap those words when an image is flipped: set --data.hflip false (the preset) "
                              "or --data.flip_swaps_left_right false")

    @property
    def has_val(self) -> bool:
        return self.files()["val"] is not None

    def label_fn(self, split: str):
        examples, _ = self.examples(split)

        def labels(rows: list[int]) -> torch.Tensor:
            return torch.tensor([int(examples[r].label) for r in rows], dtype=torch.long)

        return labels

    def new_model(self) -> nn.Module:
        return PooledClassifier(self.cfg.model, CLASSES, images=2, classifier_lr_mult=self.section.classifier_lr_mult)

    def forward(self, module: nn.Module, model: nn.Module, batch: Any, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict]:
        """Cross-entropy over the real rows (a padding row's label is the ignore index)."""
        logits = module(batch.pixels, batch.input_ids, batch.attention_mask).float()  # (B, 2)
        loss = F.cross_entropy(logits, batch.labels, ignore_index=PAD_LABEL)
        acc = row_mean((logits.detach().argmax(dim=-1) == batch.labels).float(), batch.valid)
        return loss, {"ce": loss.detach(), "acc": acc}

    @torch.no_grad()
    def evaluate_model(self, model: nn.Module, *, device: torch.device, autocast: Any = None, info: Any = None,
                       alone: bool = True, out_dir: str | None = None) -> dict[str, Any]:
        info = self.ranks(info, alone, device)
        examples, _ = self.examples("val")
        correct: dict[str, bool] = {}
        for batch in self.val_loader(info.rank, info.world_size):
            batch = batch.to(device)
            with self.autocast_or_not(autocast):
                predicted = model(batch.pixels, batch.input_ids, batch.attention_mask).argmax(dim=-1)
            for row, p in zip(batch.rows.tolist(), predicted.tolist(), strict=True):
                correct[examples[row].uid] = bool(p) == examples[row].label
        parts = [correct] if info.world_size == 1 else dist_util.gather_objects(correct, info)
        if not info.is_main:
            return {}
        merged = {k: v for part in parts for k, v in part.items()}
        result: dict[str, Any] = {"accuracy": sum(merged.values()) / max(1, len(merged)), "statements": len(merged),
                                  "skipped": len(examples) - len(merged)}
        with contextlib.suppress(UserError):  # the training file is gone: no baseline
            train, _ = self.examples("train")
            majority = sum(e.label for e in train) * 2 >= len(train)
            scored = [e for e in examples if e.uid in merged]
            result |= {"baseline": sum(e.label == majority for e in scored) / max(1, len(scored)),
                       "baseline_answer": str(majority)}
        return {"val": result}

    def format(self, summary: dict[str, Any]) -> list[str]:
        m = summary.get(self.metric_prefix, {}).get("val", {})
        if "baseline" not in m:
            return []
        return [f"{'nlvr2':<14}{'accuracy':>10}{'baseline':>10}  (baseline: always {m['baseline_answer']})",
                f"{'val':<14}{m['accuracy']:>10.3f}{m['baseline']:>10.3f}  {m['statements']} statements, "
                f"{m['skipped']} skipped"]
