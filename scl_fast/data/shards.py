"""Reading raw samples: shard specs, WebDataset tar shards, JSONL manifests, and the bad-sample ledger.

Nothing here decodes media; it yields encoded bytes plus caption bytes, so the reader is cheap enough to
replay when a saved data position is restored.

Bad input never stops a run. Each case is either skipped (counted in ``Stats.bad`` by reason) or repaired
(delivered, counted in ``Stats.repaired``); the first few of each reason are logged. ``data.strict`` turns a
skip into :class:`BadSampleError` naming the shard and the key; repairs are not errors (grayscale and CMYK
images are common in COCO-style sets). Issue 5's cases, as ``tests/data/test_bad_input.py`` checks them:

=============================================  ========  ====================================================
case                                           outcome   reason
=============================================  ========  ====================================================
corrupt JPEG (bad header)                      skipped   ``corrupt_image`` (header probe in the worker)
corrupt JPEG (valid header, broken body)       skipped   ``corrupt_image`` (DALI rejects the batch; the
                                                         batch is re-decoded on the host, the rest kept)
truncated video, no readable frame             skipped   ``corrupt_video``
truncated video, some frames readable          repaired  frames kept; ``short_video`` if fewer than F remain
zero-byte image or video                       skipped   ``empty_media``
missing media (no image/video member, unknown  skipped   ``missing_media``
extension, manifest file not found)
missing caption (no .txt/.json)                skipped   ``missing_caption``
non-UTF-8 caption (.txt or .json)              skipped   ``non_utf8_caption``
empty caption / .json without a caption key    skipped   ``empty_caption`` / ``bad_json``
grayscale, palette, CMYK, RGBA image           repaired  ``converted_to_rgb`` (decoded to RGB, alpha dropped)
1x1 (any side < 16 px) image                   repaired  ``tiny_image`` (whole image upsampled)
extreme aspect ratio (> 4:1)                   repaired  ``extreme_aspect`` (crop window inside the image with
                                                         aspect in [3/4, 4/3], as RandomResizedCrop's fallback)
video shorter than F frames                    repaired  ``short_video`` (frames repeated, in order)
truncated tar shard                            skipped   ``truncated_shard`` once per shard; samples before the
                                                         cut are kept, the one cut in half is dropped
missing or non-tar shard file                  skipped   ``unreadable_shard`` once per shard
=============================================  ========  ====================================================
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from scl_fast.errors import ConfigError, UserError

log = logging.getLogger("scl_fast.data")

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
VIDEO_EXTS = frozenset({"mp4", "webm", "mkv", "avi", "mov"})
CAPTION_EXTS = ("txt", "json")  # .txt wins when a sample has both (img2dataset writes both)
JSON_CAPTION_KEYS = ("caption", "text", "txt")

# Why a sample is dropped (SKIPPED) or changed (REPAIRED). Documented in the README's bad-input table.
SKIPPED = {
    "missing_media": "no image/video member in the tar, or the manifest's file does not exist",
    "missing_caption": "no .txt/.json member, or no caption field in the manifest line",
    "empty_caption": "caption is empty or whitespace",
    "non_utf8_caption": "caption bytes are not UTF-8",
    "bad_json": ".json caption or manifest line is not valid JSON or has no caption key",
    "empty_media": "zero-byte image or video",
    "corrupt_image": "image that neither DALI nor PIL can decode",
    "corrupt_video": "video with no readable container, video stream or decodable frame",
    "truncated_shard": "tar shard ends mid-archive (counted once per shard; the sample cut in half is dropped)",
    "unreadable_shard": "shard file missing or not a tar (counted once per shard)",
    # fine-tuning readers (scl_fast/finetune/formats): what a labelled example can lack
    "unknown_answer": "VQA training question none of whose answers is in the answer vocabulary",
    "bad_label": "fine-tuning example without a usable label (a question without its annotation, an NLVR2 label "
                 "other than True/False, a record missing a field)",
}
REPAIRED = {
    "converted_to_rgb": "grayscale, palette, CMYK, 16-bit or RGBA image decoded to RGB (alpha dropped)",
    "tiny_image": "image side < 16 px, upsampled to the crop size",
    "extreme_aspect": "aspect ratio > 4:1, cropped to its centre (aspect <= 4:3) before resizing",
    "short_video": "video with fewer frames than data.frames, frames repeated",
}


class BadSampleError(UserError, ValueError):
    """A sample was rejected while ``strict`` is on. The message names the shard, the key and the reason."""


@dataclass
class Stats:
    """Counts of what happened to the samples read so far.

    ``good`` = samples delivered in batches (repaired ones included); ``bad`` = skipped samples by reason;
    ``repaired`` = delivered samples that needed a repair, by reason; ``info`` = decoding paths taken
    (``pyav_fallback``: video decoded by PyAV because DALI cannot decode its codec on this device;
    ``host_decode``: samples of a batch DALI rejected, re-decoded one by one with PIL/PyAV; ``pil`` / ``pyav``:
    images / videos read by the host decoder, ``data.decoder host``; ``padded_rows``: blank rows added to training
    batches short of samples, so that every step has the same shape).
    """

    good: int = 0
    bad: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    info: Counter = field(default_factory=Counter)

    def merge(self, other: Stats) -> None:
        self.good += other.good
        self.bad.update(other.bad)
        self.repaired.update(other.repaired)
        self.info.update(other.info)

    def take(self) -> Stats:
        """Return the counts so far and reset them (a delta to ship from a worker with its batch)."""
        delta = Stats(self.good, self.bad, self.repaired, self.info)
        self.good, self.bad, self.repaired, self.info = 0, Counter(), Counter(), Counter()
        return delta

    def empty(self) -> bool:
        return not (self.good or self.bad or self.repaired or self.info)

    def as_dict(self) -> dict:
        return {"good": self.good, "bad": dict(sorted(self.bad.items())),
                "repaired": dict(sorted(self.repaired.items())), "info": dict(sorted(self.info.items()))}

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        return cls(int(d["good"]), Counter(d["bad"]), Counter(d["repaired"]), Counter(d["info"]))


class Ledger:
    """Where a sample's problems are reported: counted, logged (first few per reason), or raised in strict mode."""

    LOG_FIRST = 5

    def __init__(self, stats: Stats, strict: bool) -> None:
        self.stats = stats
        self.strict = strict
        self._logged: Counter = Counter()

    def skip(self, shard: str, key: str, reason: str, detail: str = "") -> None:
        if reason not in SKIPPED:
            raise ValueError(f"unknown skip reason {reason!r}")
        message = f"shard {shard!r} key {key!r}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise BadSampleError(f"bad sample: {message}")
        self.stats.bad[reason] += 1
        self._log("skipped", reason, message)

    def repair(self, shard: str, key: str, reason: str) -> None:
        if reason not in REPAIRED:
            raise ValueError(f"unknown repair reason {reason!r}")
        self.stats.repaired[reason] += 1
        self._log("repaired", reason, f"shard {shard!r} key {key!r}: {reason}")

    def _log(self, what: str, reason: str, message: str) -> None:
        self._logged[reason] += 1
        if self._logged[reason] <= self.LOG_FIRST:
            suffix = " (further ones counted, not logged)" if self._logged[reason] == self.LOG_FIRST else ""
            log.warning("data: %s %s%s", what, message, suffix)


