"""The loader: workers read, validate and tokenise; pixels come from DALI in the main process or from the workers.

Worker side (torch DataLoader workers, one "slot" each across the world): shard reading, the shuffle buffer,
validation (cheap header probes), augmentation parameters, grouping by frame count, tokenisation, and with the host
decoder (``data.decoder``: PIL and PyAV, no DALI installed) the decoding and augmentation too. Main side: DALI
decoding (one thread pool per rank, on the GPU when there is one) in a background thread that runs
``data.prefetch_batches`` ahead of the trainer, the host fallback for batches DALI rejects, final counts. Each
worker batch carries the worker's position and its count deltas, and each decoded batch its decode counts; both
are applied when the trainer takes the batch, so the state the main process saves is exactly "what the trainer
has consumed".
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import math
import multiprocessing
import os
import queue
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scl_fast.errors import ConfigError
from scl_fast.preemption import worker_init

from . import host
from .config import DataConfig
from .dali import DaliPipelines, resolve_decoder, resolve_device
from .shards import Ledger, RawSample, Stats, expand_spec, parse_caption, read_manifest, read_tar
from .text import load_tokenizer
from .video import dali_decodes, decode_frames_pyav, probe_video, sample_frame_indices

log = logging.getLogger("scl_fast.data")

TINY_SIDE = 16
EXTREME_ASPECT = 4.0
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class Batch:
    """One batch: images only (F=1) or videos only (F=data.frames).

    Training batches have one shape per frame count (static shapes for compiled and graphed steps): B =
    ``data.batch_size`` rows, text padded to ``data.max_text_len``. A batch short of rows (bad samples skipped) is
    padded with blank rows that ``valid`` marks False (the model leaves them out of every loss); evaluation batches
    keep their real size and the longest caption's length.
    """

    pixels: torch.Tensor  # float32 (B, F, 3, H, W), CLIP-normalised
    input_ids: torch.Tensor  # int64 (B, L)
    attention_mask: torch.Tensor  # bool (B, L), True = real token
    special_mask: torch.Tensor  # bool (B, L), True for [CLS]/[SEP]/[PAD]
    captions: list[str]  # the text that was tokenised ("left"/"right" swapped for flipped samples)
    keys: list[str]
    valid: torch.Tensor | None = None  # bool (B,), False for padding rows; None = every row is a sample

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = {"non_blocking": non_blocking}
        return replace(self, pixels=self.pixels.to(device, **move), input_ids=self.input_ids.to(device, **move),
                       attention_mask=self.attention_mask.to(device, **move),
                       special_mask=self.special_mask.to(device, **move),
                       valid=None if self.valid is None else self.valid.to(device, **move))

    @property
    def padded(self) -> int:
        """Padding rows in the batch (known on the host: no device read)."""
        return 0 if self.valid is None else self.valid.numel() - len([k for k in self.keys if k])

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class _Prepared:
    """A validated sample with its augmentation decided, waiting in a group for its batch."""

    seq: int
    shard: str
    key: str
    caption: str
    frames: int  # F of its batch
    window: np.ndarray  # float32 (4,) crop (y0, x0, h, w) relative to the decoded size
    flip: bool
    repairs: list[str]
    encoded: np.ndarray | None = None  # uint8 bytes for DALI
    indices: np.ndarray | None = None  # int32 (F,) frame indices (DALI video)
    decoded: np.ndarray | None = None  # uint8 (F, H, W, 3) decoded on the host, for DALI to augment (PyAV fallback)
    pixels: np.ndarray | None = None  # uint8 (F, S, S, 3) decoded and augmented in the worker (host decoder)


@dataclass
class _WorkerBatch:
    """What a worker sends: samples + tokens + where the worker stands after it + count deltas."""

    worker: int
    position: dict  # {"epoch", "seq", "pending"}: resume point after this item is consumed
    stats: Stats
    samples: list[_Prepared] = field(default_factory=list)
    tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    frames: int | None = None  # the frame count of a batch (None: a position marker, not a batch)


def _identity(x):
    return x


def rrc_window(h: int, w: int, rng: np.random.Generator, min_area: float) -> np.ndarray:
    """RandomResizedCrop's window (area in [min_area, 1], aspect in [3/4, 4/3]) as relative (y0, x0, h, w).

    After 10 failed draws (very long or tall images) it takes the largest centred window whose aspect is in
    range, the same fallback as torchvision.
    """
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        area = h * w * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if cw <= w and ch <= h:
            y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
            return np.array([y0 / h, x0 / w, ch / h, cw / w], dtype=np.float32)
    ratio = min(max(w / h, CROP_RATIO[0]), CROP_RATIO[1])
    cw, ch = (w, w / ratio) if w / h < ratio else (h * ratio, h)
    return np.array([(h - ch) / 2 / h, (w - cw) / 2 / w, ch / h, cw / w], dtype=np.float32)


def center_window(h: int, w: int) -> np.ndarray:
    """Largest centred square (evaluation: resize-shorter-side + centre-crop in one step)."""
    side = min(h, w)
    return np.array([(h - side) / 2 / h, (w - side) / 2 / w, side / h, side / w], dtype=np.float32)


def _swap_left_right(text: str) -> str:
    words = text.split(" ")
    return " ".join({"left": "right", "right": "left"}.get(word, word) for word in words)


def _shuffled(items: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """Streaming shuffle with a buffer of ``size`` samples (WebDataset style)."""
    buffer: list[RawSample] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class _SampleStream(IterableDataset):
    """Worker side. One instance is copied into every worker; ``slot`` = rank * workers + worker id.

    Sharding: with at least as many shards as slots, slot s reads shards s, s + slots, ... of the epoch's shard
    order (shuffled per epoch for training); with fewer shards (and for manifests) every slot reads everything
    and keeps every slots-th sample. Either way one epoch sees every sample once across the world.

    Aligned (multi-rank training, ``data.align_ranks``): every slot reads and shuffles the same stream and keeps
    every slots-th sample *of each kind*; all slots emit a kind's batch at the same point of the stream, so the
    k-th batch of worker w has the same frame count on every rank (and batch_size samples unless some were bad).
    The remainder of each kind at the end of an epoch is dropped (drop_last), on every rank alike.
    """

    def __init__(self, cfg: DataConfig, spec: str, *, train: bool, device: str, decoder: str, rank: int,
                 world_size: int, seed: int, epochs: int | None, drop_last: bool, resume: dict, first_worker: int,
                 capability: tuple[int, int] | None = None) -> None:
        self.cfg, self.train, self.device, self.decoder = cfg, train, device, decoder
        self.capability = capability  # the GPU's compute capability, read in the main process (workers have no CUDA)
        # One sample order for every number of ranks and workers (see DataConfig.align_ranks): where ranks must agree
        # step by step, and what lets a run resume on another number of ranks without repeating or skipping samples.
        self.aligned = cfg.align_ranks and train and drop_last
        self.source = expand_spec(spec)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epochs, self.drop_last = epochs, drop_last
        self.resume, self.first_worker = resume, first_worker

    def __iter__(self) -> Iterator[_WorkerBatch]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        slots, slot = self.world_size * workers, self.rank * workers + wid
        tokenizer = load_tokenizer(self.cfg.tokenizer, self.cfg.max_text_len)
        stats = Stats()
        ledger = Ledger(stats, self.cfg.strict)
        start = self.resume.get(wid, {"epoch": 0, "seq": 0, "pending": []})
        if wid < self.first_worker:  # keeps DataLoader's round-robin order identical to the interrupted run
            yield _WorkerBatch(wid, start, Stats())
        epoch = start["epoch"]
        global_batch = self.cfg.batch_size * slots
        while self.epochs is None or epoch < self.epochs:
            replay_to = start["seq"] if epoch == start["epoch"] else 0
            keep = set(start["pending"]) if epoch == start["epoch"] else set()
            # Aligned mode: the first skip[kind] samples of each kind were consumed before a resume on another layout
            # (``global_position``); the rest are dealt to this layout's slots from there.
            skip = {k: int(n) for k, n in start.get("skip", {}).items()} if epoch == start["epoch"] else {}
            groups: dict[int, list[_Prepared]] = {}
            seq = prepared = 0
            kinds: Counter = Counter()  # aligned mode: samples of each kind seen so far in the shared stream
            for raw in self._epoch_samples(epoch, slot, slots, ledger):
                seq += 1
                mine = True
                # Its batch kind: frame count (videos with data.frames == 1 batch with images), None = no media.
                key = None if raw.kind is None else 1 if raw.kind == "image" else self.cfg.frames
                if self.aligned:  # every slot reads the same stream; kind k's n-th sample belongs to slot n % slots
                    index = kinds[key] - skip.get(str(key), 0)
                    mine = index >= 0 and index % slots == slot
                    kinds[key] += 1
                # Replaying up to a restored position: only the samples then waiting in a group are rebuilt.
                redo = seq > replay_to or seq - 1 in keep
                sample = self._prepare(raw, seq - 1, epoch, ledger) if mine and redo else None
                if seq == replay_to:
                    stats.take()  # counted before the checkpoint: already in the restored stats
                if sample is not None:
                    prepared += 1
                    groups.setdefault(sample.frames, []).append(sample)
                if self.aligned:
                    # Every slot got exactly batch_size of the last batch_size * slots samples of this kind (fewer
                    # if some were bad): all slots emit here, at the same point of the shared stream, so every
                    # rank's k-th batch has the same frame count.
                    if key is not None and index >= 0 and (index + 1) % global_batch == 0:
                        # emitted even when every sample of this slot's share was bad: the main process pads it, and
                        # every rank still gets a batch of this frame count at this step (not while replaying up to a
                        # restored position: those batches were consumed before the checkpoint)
                        group, groups[key] = groups.get(key, []), []
                        if seq > replay_to:
                            yield self._emit(wid, group, tokenizer, stats, epoch, seq, groups, kinds, skip, key)
                elif sample is not None and len(groups[sample.frames]) == self.cfg.batch_size:
                    group, groups[sample.frames] = groups[sample.frames], []
                    yield self._emit(wid, group, tokenizer, stats, epoch, seq, groups, kinds, skip, sample.frames)
            if self.aligned and slot == 0 and epoch == start["epoch"]:
                for key, n in sorted((k, n) for k, n in kinds.items() if k is not None):
                    if n < self.cfg.batch_size * slots:
                        log.warning("data: only %d samples with %d frame(s) per epoch, fewer than batch_size x ranks "
                                    "x workers = %d: rank-aligned batching never uses them", n, key,
                                    self.cfg.batch_size * slots)
            if not self.drop_last:
                for frames in sorted(groups):
                    if groups[frames]:
                        group, groups[frames] = groups[frames], []
                        yield self._emit(wid, group, tokenizer, stats, epoch, seq, groups, kinds, skip, frames)
            epoch += 1
            yield _WorkerBatch(wid, {"epoch": epoch, "seq": 0, "pending": []}, stats.take())
            if prepared == 0 and self.epochs is None:
                return  # nothing usable in this slot: looping forever would never yield a batch

    def _emit(self, wid: int, group: list[_Prepared], tokenizer, stats: Stats, epoch: int, seq: int,
              groups: dict[int, list[_Prepared]], kinds: Counter, skip: dict[str, int], frames: int) -> _WorkerBatch:
        pending = sorted(s.seq for g in groups.values() for s in g)
        # training: one text length for every batch (static shapes); evaluation: the longest caption's
        tokens = tokenizer.encode_batch([s.caption for s in group], fixed_length=self.train) if group else None
        position = {"epoch": epoch, "seq": seq, "pending": pending,
                    "kinds": {str(k): n for k, n in kinds.items()}, "skip": dict(skip)}
        return _WorkerBatch(wid, position, stats.take(), group, tokens, frames)

    def _epoch_samples(self, epoch: int, slot: int, slots: int, ledger: Ledger) -> Iterator[RawSample]:
        kind, paths = self.source
        if kind == "manifest":
            owner = lambda i: i % slots == slot  # noqa: E731
            raws = (read_manifest(paths[0], ledger, lambda i: True, owner) if self.aligned
                    else read_manifest(paths[0], ledger, owner))
        else:
            order = list(paths)
            if self.train:
                np.random.default_rng([self.seed, epoch]).shuffle(order)
            if self.aligned:  # the whole stream in every slot; shard-level counts by the shard's owner only
                raws = chain.from_iterable(read_tar(p, ledger if j % slots == slot else None)
                                           for j, p in enumerate(order))
            elif len(order) >= slots:
                raws = chain.from_iterable(read_tar(p, ledger) for p in order[slot::slots])
            else:  # shard-level counts only in the slot that owns the shard's index, so they count once
                every = chain.from_iterable(read_tar(p, ledger if j % slots == slot else None)
                                            for j, p in enumerate(order))
                raws = (s for i, s in enumerate(every) if i % slots == slot)
        if self.train and self.cfg.shuffle_buffer > 1:
            # Aligned slots shuffle the shared stream identically (no slot in the seed), so they stay in step.
            rng = np.random.default_rng([self.seed, epoch, 1] if self.aligned else [self.seed, epoch, slot, 1])
            raws = _shuffled(raws, self.cfg.shuffle_buffer, rng)
        return raws

    def _prepare(self, raw: RawSample, seq: int, epoch: int, ledger: Ledger) -> _Prepared | None:
        """Validate one sample and decide its augmentation, or report why it is skipped and return None."""
        if raw.kind is None or raw.load_media is None:
            ledger.skip(raw.shard, raw.key, "missing_media", raw.missing_file or "")
            return None
        caption = parse_caption(raw, ledger)
        if caption is None:
            return None
        data = raw.load_media()
        if not data:
            ledger.skip(raw.shard, raw.key, "empty_media")
            return None
        # Keyed by the shard's file name, not its path: the same data in another folder (a fresh clone, another cache
        # directory) must get the same crops and flips, or two runs with the same seed train on different pixels.
        shard_name = os.path.basename(raw.shard)
        rng = (np.random.default_rng([self.seed, epoch, zlib.crc32(shard_name.encode()), zlib.crc32(raw.key.encode())])
               if self.train else None)
        flip = bool(rng is not None and self.cfg.hflip and rng.random() < 0.5)
        if flip and self.cfg.flip_swaps_left_right:
            caption = _swap_left_right(caption)
        repairs: list[str] = []
        encoded = np.frombuffer(data, dtype=np.uint8)
        if raw.kind == "image":
            try:
                with Image.open(io.BytesIO(data)) as im:
                    (w, h), mode = im.size, im.mode
            except Exception as e:  # PIL raises many types for garbage headers
                ledger.skip(raw.shard, raw.key, "corrupt_image", f"{type(e).__name__}: {e}")
                return None
            if mode != "RGB":
                repairs.append("converted_to_rgb")
            window = self._window(h, w, rng, repairs)
            sample = _Prepared(seq, raw.shard, raw.key, caption, 1, window, flip, repairs)
            if self.decoder == "dali":
                sample.encoded = encoded
                return sample
            try:
                frames = host.decode_image(data)
            except Exception as e:  # PIL raises many types on a broken body behind a valid header
                ledger.skip(raw.shard, raw.key, "corrupt_image", f"{type(e).__name__}: {e}")
                return None
            sample.pixels = host.augment(frames, window, flip, self.cfg.image_size)
            ledger.stats.info["pil"] += 1
            return sample
        try:
            info = probe_video(data)
        except ValueError as e:
            ledger.skip(raw.shard, raw.key, "corrupt_video", str(e))
            return None
        frames = self.cfg.frames
        if info.frames < frames:
            repairs.append("short_video")
        indices = sample_frame_indices(info.frames, frames, rng)
        window = self._window(info.height, info.width, rng, repairs)
        sample = _Prepared(seq, raw.shard, raw.key, caption, frames, window, flip, repairs)
        if self.decoder == "dali" and dali_decodes(info, self.device, self.capability):
            sample.encoded, sample.indices = encoded, indices
            return sample
        try:
            decoded = decode_frames_pyav(data, indices)
        except ValueError as e:
            ledger.skip(raw.shard, raw.key, "corrupt_video", str(e))
            return None
        if self.decoder == "dali":
            sample.decoded = decoded
            ledger.stats.info["pyav_fallback"] += 1
        else:
            sample.pixels = host.augment(decoded, window, flip, self.cfg.image_size)
            ledger.stats.info["pyav"] += 1
        return sample

    def _window(self, h: int, w: int, rng: np.random.Generator | None, repairs: list[str]) -> np.ndarray:
        if min(h, w) < TINY_SIDE:
            repairs.append("tiny_image")
        if max(h, w) > EXTREME_ASPECT * min(h, w):
            repairs.append("extreme_aspect")
        if min(h, w) < TINY_SIDE:  # too few pixels to crop from: the whole image, upsampled
            return np.array([0, 0, 1, 1], dtype=np.float32)
        return rrc_window(h, w, rng, self.cfg.min_crop_area) if rng is not None else center_window(h, w)


class Decoder:
    """Main side: DALI decoding of worker batches, with a per-sample host fallback when DALI rejects a batch; with
    the host decoder only the normalisation of the workers' pixels."""

    def __init__(self, cfg: DataConfig, device: str, decoder: str) -> None:
        self.pipes = None
        if decoder == "dali":
            device_id = torch.cuda.current_device() if device == "gpu" else 0
            self.pipes = DaliPipelines(image_size=cfg.image_size, batch_size=cfg.batch_size, device=device,
                                       threads=cfg.dali_threads, device_id=device_id)
        # Its own counts: the decoder may run ahead of the consumer (prefetch thread), and the loader's stats
        # must say what was consumed, so each decode's counts travel with its batch (``take()``).
        self.ledger = Ledger(Stats(), cfg.strict)
        # A loader iterated again while an abandoned prefetch thread finishes its last batch: one DALI run at a time.
        self.lock = threading.Lock()

    def decode(self, wb: _WorkerBatch) -> Batch | None:
        samples = wb.samples
        if self.pipes is None:  # host decoder: the workers sent every sample as pixels
            pixels, kept = host_normalise(samples), list(range(len(samples)))
        else:
            pixels, kept = self._run_dali(samples)
        if not kept:
            return None
        for i in kept:
            for reason in samples[i].repairs:
                self.ledger.repair(samples[i].shard, samples[i].key, reason)
        self.ledger.stats.good += len(kept)
        ids, attention, special = (torch.from_numpy(t[kept]) for t in wb.tokens)
        return Batch(pixels, ids, attention, special,
                     [samples[i].caption for i in kept], [samples[i].key for i in kept])

    def _run_dali(self, samples: list[_Prepared]) -> tuple[torch.Tensor | None, list[int]]:
        """DALI's pixels for the samples it could decode, and their indices in ``samples``."""
        rows: list[torch.Tensor | None] = [None] * len(samples)
        to_dali = [i for i, s in enumerate(samples) if s.encoded is not None]
        host = [i for i, s in enumerate(samples) if s.decoded is not None]
        if to_dali:
            picked = [samples[i] for i in to_dali]
            kind = "videos" if picked[0].indices is not None else "images"
            inputs = {"enc": [s.encoded for s in picked]}
            if kind == "videos":
                inputs["idx"] = [s.indices for s in picked]
            try:
                out = self.pipes.run(kind, np.stack([s.window for s in picked]), np.array([s.flip for s in picked]),
                                     **inputs)
                for j, i in enumerate(to_dali):
                    rows[i] = out[j]
            except Exception as e:  # DALI raises RuntimeError/IndexError with the operator's message
                log.warning("data: DALI rejected a batch (%s); decoding its %d samples on the host",
                            str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__,
                            len(to_dali))
                self.ledger.stats.info["host_decode"] += len(to_dali)
                host += [i for i in to_dali if self._host_decode(samples[i], kind)]
        if host:
            host.sort()
            out = self.pipes.run("frames", np.stack([samples[i].window for i in host]),
                                 np.array([samples[i].flip for i in host]),
                                 frames=[samples[i].decoded for i in host])
            for j, i in enumerate(host):
                rows[i] = out[j]
        kept = [i for i, r in enumerate(rows) if r is not None]
        if not kept:
            return None, []
        if len(to_dali) == len(samples) == len(kept) and not host:
            return out, kept  # one DALI run, every row in order: no copy
        return torch.stack([rows[i] for i in kept]), kept

    def _host_decode(self, s: _Prepared, kind: str) -> bool:
        """Decode one sample with PIL/PyAV into ``s.decoded``; False (and counted) when it cannot be decoded."""
        data = s.encoded.tobytes()
        try:
            if kind == "images":
                s.decoded = host.decode_image(data)
            else:
                s.decoded = decode_frames_pyav(data, s.indices)
        except Exception as e:  # PIL/PyAV raise many types on corrupt payloads
            self.ledger.skip(s.shard, s.key, "corrupt_image" if kind == "images" else "corrupt_video",
                             f"{type(e).__name__}: {e}")
            return False
        return True


