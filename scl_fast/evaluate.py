"""Zero-shot retrieval: ITC ranking with optional ITM re-ranking of the top k, for image and video sets.

    python -m scl_fast.evaluate --ckpt RUN_DIR/checkpoints/step_00000300 [--data SPEC] [--itm_k 16]
    python -m scl_fast.evaluate TASK --ckpt RUN_DIR ...   # a fine-tuned run: scl_fast/finetune/evaluate.py

prints R@1/5/10 of text->image, image->text, text->video and video->text (whichever kinds the set holds),
each with the R@1 a random ranking would get, as JSON. The training loop calls the same ``evaluate_retrieval``.

Gallery items are deduplicated by their pixels: a COCO/Flickr-style set with one line per caption shows each
image once with all its captions (as the standard protocol does), and a caption counts as retrieved for an
image if any of the image's captions is. Ties in score are ranked pessimistically (a relevant item tied with an
irrelevant one counts as below it), so a model that scores everything alike gets 0, not 100%.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scl_fast.errors import run_cli

KS = (1, 5, 10)
KIND_NAMES = {1: "image"}  # frame count -> name; any other count is a video set


def first_relevant_rank(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """(Q,) 0-based rank of each query's best relevant item: how many irrelevant items score at least as high
    (pessimistic ties). A query with a NaN or infinite score anywhere ranks last (G).

    Args:
        scores: (Q, G) similarity of each query to each gallery item (higher = better).
        relevant: (Q, G) bool, True where the gallery item is a correct answer; every row needs one.
    """
    if scores.shape != relevant.shape or scores.dim() != 2:
        raise ValueError(f"scores and relevant must be the same (Q, G) shape, got {scores.shape} and {relevant.shape}")
    if not relevant.any(dim=1).all():
        raise ValueError("every query needs at least one relevant gallery item")
    scores = scores.double()
    best = scores.masked_fill(~relevant, -math.inf).max(dim=1, keepdim=True).values  # (Q, 1)
    rank = ((scores >= best) & ~relevant).sum(dim=1)  # (Q,) 0 = the best relevant item is first
    finite = torch.isfinite(scores).all(dim=1)  # a NaN/inf anywhere in a row: that query finds nothing
    return torch.where(finite, rank, scores.shape[1])


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Fraction of queries with a relevant item among their top k, for each k (arguments: ``first_relevant_rank``)."""
    rank = first_relevant_rank(scores, relevant)
    return {f"R@{k}": float((rank < k).double().mean()) for k in ks}