@dataclass
class RawSample:
    """One sample before decoding. ``media`` is loaded lazily for manifests (skipped samples cost no read)."""

    shard: str
    key: str
    kind: str | None  # "image" | "video" | None (missing media)
    load_media: Callable[[], bytes] | None
    caption: bytes | None  # raw caption bytes (.txt) or None
    caption_json: bytes | None = None  # raw .json bytes, parsed only if there is no .txt
    missing_file: str | None = None  # manifest path that does not exist


# ---------------------------------------------------------------------------------------------- specs


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{00000..00099}`` numeric ranges (zero padding kept) and ``{a,b}`` lists, left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        if int(hi) < int(lo):
            raise ConfigError(f"empty brace range {{{body}}} in {pattern!r}")
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [p for choice in choices for p in expand_braces(head + choice + tail)]


def expand_spec(spec: str) -> tuple[str, list[str]]:
    """Resolve a data spec to ``("tar", shard paths)`` or ``("manifest", [path])``.

    Forms: a brace pattern of tar shards, several specs separated by ``::``, a folder (its ``*.tar``), or a
    ``.jsonl`` manifest.
    """
    if not spec or not spec.strip():
        raise ConfigError(f"empty data spec: {spec!r}")
    if spec.endswith(".jsonl"):
        if not os.path.isfile(spec):
            raise ConfigError(f"manifest not found: {spec!r}")
        return "manifest", [spec]
    paths: list[str] = []
    for part in spec.split("::"):
        if os.path.isdir(part):
            found = sorted(os.path.join(part, n) for n in os.listdir(part) if n.endswith(".tar"))
            if not found:
                raise ConfigError(f"no .tar shards in folder {part!r}")
            paths.extend(found)
        else:
            paths.extend(expand_braces(part))
    return "tar", paths