def host_normalise(samples: list[_Prepared]) -> torch.Tensor:
    """The workers' uint8 pixels of one batch -> float32 (B, F, 3, S, S)."""
    return host.normalise(torch.from_numpy(np.stack([s.pixels for s in samples])))


_DONE = object()
# Prefetch threads running now: stopped at interpreter exit, before the modules they use are torn down (a daemon
# thread still decoding then fails inside DALI and logs a spurious "DALI rejected a batch").
_PREFETCHERS: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_prefetchers() -> None:
    for stop, thread in list(_PREFETCHERS):
        stop.set()
        thread.join(timeout=5.0)


def _decode_inline(worker_batches: Iterator[_WorkerBatch], decoder: Decoder
                   ) -> Iterator[tuple[_WorkerBatch, Batch | None, Stats]]:
    """Decode each worker batch when the consumer asks for it; stop the loader workers when done, stopped or failed.

    Runs in the thread that iterates ``worker_batches``, so the workers are stopped by the thread that talks to them.
    """
    try:
        for wb in worker_batches:
            with decoder.lock:
                batch = decoder.decode(wb) if wb.samples else None
                decoded_stats = decoder.ledger.stats.take()
            yield wb, batch, decoded_stats
    finally:
        _stop_workers(worker_batches)


def _stop_workers(worker_batches: Iterator[_WorkerBatch]) -> None:
    """Stop torch's DataLoader workers now. Its iterator does this in ``__del__``, but after an error (strict mode)
    the traceback holds it in a reference cycle, the garbage collector finalises its queues first and every
    worker then waits out a 5 s join timeout (measured: 5.4 s for 2 workers)."""
    shutdown = getattr(worker_batches, "_shutdown_workers", None)  # torch's private API; absent for 0 workers
    if shutdown is not None:
        shutdown()


