"""Downstream examples through the pre-training data pipeline: JSONL manifests in, labelled batches out.

A task's reader yields :class:`~scl_fast.finetune.formats.Example` records; this module writes their media and texts
as the JSONL manifest the pre-training loader reads (``{"image"|"video": path, "caption": text}``, one line per
example, in the examples' order) and runs that loader (``scl_fast.data.Loader``) over it. So fine-tuning gets the
same workers, decoders (DALI or PIL/PyAV), augmentation, bad-input ledger, rank alignment and resumable position as
pre-training. The loader names a manifest sample ``line<N>``; that is how a batch row finds its example (and the
task its label). NLVR2's two images per statement are two parallel manifests read by two loaders with the same
seed, so both deal their samples in the same order; their batches are joined by key (a sample one of them skipped
drops the pair) and the images stacked as two frames: ``pixels`` (B, 2, 3, H, W); a training batch short of pairs
is padded to B rows, as pre-training's are.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import zip_longest

import torch

from scl_fast.data import Batch, DataConfig, Loader, Stats

from .formats import Example, media_kind

LabelFn = Callable[[list[int]], "torch.Tensor | None"]
PAD_LABEL = -100  # the integer label of a padding row: F.cross_entropy's default ignore_index


@dataclass
class LabelledBatch(Batch):
    """A loader batch with the examples it holds and their targets."""

    rows: torch.Tensor = None  # type: ignore[assignment]  # int64 (B,) index of each row's example (on the CPU)
    labels: torch.Tensor | None = None  # the task's targets for these rows (label_fn), moved with the batch

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelledBatch:
        moved = super().to(device, non_blocking)
        labels = None if self.labels is None else self.labels.to(device, non_blocking=non_blocking)
        return replace(moved, labels=labels)


def example_row(key: str) -> int:
    """The example index of a manifest sample's key (``line<N>``, N counted from 1)."""
    return int(key[4:]) - 1


def write_manifest(examples: Sequence[Example], slot: int, folder: str) -> str:
    """The manifest of the ``slot``-th medium of every example, named by its content (the same examples give the
    same file, reused; a changed dataset gets a new one). Written atomically: every rank may write it at once."""
    lines = []
    for e in examples:
        path = e.media[slot]
        lines.append(json.dumps({media_kind(path): path, "caption": e.text}, ensure_ascii=False))
    content = ("\n".join(lines) + "\n").encode("utf-8")
    path = os.path.join(folder, hashlib.sha1(content).hexdigest()[:20] + ".jsonl")
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    return path


