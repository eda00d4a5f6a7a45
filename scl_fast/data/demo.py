"""Synthetic demo corpus: coloured shapes (images) and moving shapes (VP9 WebM videos) with attribute captions.

Designed so that a tiny model measurably learns retrieval from pixels in minutes on a CPU: few attributes
(4 shapes x 6 colours x 5 positions x 2 sizes for images; 4 shapes x 6 colours x 4 directions x 2 speeds for
videos), each clearly visible at 64 px. Videos are VP9 so DALI's CPU decoder reads them. Output is
deterministic for a seed (fixed tar headers, bit-exact muxing) and written atomically.

    python -m scl_fast.data.demo --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable

import av
import numpy as np
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from scl_fast.errors import ConfigError, run_cli

VERSION = 1
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 220, 40),
           "purple": (160, 60, 210), "white": (245, 245, 245)}
POSITIONS = {"at the top left": (0.28, 0.28), "at the top right": (0.28, 0.72), "at the bottom left": (0.72, 0.28),
             "at the bottom right": (0.72, 0.72), "in the center": (0.5, 0.5)}  # (y, x) as fractions
SIZES = {"small": 0.11, "large": 0.2}  # radius as a fraction of the side
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
SPEEDS = {"slowly": 0.035, "quickly": 0.075}  # fraction of the side per frame
# Words of the demo's captions, and of the questions and statements of the fine-tuning demos, so each is one token.
WORDS = tuple(sorted({
    *SHAPES, *COLOURS, *SIZES, *DIRECTIONS, *SPEEDS, *(w for p in POSITIONS for w in p.split()), "a", "moving",
    "what", "which", "how", "many", "is", "are", "there", "does", "do", "it", "its", "the", "of", "and", "or", "both",
    "one", "two", "three", "four", "five", "six", "zero", "no", "yes", "same", "different", "colour", "color", "shape",
    "shapes", "size", "image", "images", "video", "videos", "move", "moves", "side", "way", "where", "than", "as",
    "more", "fewer", "bigger", "smaller", "larger", "left", "right", "has", "have", "contains", "contain", "an",
}))
DEMO_VOCAB_SIZE = 512
VIDEO_FRAMES = 8
SHARD_SIZE = 250
_COMPLETE = "corpus.json"


def demo_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer for the demo's closed vocabulary: every word of :data:`WORDS` is one token, anything
    else falls back to letters, digits and punctuation. BERT-uncased's normaliser and pre-tokeniser, and its ids for
    the special tokens ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), so every preset's text config fits it;
    ``DEMO_VOCAB_SIZE`` rows in all (the demo preset's ``text.vocab_size``), instead of BERT's 30,522 that a corpus of
    a few dozen words leaves untrained. Built here, so the demo needs no downloaded or packaged vocabulary.
    """
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [*"abcdefghijklmnopqrstuvwxyz0123456789", *".,;:!?'\"()-/&"]
    tokens = [*specials, *WORDS, *(c for c in chars if c not in WORDS), *(f"##{c}" for c in chars if c.isalnum())]
    tokens += [f"[unused{i}]" for i in range(99, 99 + DEMO_VOCAB_SIZE - len(tokens))]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])  # dropped by decode(skip_special_tokens)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    tok.decoder = decoders.WordPiece()
    return tok


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cy: float, cx: float, r: float, colour: tuple) -> None:
    """One filled shape of radius ``r`` centred at (cy, cx) pixels."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)


def canvas(size: int, rng: np.random.Generator) -> Image.Image:
    """Dark noisy background, so the model must find the shape rather than count coloured pixels."""
    base = rng.integers(20, 60)
    noise = rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def random_object(rng: np.random.Generator) -> dict[str, str]:
    """One shape's attributes: ``shape``, ``colour``, ``position`` (a key of POSITIONS) and ``size`` (of SIZES)."""
    shape, colour, position, scale = (rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(POSITIONS)),
                                      rng.choice(list(SIZES)))
    return {"shape": str(shape), "colour": str(colour), "position": str(position), "size": str(scale)}


