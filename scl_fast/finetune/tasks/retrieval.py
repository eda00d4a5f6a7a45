"""Image-text (COCO, Flickr30K) and video-text (MSR-VTT 1k-A) retrieval: the pre-training model and step, with
ITC and ITM only.

Training is pre-training's forward with the masked objectives off (``finetune_preset``: ITC + ITM, ITM negatives
sampled from the ITC similarities, ALBEF's hard negatives), so the fused kernels, the frame-block attention of the
4-frame videos and the step schedule are pre-training's. Evaluation is ``scl_fast.evaluate``'s: rank the gallery by
ITC, re-rank each query's top ``itm_k`` by ITM, R@1/5/10 both ways with the chance levels, the median rank (MdR) and
the R-sum (the six recalls, in %).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scl_fast import distributed as dist_util
from scl_fast.data.shards import Ledger
from scl_fast.errors import ConfigError

from ..formats import Example
from ..formats.karpathy import read_captions
from ..formats.msrvtt import read_test, read_train
from .base import FinetuneTask


class RetrievalTask(FinetuneTask):
    name = "retrieval"
    demo_sizes = ("demo_train", "demo_test")

    def read(self, split: str, ledger: Ledger) -> list[Example]:
        files, s = self.files(), self.section
        if files["karpathy"] is None or files["images"] is None:
            raise ConfigError("retrieval needs --retrieval.karpathy (dataset_coco.json / dataset_flickr30k.json) "
                              "and --retrieval.images")
        splits = tuple(s.train_splits) if split == "train" else (s.val_split,)
        return read_captions(files["karpathy"], files["images"], splits, ledger)

    def new_model(self) -> nn.Module:
        from scl_fast.model import SCLModel

        return SCLModel(self.cfg.model)

    @torch.no_grad()
    def evaluate_model(self, model: nn.Module, *, device: torch.device, autocast: Any = None, info: Any = None,
                       alone: bool = True, out_dir: str | None = None) -> dict[str, Any]:
        from scl_fast.evaluate import embed, evaluate_retrieval

        info = self.ranks(info, alone, device)
        k = self.section.itm_k
        part = embed(model, self.val_loader(info.rank, info.world_size), device, keep_inputs=k > 0,
                     autocast=autocast)
        parts = [part] if info.world_size == 1 else dist_util.gather_objects(part, info)
        if not info.is_main:
            return {}
        result = evaluate_retrieval(model, parts, itm_k=k, device=device, pad_id=self.cfg.model.text.pad_token_id)
        directions = [m for m in result.values() if isinstance(m, dict) and "R@1" in m]
        result["val"] = {"rsum": 100 * sum(m[f"R@{k}"] for m in directions for k in (1, 5, 10)),
                         "chance_rsum": 100 * sum(m[f"chance_R@{k}"] for m in directions for k in (1, 5, 10)),
                         "itm_k": k}
        return result

    def forward(self, module: nn.Module, model: nn.Module, batch: Any, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict]:
        """Pre-training's step; the losses it does not compute (MLM, SCL: weight 0) are left out of the logs."""
        loss, parts = super().forward(module, model, batch, generator)
        weights = {name: getattr(self.cfg.model.loss, f"{name}_weight", 1.0) for name in parts}
        return loss, {name: value for name, value in parts.items() if weights[name] > 0}

    def format(self, summary: dict[str, Any]) -> list[str]:
        groups = summary.get(self.metric_prefix, {})
        rows = [(d, m) for d, m in groups.items() if isinstance(m, dict) and "R@1" in m]
        if not rows:
            return []
        lines = [f"{self.name:<16}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MdR':>7}   chance:{'R@1':>7}{'R@5':>7}{'R@10':>7}"]
        for direction, m in rows:
            lines.append(f"{direction:<16}{m['R@1']:>7.3f}{m['R@5']:>7.3f}{m['R@10']:>7.3f}{m['MdR']:>7.1f}"
                         f"{'':>10}{m['chance_R@1']:>7.3f}{m['chance_R@5']:>7.3f}{m['chance_R@10']:>7.3f}")
        v = groups.get("val", {})
        if "rsum" in v:
            ranking = f"ITM re-ranks the ITC top {v['itm_k']}" if v["itm_k"] else "ITC ranking (no ITM re-ranking)"
            lines.append(f"R-sum {v['rsum']:.1f} (chance {v['chance_rsum']:.1f}); {ranking}")
        return lines


class VideoRetrievalTask(RetrievalTask):
    name = "video_retrieval"
    demo_sizes = ("demo_train", "demo_test")

    def read(self, split: str, ledger: Ledger) -> list[Example]:
        files, s = self.files(), self.section
        if files["videos"] is None:
            raise ConfigError("video_retrieval needs --video_retrieval.videos (the folder of <video_id>.mp4)")
        if split == "train":
            if files["train_csv"] is None or files["data_json"] is None:
                raise ConfigError("video_retrieval: training needs --video_retrieval.train_csv "
                                  "(MSRVTT_train.9k.csv) and --video_retrieval.data_json (MSRVTT_data.json)")
            return read_train(files["train_csv"], files["data_json"], files["videos"], s.video_ext, ledger)
        if files["test_csv"] is None:
            return []
        return read_test(files["test_csv"], files["videos"], s.video_ext, ledger)

    @property
    def has_val(self) -> bool:
        return self.files()["test_csv"] is not None
