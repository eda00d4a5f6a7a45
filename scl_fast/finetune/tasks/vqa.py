"""VQAv2: an answer classifier on the pooled feature, binary cross-entropy on the soft scores (METER).

Loss: BCE-with-logits per (question, answer), summed over the answers and averaged over the batch (METER multiplies
the mean by the vocabulary size: the same). Evaluation: the arg-max answer of each question, scored with the official
accuracy (``vqa_eval``), beside two trivial baselines: the most frequent training answer for every question (the
issue's baseline), and the most frequent training answer of the question's type (a language-only prior: what a
model that never looks at the image can reach). The predictions are written in the submission format
(``[{"question_id": int, "answer": str}]``) to ``RUN_DIR/vqa_predictions.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scl_fast import distributed as dist_util
from scl_fast.data.shards import Ledger
from scl_fast.errors import UserError
from scl_fast.model.ops import row_mean

from ..formats import Example
from ..formats.vqa import Targets, answer_vocabulary, read_questions, training_targets
from ..model import PooledClassifier
from ..vqa_eval import answer_accuracy, most_frequent, normalize_answer, score
from .base import FinetuneTask

PREDICTIONS = "vqa_predictions.json"


class VQATask(FinetuneTask):
    name = "vqa"
    demo_sizes = ("demo_train", "demo_val")

    def __init__(self, cfg: Any, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self._vocabulary: list[str] | None = None
        self._targets: list[Targets] = []

    def read(self, split: str, ledger: Ledger) -> list[Example]:
        files = self.files()
        if split == "train":
            if files["train_annotations"] is None or files["train_questions"] is None:
                from scl_fast.errors import ConfigError

                raise ConfigError("vqa: training needs --vqa.train_questions and --vqa.train_annotations")
            examples = read_questions(files["train_questions"].split("::"), files["train_annotations"].split("::"),
                                      files["images"], ledger)
            s = self.section
            self._vocabulary = answer_vocabulary(examples, max_answers=s.max_answers, min_count=s.min_answer_count)
            examples, self._targets = training_targets(examples, self._vocabulary, ledger, files["train_questions"])
            return examples
        if files["val_questions"] is None:
            return []
        annotations = files["val_annotations"].split("::") if files["val_annotations"] else None
        return read_questions(files["val_questions"].split("::"), annotations, files["images"], ledger)

    @property
    def has_val(self) -> bool:
        return self.files()["val_questions"] is not None

    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            self.examples("train")
        return self._vocabulary

    def label_fn(self, split: str):
        if split != "train":
            return None
        size = len(self.vocabulary())

        def targets(rows: list[int]) -> torch.Tensor:
            out = torch.zeros(len(rows), size)
            for i, row in enumerate(rows):
                t = self._targets[row]
                out[i, t.indices] = torch.tensor(t.scores)
            return out

        return targets

    def new_model(self, answers: list[str] | None = None) -> nn.Module:
        return PooledClassifier(self.cfg.model, answers or self.vocabulary(),
                                classifier_lr_mult=self.section.classifier_lr_mult)

    def model_for(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        return self.new_model(PooledClassifier.class_names_in(weights))  # the answers the checkpoint was trained on

    def forward(self, module: nn.Module, model: nn.Module, batch: Any, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict]:
        """BCE summed over answers, averaged over the batch's real rows (padding rows weigh 0; no host read)."""
        logits = module(batch.pixels, batch.input_ids, batch.attention_mask).float()  # (B, answers)
        per_row = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").sum(dim=-1)
        loss = row_mean(per_row, batch.valid)
        return loss, {"bce": loss.detach()}

    # ------------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate_model(self, model: nn.Module, *, device: torch.device, autocast: Any = None, info: Any = None,
                       alone: bool = True, out_dir: str | None = None) -> dict[str, Any]:
        info = self.ranks(info, alone, device)
        names = model.class_names
        examples, stats = self.examples("val")
        predictions: dict[int, str] = {}
        for batch in self.val_loader(info.rank, info.world_size):
            batch = batch.to(device)
            with self.autocast_or_not(autocast):
                logits = model(batch.pixels, batch.input_ids, batch.attention_mask)
            for row, answer in zip(batch.rows.tolist(), logits.argmax(dim=-1).tolist(), strict=True):
                predictions[int(examples[row].uid)] = names[answer]
        parts = [predictions] if info.world_size == 1 else dist_util.gather_objects(predictions, info)
        if not info.is_main:
            return {}
        merged = {q: a for part in parts for q, a in part.items()}
        if out_dir is not None:
            with open(os.path.join(out_dir, PREDICTIONS), "w") as f:
                json.dump([{"question_id": q, "answer": a} for q, a in sorted(merged.items())], f)
        result: dict[str, Any] = {"questions": len(merged), "skipped": len(examples) - len(merged)}
        annotated = {int(e.uid): e.label for e in examples if e.label is not None}
        if annotated:
            result |= score({q: a for q, a in merged.items() if q in annotated}, annotated)
            with contextlib.suppress(UserError):  # the training files are gone: no baseline
                result |= self.baselines([e for e in examples if int(e.uid) in merged and e.label is not None])
        return {"val": result}

    def baselines(self, examples: list[Example]) -> dict[str, float]:
        """Accuracy of the most frequent training answer, and of the most frequent one per question type."""
        train, _ = self.examples("train")
        answers = [normalize_answer(e.label["multiple_choice_answer"]) for e in train]
        overall = most_frequent(answers)
        by_type: dict[str, list[str]] = defaultdict(list)
        for e, a in zip(train, answers, strict=True):
            by_type[e.label.get("question_type")].append(a)
        prior = {t: most_frequent(v) for t, v in by_type.items()}

        def accuracy(guess) -> float:
            return sum(answer_accuracy(guess(e), e.label["answers"]) for e in examples) / max(1, len(examples))

        return {"baseline": accuracy(lambda e: overall), "baseline_answer": overall,
                "prior_baseline": accuracy(lambda e: prior.get(e.label.get("question_type"), overall))}

    def format(self, summary: dict[str, Any]) -> list[str]:
        m = summary.get(self.metric_prefix, {}).get("val", {})
        if "baseline" not in m:
            return [f"vqa: {m.get('questions', 0)} questions answered (no annotations: predictions only)"] if m else []
        return [f"{'vqa':<14}{'accuracy':>10}{'baseline':>10}{'prior':>10}  (baseline: always "
                f"{m['baseline_answer']!r}; prior: the most frequent answer of the question's type)",
                f"{'val':<14}{m['accuracy']:>10.3f}{m['baseline']:>10.3f}{m['prior_baseline']:>10.3f}  "
                f"{m['questions']} questions, {m['skipped']} skipped"]