class ExampleLoader:
    """Batches of ``examples`` from the pre-training loader, with rows and labels; the trainer's loader interface
    (iteration, ``state_dict``/``load_state_dict``, ``stats``, ``ordered``, ``at_global_boundary``).

    Args:
        examples: what to load; every example has the same number of media (1, or 2 for NLVR2).
        cfg: the data section (decoder, batch size, workers, augmentation).
        train: shuffled, augmented, endless, whole batches (pre-training's training split); else one ordered pass.
        label_fn: the targets of a list of example indices (None: the batch carries none).
        reader_stats: what the reader skipped, reported with the loader's own counts (give it to one rank only).
        pad_id: the text padding id (NLVR2's joined batches re-pad rows that came from different batches).
    """

    def __init__(self, examples: Sequence[Example], cfg: DataConfig, *, train: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, label_fn: LabelFn | None = None,
                 reader_stats: Stats | None = None, pad_id: int = 0) -> None:
        if not examples:
            raise ValueError("no examples to load")
        self.examples, self.cfg, self.label_fn, self.pad_id, self.train = examples, cfg, label_fn, pad_id, train
        self.reader_stats = reader_stats or Stats()
        folder = os.path.join(cfg.cache_dir, "finetune-manifests")
        self.loaders = [Loader(cfg, write_manifest(examples, slot, folder), train=train, rank=rank,
                               world_size=world_size, seed=seed, epochs=None if train else 1, drop_last=train)
                        for slot in range(len(examples[0].media))]
        self.paired = 0  # NLVR2: pairs delivered, for ``stats``

    def __iter__(self) -> Iterator[LabelledBatch]:
        if len(self.loaders) == 1:
            for batch in self.loaders[0]:
                yield self._labelled(batch)
        else:
            yield from self._joined()

    def _labelled(self, batch: Batch) -> LabelledBatch:
        """Rows and labels of ``batch``. The training loader pads a batch short of rows (bad samples) with blank
        rows (key ``""``, ``valid`` False): their row is -1 and their label :data:`PAD_LABEL` (integer targets,
        cross-entropy's ignore index) or 0, and the task's loss leaves them out."""
        rows = [example_row(k) if k else -1 for k in batch.keys]
        labels = None
        if self.label_fn is not None:
            real = [i for i, r in enumerate(rows) if r >= 0]
            got = self.label_fn([rows[i] for i in real])
            if len(real) == len(rows):
                labels = got
            else:
                fill = PAD_LABEL if not got.is_floating_point() else 0
                labels = torch.full((len(rows), *got.shape[1:]), fill, dtype=got.dtype)
                labels[real] = got
        return LabelledBatch(**vars(batch), rows=torch.tensor(rows, dtype=torch.long), labels=labels)

    def _joined(self) -> Iterator[LabelledBatch]:
        """The loaders' batches joined by key: each key's rows once every loader has delivered it."""
        pending: list[dict[str, tuple[Batch, int]]] = [{} for _ in self.loaders]
        iterators = [iter(loader) for loader in self.loaders]
        try:
            for batches in zip_longest(*iterators):
                for store, batch in zip(pending, batches, strict=True):
                    if batch is not None:
                        store.update((k, (batch, i)) for i, k in enumerate(batch.keys) if k)  # "": padding
                ready = [k for k in pending[0] if all(k in store for store in pending[1:])]
                size = self.cfg.batch_size
                for chunk in (ready[i:i + size] for i in range(0, len(ready), size)):
                    self.paired += len(chunk)
                    batch = self._collate(chunk, pending)
                    if self.train:  # training's static shapes: B rows (a pair one loader skipped leaves a blank row)
                        batch = self.loaders[0].pad(batch, frames=len(self.loaders))
                    yield self._labelled(batch)
                for store in pending:
                    for k in ready:
                        del store[k]
        finally:
            for it in iterators:
                it.close()

    def _collate(self, keys: list[str], pending: list[dict[str, tuple[Batch, int]]]) -> Batch:
        """One batch of ``keys``: images stacked as frames in loader order, the first loader's text at the widest of
        the batches its rows come from (training: the loader's fixed width, so the shape stays static; evaluation:
        rows of two batches may have two widths)."""
        pixels = torch.stack([torch.cat([store[k][0].pixels[store[k][1]] for store in pending]) for k in keys])
        first = [pending[0][k] for k in keys]
        length = max(b.input_ids.shape[1] for b, _ in first)
        ids = torch.full((len(keys), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros(len(keys), length, dtype=torch.bool)
        special = torch.ones(len(keys), length, dtype=torch.bool)
        for row, (b, i) in enumerate(first):
            n = int(b.attention_mask[i].sum())
            ids[row, :n], attention[row, :n], special[row, :n] = (
                b.input_ids[i, :n], b.attention_mask[i, :n], b.special_mask[i, :n])
        return Batch(pixels, ids, attention, special, [b.captions[i] for b, i in first], list(keys))

    @property
    def stats(self) -> Stats:
        """The reader's skips plus the loaders' counts (NLVR2: ``good`` counts pairs)."""
        out = Stats()
        out.merge(self.reader_stats)
        for loader in self.loaders:
            out.merge(loader.stats)
        if len(self.loaders) > 1:
            out.good = self.reader_stats.good + self.paired
        return out

    @property
    def ordered(self) -> bool:
        """One loader: as pre-training's (a checkpoint resumes on another number of ranks); pairs: same layout."""
        return len(self.loaders) == 1 and self.loaders[0].ordered

    def at_global_boundary(self) -> bool:
        return self.loaders[0].at_global_boundary() if self.ordered else True

    def state_dict(self) -> dict:
        if len(self.loaders) == 1:
            return self.loaders[0].state_dict()
        first = self.loaders[0].state_dict()
        return {"num_workers": first["num_workers"], "batch_size": first["batch_size"], "paired": self.paired,
                "loaders": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        if len(self.loaders) == 1:
            self.loaders[0].load_state_dict(state)
            return
        for loader, part in zip(self.loaders, state["loaders"], strict=True):
            loader.load_state_dict(part)
        self.paired = int(state.get("paired", 0))