def render_scene(rng: np.random.Generator, size: int, objects: list[dict[str, str]], fmt: str = "JPEG") -> bytes:
    """The objects (``random_object``'s attributes), each jittered around its position, on a noisy canvas; encoded
    as ``fmt`` (JPEG, or PNG as NLVR2's release ships)."""
    img = canvas(size, rng)
    for obj in objects:
        fy, fx = POSITIONS[obj["position"]]
        jitter = rng.uniform(-0.05, 0.05, 2) * size
        draw_shape(ImageDraw.Draw(img), obj["shape"], fy * size + jitter[0], fx * size + jitter[1],
                   SIZES[obj["size"]] * size, COLOURS[obj["colour"]])
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_image(rng: np.random.Generator, size: int) -> tuple[bytes, str]:
    obj = random_object(rng)
    return render_scene(rng, size, [obj]), f"a {obj['size']} {obj['colour']} {obj['shape']} {obj['position']}"


def random_motion(rng: np.random.Generator) -> dict[str, str]:
    """One moving shape's attributes: ``shape``, ``colour``, ``direction`` (of DIRECTIONS), ``speed`` (of SPEEDS)."""
    shape, colour, direction, speed = (rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(DIRECTIONS)),
                                       rng.choice(list(SPEEDS)))
    return {"shape": str(shape), "colour": str(colour), "direction": str(direction), "speed": str(speed)}