def median_rank(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    """Median over queries of the 1-based rank of the best relevant item (MdR, the video-retrieval convention; for
    an even count the mean of the two middle ranks). Lower is better; a random ranking of G single-relevant items
    gets about (G + 1) / 2."""
    rank = first_relevant_rank(scores, relevant).double() + 1
    return float(rank.quantile(0.5))


def chance_recall(relevant: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected R@k of a uniformly random ranking: 1 - C(G - r, k) / C(G, k) per query with r relevant items."""
    gallery = relevant.shape[1]
    counts = relevant.sum(dim=1).tolist()
    out = {}
    for k in ks:
        k_eff = min(k, gallery)
        miss = [math.comb(gallery - r, k_eff) / math.comb(gallery, k_eff) for r in counts]
        out[f"R@{k}"] = 1.0 - sum(miss) / len(miss)
    return out


@dataclass
class _Collected:
    """Embeddings of one kind (frame count) of the val set, gathered over batches (and ranks)."""

    frames: int
    visual: list[torch.Tensor] = field(default_factory=list)  # (N, d) per batch
    text: list[torch.Tensor] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # pixel hash per sample, to find repeated images
    gallery: dict[str, torch.Tensor] = field(default_factory=dict)  # digest -> pixels, once per item (ITM only)
    ids: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)


def _digest(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.contiguous().cpu().numpy().tobytes()).hexdigest()


@torch.no_grad()
def embed(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    *,
    keep_inputs: bool = False,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[int, _Collected]:
    """ITC embeddings of every (visual, caption) pair in ``batches``, grouped by frame count, on the CPU."""
    out: dict[int, _Collected] = {}
    for batch in batches:
        frames = batch.pixels.shape[1]
        col = out.setdefault(frames, _Collected(frames))
        batch = batch.to(device)
        with autocast or contextlib.nullcontext():
            col.visual.append(model.encode_image(batch.pixels).float().cpu())
            col.text.append(model.encode_text(batch.input_ids, batch.attention_mask).float().cpu())
        col.keys.extend(batch.keys)
        digests = [_digest(p) for p in batch.pixels]
        col.digests.extend(digests)
        if keep_inputs:  # each gallery item once: COCO's test set would otherwise hold every image five times
            for d, p in zip(digests, batch.pixels, strict=True):
                col.gallery.setdefault(d, p.cpu())
            col.ids.append(batch.input_ids.cpu())
            col.masks.append(batch.attention_mask.cpu())
    return out


def merge(parts: Sequence[dict[int, _Collected]]) -> dict[int, _Collected]:
    """Merge the collections of several ranks; a sample seen twice (by key) is kept once."""
    out: dict[int, _Collected] = {}
    for part in parts:
        for frames, col in part.items():
            dst = out.setdefault(frames, _Collected(frames))
            seen = set(dst.keys)
            for field_name in ("visual", "text", "ids", "masks"):
                getattr(dst, field_name).extend(getattr(col, field_name))
            for d, p in col.gallery.items():
                dst.gallery.setdefault(d, p)
            dst.keys.extend(col.keys)
            dst.digests.extend(col.digests)
            if seen & set(col.keys):
                raise ValueError(f"the same val sample was embedded by two ranks: {sorted(seen & set(col.keys))[:3]}")
    return out


def _pad_cat(tensors: list[torch.Tensor], value: int | bool) -> torch.Tensor:
    """Concatenate (N_i, L_i) text tensors of different lengths, padding on the right."""
    length = max(t.shape[1] for t in tensors)
    return torch.cat([nn.functional.pad(t, (0, length - t.shape[1]), value=value) for t in tensors])


def _rerank(scores: torch.Tensor, k: int, score_pairs: Callable, chunk: int = 64) -> torch.Tensor:
    """Re-order each row's ITC top ``k`` by ITM score (above the rest, which keep their ITC order)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (Q, k)
    rows = torch.arange(scores.shape[0]).repeat_interleave(k)
    cols = top.reshape(-1)
    itm = torch.cat([score_pairs(rows[i : i + chunk], cols[i : i + chunk]) for i in range(0, len(rows), chunk)])
    itm = itm.double().cpu()
    out = scores.double().clone()
    out[rows, cols] = out.max() + 1.0 + (itm - itm.min())  # every re-ranked item above every other one
    return out


def retrieval_metrics(
    col: _Collected, *, model: nn.Module | None = None, itm_k: int = 0, device: torch.device | None = None,
    pad_id: int = 0,
) -> dict[str, dict[str, float]]:
    """R@K both ways (and chance R@1) for one kind; ITM re-ranking of the top ``itm_k`` when > 0."""
    unique: dict[str, int] = {}
    owner = torch.tensor([unique.setdefault(d, len(unique)) for d in col.digests])  # (T,) text -> gallery item
    first = torch.tensor([col.digests.index(d) for d in unique])  # a sample index per gallery item
    visual = torch.cat(col.visual)[first]  # (G, d)
    text = torch.cat(col.text)  # (T, d)
    scores = text @ visual.T  # (T, G)
    relevant = owner[:, None] == torch.arange(len(unique))[None, :]  # (T, G)
    if itm_k > 0:
        if model is None or device is None or not col.gallery:
            raise ValueError("ITM re-ranking needs the model, the device and the inputs (embed(keep_inputs=True))")
        pixels = torch.stack([col.gallery[d] for d in unique])  # (G, F, 3, H, W) in gallery order
        ids, mask = _pad_cat(col.ids, pad_id), _pad_cat(col.masks, False)

        @torch.no_grad()
        def t2v_pairs(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return model.itm_scores(pixels[cols].to(device), ids[rows].to(device), mask[rows].to(device)).float()

        t2v = _rerank(scores, itm_k, t2v_pairs)
        v2t = _rerank(scores.T, itm_k, lambda r, c: t2v_pairs(c, r))
    else:
        t2v, v2t = scores, scores.T
    name = KIND_NAMES.get(col.frames, "video")
    out = {}
    for direction, sc, rel in ((f"text->{name}", t2v, relevant), (f"{name}->text", v2t, relevant.T)):
        chance = {f"chance_{k}": v for k, v in chance_recall(rel).items()}
        out[direction] = recall_at_k(sc, rel) | {"MdR": median_rank(sc, rel)} | chance
    return out


def evaluate_retrieval(
    model: nn.Module,
    parts: Sequence[dict[int, _Collected]],
    **kwargs: Any,
) -> dict[str, Any]:
    """Retrieval metrics of every kind in the merged per-rank collections, as {direction: {R@k, chance_R@1}}."""
    merged = merge(parts)
    out: dict[str, Any] = {}
    for frames in sorted(merged):
        col = merged[frames]
        out |= retrieval_metrics(col, model=model, **kwargs)
        out[f"n_{KIND_NAMES.get(frames, 'video')}"] = {"pairs": len(col.keys), "gallery": len(set(col.digests))}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: load a checkpoint, embed a val set, print the retrieval metrics as JSON. With a downstream task as the
    first argument (``vqa``, ``nlvr2``, ``retrieval``, ``video_retrieval``): that task's evaluation of a fine-tuned
    checkpoint (``scl_fast.finetune.evaluate``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        from scl_fast.finetune.evaluate import main as task_main

        return task_main(argv)
    from scl_fast import checkpoint
    from scl_fast.config import Config, from_dict
    from scl_fast.data import build_loader
    from scl_fast.model import SCLModel

    parser = argparse.ArgumentParser(prog="python -m scl_fast.evaluate", description=__doc__.split("\n\n")[0],
                                     epilog="python -m scl_fast.evaluate TASK --help: the downstream tasks' evaluation")
    parser.add_argument("--ckpt", required=True, help="checkpoint folder (RUN_DIR/checkpoints/step_N) or run folder")
    parser.add_argument("--data", default=None,
                        help="val set: tar shard spec, folder of shards or .jsonl manifest (default: the data.val of "
                             "the checkpoint's config, i.e. the demo val split for demo runs)")
    parser.add_argument("--itm_k", type=int, default=0, help="re-rank each query's ITC top k with ITM (0 = off)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the run's data.batch_size")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    path = checkpoint.latest_checkpoint(args.ckpt) if checkpoint.list_checkpoints(args.ckpt) else args.ckpt
    if path is None:
        raise checkpoint.CheckpointError(f"no checkpoint in {args.ckpt}")
    checkpoint.verify(path)
    cfg = from_dict(Config, checkpoint.load_config(path))
    data_cfg = cfg.data
    overrides: dict[str, Any] = {"num_workers": 0}
    if args.data is not None:
        overrides |= {"val": args.data, "train": args.data}  # train set so the spec is not taken for the demo
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    data_cfg = from_dict(type(data_cfg), overrides, base=data_cfg)
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model = SCLModel(cfg.model)
    model.load_state_dict(checkpoint.load_weights(path))
    model.to(device).eval()
    parts = [embed(model, build_loader(data_cfg, "val"), device, keep_inputs=args.itm_k > 0)]
    result = {"checkpoint": str(path), "data": args.data or "demo val", "itm_k": args.itm_k}
    result |= evaluate_retrieval(model, parts, itm_k=args.itm_k, device=device, pad_id=cfg.model.text.pad_token_id)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    run_cli(main)