def _decode_ahead(worker_batches: Iterator[_WorkerBatch], decoder: Decoder, depth: int
                  ) -> Iterator[tuple[_WorkerBatch, Batch | None, Stats]]:
    """Decode up to ``depth`` batches ahead in a background thread; errors (strict mode too) reach the consumer.

    DALI's ``run`` and PyAV release the GIL, so decoding overlaps the consumer's training step. The thread
    stops when the consumer stops (closing this generator), within one batch.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in _decode_inline(worker_batches, decoder):
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there with its own traceback
            put(e)
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="scl-data-decode", daemon=True)
    _PREFETCHERS.add((stop, thread))
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)
        _PREFETCHERS.discard((stop, thread))


def worker_context() -> multiprocessing.context.BaseContext | None:
    """How the loader starts its DataLoader workers: forked from a fork server where the platform has one.

    A trainer is a threaded process (the decode-ahead thread, DALI's thread pool, the intra-op pool, gloo's and CUDA's
    threads), and a child forked from it inherits, in whatever state they were, the locks and buffers those threads
    were using at that instant: a worker can crash or hang at random. The fork server is a single-threaded process,
    started once per trainer with this module imported, so a worker still starts in milliseconds. (Python 3.14 made
    it the default on Linux for this reason.) Workers exit with the trainer (``preemption.worker_init``)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None  # Windows: torch's default (spawn)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class Loader:
    """Iterable of :class:`Batch` with a resumable position (``state_dict`` / ``load_state_dict``) and ``stats``."""

    def __init__(self, cfg: DataConfig, spec: str, *, train: bool, rank: int = 0, world_size: int = 1,
                 seed: int = 0, epochs: int | None = None, drop_last: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
        self.cfg, self.spec, self.train = cfg, spec, train
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epochs, self.drop_last = epochs, drop_last
        self.device = resolve_device(cfg.device)
        self.decoder = resolve_decoder(cfg.decoder)
        expand_spec(spec)  # fail early on a bad spec, in the caller's process
        self.stats = Stats()
        self._decoder: Decoder | None = None
        self._tokenizer = None  # for the text of padding rows, loaded when a batch first needs them
        self._positions: dict[int, dict] = {}
        self._last_worker: int | None = None

    @property
    def _workers(self) -> int:
        return max(1, self.cfg.num_workers)

    def __iter__(self) -> Iterator[Batch]:
        if self._decoder is None:
            self._decoder = Decoder(self.cfg, self.device, self.decoder)
        first = 0 if self._last_worker is None else (self._last_worker + 1) % self._workers
        stream = _SampleStream(self.cfg, self.spec, train=self.train, device=self.device, decoder=self.decoder,
                               rank=self.rank,
                               world_size=self.world_size, seed=self.seed, epochs=self.epochs,
                               drop_last=self.drop_last, resume=dict(self._positions), first_worker=first,
                               capability=torch.cuda.get_device_capability() if self.device == "gpu" else None)
        loader = DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
                            prefetch_factor=4 if self.cfg.num_workers else None,
                            multiprocessing_context=worker_context() if self.cfg.num_workers else None,
                            worker_init_fn=functools.partial(worker_init, trainer_pid=os.getpid()))
        # The iterator is made here, in the consumer's thread: making it draws the workers' base seed from torch's
        # global RNG, and the draw must not land at a random moment of the consumer's RNG stream.
        worker_batches = iter(loader)
        decoded = (_decode_ahead(worker_batches, self._decoder, self.cfg.prefetch_batches)
                   if self.cfg.prefetch_batches else _decode_inline(worker_batches, self._decoder))
        delivered = 0
        try:
            for wb, batch, decode_stats in decoded:
                # Position and counts change only here, when the consumer takes the batch: a checkpoint taken
                # between two batches resumes after the last one handed out, whatever the prefetch thread did.
                self._positions[wb.worker] = wb.position
                self._last_worker = wb.worker
                self.stats.merge(wb.stats)
                self.stats.merge(decode_stats)
                if wb.frames is not None and self.train and self.drop_last:  # training: B rows, always
                    batch = self.pad(batch, wb.frames)
                if batch is not None:
                    delivered += 1
                    yield batch
        finally:
            decoded.close()  # now, not at garbage collection: stops the prefetch thread and the workers
        self._positions, self._last_worker = {}, None  # finished: the next pass starts from the beginning
        if self.epochs is None:
            raise ConfigError(f"data {self.spec!r} has no usable samples for rank {self.rank} (stats: "
                             f"{self.stats.as_dict()})")
        if delivered == 0:
            log.warning("data: %r yielded no batch (stats: %s)", self.spec, self.stats.as_dict())

    def pad(self, batch: Batch | None, frames: int) -> Batch:
        """``batch`` (or nothing, when every sample of a slot's share was bad) padded to ``data.batch_size`` rows
        with blank rows marked invalid (counted in ``stats.info["padded_rows"]``)."""
        missing = self.cfg.batch_size - (0 if batch is None else len(batch))
        if missing == 0:
            return batch
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.tokenizer, self.cfg.max_text_len)
        ids, attention, special = (torch.from_numpy(t) for t in
                                   self._tokenizer.padding_rows(missing, self.cfg.max_text_len))
        size = self.cfg.image_size
        device = None if batch is None else batch.pixels.device
        pad = Batch(torch.zeros(missing, frames, 3, size, size, device=device), ids, attention, special,
                    [""] * missing, [""] * missing, torch.zeros(missing, dtype=torch.bool))
        self.stats.info["padded_rows"] += missing
        if batch is None:
            return pad
        return Batch(torch.cat([batch.pixels, pad.pixels]), torch.cat([batch.input_ids, ids]),
                     torch.cat([batch.attention_mask, attention]), torch.cat([batch.special_mask, special]),
                     batch.captions + pad.captions, batch.keys + pad.keys,
                     torch.cat([torch.ones(len(batch), dtype=torch.bool), pad.valid]))

    @property
    def ordered(self) -> bool:
        """Training with ``data.align_ranks``: one sample order whatever the number of ranks and workers, so the
        position can move to another layout (:func:`global_position`)."""
        return self.cfg.align_ranks and self.train and self.drop_last

    def at_global_boundary(self) -> bool:
        """Whether every worker has handed out batches up to the same point of the shared stream, so that what all
        ranks consumed is a whole number of global batches: where :func:`global_position` applies."""
        if not self._positions:
            return True
        marks = {(p["epoch"], p["seq"]) for p in self._positions.values()}
        return len(self._positions) == self._workers and len(marks) == 1

    def state_dict(self) -> dict:
        """Position after the last batch handed out, plus the counts so far (plain Python: JSON/torch.save-able)."""
        return {"version": 1, "spec": self.spec, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self._workers, "seed": self.seed, "batch_size": self.cfg.batch_size,
                "ordered": self.ordered, "positions": {str(k): v for k, v in self._positions.items()},
                "last_worker": self._last_worker, "stats": self.stats.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by a loader of the same layout, or a :func:`global_position` of any layout."""
        if state.get("global"):
            self._load_global(state)
            return
        for name, mine in (("world_size", self.world_size), ("num_workers", self._workers), ("seed", self.seed)):
            if state.get(name) != mine:
                raise ConfigError(f"data state was saved with {name}={state.get(name)!r}, this loader has {mine!r}")
        self._positions = {int(k): dict(v) for k, v in state["positions"].items()}
        self._last_worker = state["last_worker"]
        self.stats = Stats.from_dict(state["stats"])

    def _load_global(self, state: dict) -> None:
        if not self.ordered:
            raise ConfigError("a data position saved on another number of ranks or workers needs data.align_ranks")
        for name, mine in (("spec", self.spec), ("seed", self.seed)):
            if state[name] != mine:
                raise ConfigError(f"data state was saved with {name}={state[name]!r}, this loader has {mine!r}")
        start = {"epoch": state["epoch"], "seq": 0, "pending": [], "skip": dict(state["consumed"])}
        self._positions = {w: dict(start) for w in range(self._workers)}
        self._last_worker = self._workers - 1  # the next batch comes from worker 0, as in a fresh pass
        self.stats = Stats.from_dict(state["stats"])


def global_position(rank_states: list[dict]) -> dict:
    """The data position of a whole world as the number of samples of each kind consumed in the current epoch,
    from every rank's ``Loader.state_dict()``. A loader of any layout continues from it
    (``load_state_dict``) with no sample seen twice or skipped; it holds every rank's counts (give them to one
    rank only).

    Raises:
        ConfigError: the loaders were not ordered (``data.align_ranks`` off), or their workers had not handed out
            batches up to the same point (a step that is not at a global-batch boundary, ``at_global_boundary``).
    """
    first = rank_states[0]
    if not all(s.get("ordered") for s in rank_states):
        raise ConfigError("this data position cannot move to another number of ranks or workers: it was saved "
                          "without data.align_ranks")
    layout = len(rank_states) * first["num_workers"]
    global_batch = first["batch_size"] * layout
    positions = [p for s in rank_states for p in s["positions"].values()]
    epoch, consumed = 0, {}
    if positions:
        marks = {(p["epoch"], p["seq"]) for p in positions}
        if len(positions) != layout or len(marks) != 1:
            raise ConfigError(f"the data position is not at a global-batch boundary of its {len(rank_states)} rank(s) "
                              f"x {first['num_workers']} loader worker(s): resume it with that layout, or from a "
                              f"checkpoint written at a boundary (SIGTERM, SIGINT and SIGUSR1 checkpoints are)")
        epoch = positions[0]["epoch"]
        skip, kinds = positions[0].get("skip", {}), positions[0].get("kinds", {})
        for key in set(skip) | set(kinds):
            done, seen = int(skip.get(key, 0)), int(kinds.get(key, 0))
            # whole global batches of this kind emitted since the epoch's start (or the last move); a partial one
            # was never handed out
            consumed[key] = done + max(0, seen - done) // global_batch * global_batch
    stats = Stats()
    for s in rank_states:
        stats.merge(Stats.from_dict(s["stats"]))
    return {"global": True, "spec": first["spec"], "seed": first["seed"], "epoch": epoch, "consumed": consumed,
            "stats": stats.as_dict()}


def build_loader(cfg: DataConfig, split: Literal["train", "val"], *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, epochs: int | None = None, drop_last: bool | None = None) -> Loader:
    """The loader for ``split``.

    Train: shuffled, augmented, ``epochs=None`` loops forever, ``drop_last`` defaults to True. Val: shard order,
    centre crop, one pass (``epochs=None`` means 1), every sample exactly once (``drop_last`` defaults to False).
    With ``cfg.train`` None both splits come from the demo corpus, written to ``cfg.cache_dir`` on first use.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    spec = cfg.train if split == "train" else cfg.val
    if spec is None:
        if cfg.train is not None:
            raise ConfigError("data.val is not set (a val split comes from the demo corpus only when data.train "
                             "is None too)")
        from .demo import ensure_demo_corpus

        spec = ensure_demo_corpus(cfg.cache_dir, train_images=cfg.demo_train_images,
                                  train_videos=cfg.demo_train_videos, val_images=cfg.demo_val_images,
                                  val_videos=cfg.demo_val_videos)[split]
    train = split == "train"
    return Loader(cfg, spec, train=train, rank=rank, world_size=world_size, seed=seed,
                  epochs=epochs if (train or epochs is not None) else 1,
                  drop_last=train if drop_last is None else drop_last)