def render_clip(rng: np.random.Generator, size: int, motion: dict[str, str], frames: int = VIDEO_FRAMES,
                container_format: str = "webm") -> bytes:
    """``frames`` frames of the shape moving in a straight line, VP9 in ``container_format`` (webm, or mp4 as
    MSR-VTT ships); the start point is drawn from ``rng`` so the whole path stays inside the frame."""
    r = 0.14 * size
    dy, dx = DIRECTIONS[motion["direction"]]
    step = SPEEDS[motion["speed"]] * size
    travel = step * (frames - 1)
    # Start so the whole path stays inside the frame; the cross-axis position is random.
    along = rng.uniform(r + 1, size - r - 1 - travel)
    across = rng.uniform(r + 1, size - r - 1)
    y0, x0 = (across, along) if dy == 0 else (along, across)
    if dy < 0 or dx < 0:
        y0, x0 = (y0, size - x0) if dy == 0 else (size - y0, x0)
    background = canvas(size, rng)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=8, options={
            "deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0", "threads": "1", "lag-in-frames": "0"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for t in range(frames):
            img = background.copy()
            draw_shape(ImageDraw.Draw(img), motion["shape"], y0 + dy * step * t, x0 + dx * step * t, r,
                       COLOURS[motion["colour"]])
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def make_video(rng: np.random.Generator, size: int, frames: int = VIDEO_FRAMES) -> tuple[bytes, str]:
    m = random_motion(rng)
    return render_clip(rng, size, m, frames), f"a {m['colour']} {m['shape']} moving {m['direction']} {m['speed']}"


def write_shard(path: str, samples: list[tuple[str, str, bytes, str]]) -> None:
    """Write ``(key, media_ext, media, caption)`` samples in the img2dataset layout (``KEY.ext`` + ``KEY.txt``)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, ext, media, caption in samples:
            for name, payload in ((f"{key}.{ext}", media), (f"{key}.txt", caption.encode("utf-8"))):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))


def _write_split(out: str, split: str, images: int, videos: int, rng: np.random.Generator, size: int) -> str:
    kinds = np.array([0] * images + [1] * videos)
    rng.shuffle(kinds)  # images and videos mixed within shards, as a real mixed corpus would be
    shards = max(1, -(-len(kinds) // SHARD_SIZE))
    for s in range(shards):
        samples = []
        for i in range(s * SHARD_SIZE, min(len(kinds), (s + 1) * SHARD_SIZE)):
            media, caption = make_video(rng, size) if kinds[i] else make_image(rng, size)
            samples.append((f"{split}{i:06d}", "webm" if kinds[i] else "jpg", media, caption))
        write_shard(os.path.join(out, f"{split}-{s:05d}.tar"), samples)
    return os.path.join(out, f"{split}-{{00000..{shards - 1:05d}}}.tar")


def write_demo_corpus(out: str, *, train_images: int = 2000, train_videos: int = 400, val_images: int = 200,
                      val_videos: int = 100, size: int = 64, seed: int = 0) -> dict[str, str]:
    """Write the corpus into folder ``out`` (atomically: a temporary sibling folder renamed into place).

    Returns ``{"train": shard spec, "val": shard spec}``. If ``out`` already holds a complete corpus with the
    same parameters it is reused, so this is safe to call on every start.
    """
    params = {"version": VERSION, "train_images": train_images, "train_videos": train_videos,
              "val_images": val_images, "val_videos": val_videos, "size": size, "seed": seed}
    for name, value in params.items():
        if value < 0 or (name in ("size",) and value < 16):
            raise ValueError(f"demo corpus {name} must be {'>= 16' if name == 'size' else '>= 0'}, got {value}")
    if train_images + train_videos == 0 or val_images + val_videos == 0:
        raise ValueError(f"demo corpus needs samples in both splits, got {params}")

    def write(tmp: str) -> dict[str, str]:
        rng = np.random.default_rng(seed)
        return {"train": _write_split(tmp, "train", train_images, train_videos, rng, size),
                "val": _write_split(tmp, "val", val_images, val_videos, rng, size)}

    return write_once(out, params, write)


def write_once(out: str, params: dict, write: Callable[[str], dict[str, str]]) -> dict[str, str]:
    """Fill folder ``out`` with ``write(folder)`` exactly once, atomically: ``write`` fills a temporary sibling
    folder, which is renamed into place with a record of ``params`` and of what ``write`` returned (a dict of
    paths inside the folder, rebased onto ``out``). A folder that already holds a complete result with the same
    ``params`` is reused; concurrent callers (every rank of a job) all get the winner's result.
    """
    out = os.path.abspath(out)
    done = _read_complete(out)
    if done is not None:
        if done["params"] != params:
            raise ConfigError(f"{out} holds a demo corpus with other parameters {done['params']}, asked for {params}")
        return done["specs"]
    if os.path.isdir(out) and os.listdir(out):
        raise ConfigError(f"{out} exists, is not empty and holds no complete demo corpus; give an empty folder")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache should be readable
    try:
        specs = {k: v.replace(tmp, out) for k, v in write(tmp).items()}
        with open(os.path.join(tmp, _COMPLETE), "w", encoding="utf-8") as f:
            json.dump({"params": params, "specs": specs}, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above); os.rename cannot replace it otherwise
        os.rename(tmp, out)
    except OSError:
        done = _read_complete(out)  # another process won the race: use its corpus
        if done is None or done["params"] != params:
            raise
        return done["specs"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return specs


def ensure_demo_corpus(cache_dir: str, *, train_images: int = 2000, train_videos: int = 400, val_images: int = 200,
                       val_videos: int = 100, size: int = 64, seed: int = 0) -> dict[str, str]:
    """The demo corpus under ``cache_dir`` (one folder per parameter set), written on first use.

    Returns ``{"train": shard spec, "val": shard spec}``; idempotent and safe for concurrent callers.
    """
    params = dict(train_images=train_images, train_videos=train_videos, val_images=val_images,
                  val_videos=val_videos, size=size, seed=seed)
    digest = hashlib.sha1(json.dumps({"version": VERSION, **params}, sort_keys=True).encode()).hexdigest()[:10]
    return write_demo_corpus(os.path.join(cache_dir, f"demo-{digest}"), **params)


def _read_complete(out: str) -> dict | None:
    try:
        with open(os.path.join(out, _COMPLETE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (created; must be empty or a corpus)")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--train-videos", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--val-videos", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="side of images and video frames in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    specs = write_demo_corpus(args.out, train_images=args.train_images, train_videos=args.train_videos,
                              val_images=args.val_images, val_videos=args.val_videos, size=args.size, seed=args.seed)
    print(json.dumps({**specs, "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    run_cli(main)