# ---------------------------------------------------------------------------------------------- readers


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the file name, extension = the rest."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), (ext.lower() if dot else "")


def _group_to_sample(shard: str, key: str, members: dict[str, bytes]) -> RawSample:
    kind, data = None, None
    for ext, payload in members.items():
        last = ext.rsplit(".", 1)[-1]
        if last in VIDEO_EXTS or (last in IMAGE_EXTS and kind is None):
            kind, data = ("video" if last in VIDEO_EXTS else "image"), payload
    caption = next((members[e] for e in members if e.rsplit(".", 1)[-1] == "txt"), None)
    caption_json = next((members[e] for e in members if e.rsplit(".", 1)[-1] == "json"), None)
    return RawSample(shard, key, kind, (lambda d=data: d) if kind else None, caption, caption_json)


def read_tar(shard: str, ledger: Ledger | None) -> Iterator[RawSample]:
    """Yield the samples of one tar shard, grouping consecutive members by key.

    A missing/unreadable shard or a truncated one is reported to ``ledger`` (once per shard; None = the
    caller does not own this shard's shard-level counts) and ends the shard: what was read before is kept.
    """
    key, members = None, {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = _split_name(info.name)
                if k != key and key is not None:
                    yield _group_to_sample(shard, key, members)
                    members = {}
                key = k
                f = tar.extractfile(info)
                members[ext] = f.read() if f is not None else b""
                if len(members[ext]) != info.size:
                    raise tarfile.ReadError(f"member {info.name} truncated")
    except (tarfile.ReadError, EOFError, OSError) as e:
        truncated = key is not None and not isinstance(e, FileNotFoundError)
        if ledger is not None:
            ledger.skip(shard, key or "", "truncated_shard" if truncated else "unreadable_shard", str(e))
        return  # the group cut by the truncation is incomplete: dropped with the shard-level count
    if key is not None:
        yield _group_to_sample(shard, key, members)


def read_manifest(path: str, ledger: Ledger, select: Callable[[int], bool],
                  owns: Callable[[int], bool] | None = None) -> Iterator[RawSample]:
    """Yield the samples of a JSONL manifest (``{"image"|"video": path, "caption": str}``) that ``select`` keeps.

    Relative media paths are resolved against the manifest's folder; the key is the line number. ``owns`` (default:
    ``select``) says which unparsable lines this reader reports, so readers that share lines count them once.
    """
    owns = owns or select
    root = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        for lineno, line in enumerate(f):
            if not line.strip() or not select(lineno):
                continue
            key = f"line{lineno + 1}"
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError(f"expected an object, got {type(entry).__name__}")
            except (ValueError, UnicodeDecodeError) as e:
                if owns(lineno):
                    ledger.skip(path, key, "bad_json", str(e))
                continue
            kind = "video" if "video" in entry else "image" if "image" in entry else None
            caption = entry.get("caption")
            raw = caption.encode("utf-8", "surrogatepass") if isinstance(caption, str) else None
            if kind is None:
                yield RawSample(path, key, None, None, raw)
                continue
            media = os.path.join(root, str(entry[kind]))
            if not os.path.isfile(media):
                yield RawSample(path, key, kind, None, raw, missing_file=media)
                continue
            yield RawSample(path, key, kind, lambda m=media: _read_file(m), raw)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def parse_caption(sample: RawSample, ledger: Ledger) -> str | None:
    """The caption text, or None after reporting why it is unusable."""
    raw = sample.caption
    if raw is None and sample.caption_json is not None:
        try:
            sample.caption_json.decode("utf-8")
        except UnicodeDecodeError as e:
            ledger.skip(sample.shard, sample.key, "non_utf8_caption", str(e))
            return None
        try:
            obj = json.loads(sample.caption_json)
            raw = next(obj[k] for k in JSON_CAPTION_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str))
        except (ValueError, UnicodeDecodeError, StopIteration) as e:
            ledger.skip(sample.shard, sample.key, "bad_json", str(e) or "no caption key")
            return None
        raw = raw.encode("utf-8", "surrogatepass")
    if raw is None:
        ledger.skip(sample.shard, sample.key, "missing_caption")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        ledger.skip(sample.shard, sample.key, "non_utf8_caption", str(e))
        return None
    text = " ".join(text.split())
    if not text:
        ledger.skip(sample.shard, sample.key, "empty_caption")
        return None
    return text
