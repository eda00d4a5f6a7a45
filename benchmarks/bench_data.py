"""Data decode + augment throughput on the CPU: DALI's CPU pipeline against the host decoders it falls back to.

    pytest benchmarks/bench_data.py --benchmark-only

Groups (``extra_info`` holds images/s or clips/s):
* ``data images``: JPEG decode + crop + resize + flip + CLIP normalisation of demo-corpus images, DALI CPU vs
  PIL + torch (the loader's host fallback, ``pil_ref``).
* ``data videos``: 4 frames sampled from 8-frame VP9 clips, decode + the same augmentation, DALI CPU vs PyAV +
  torch (``pyav_ref``) and decord where it is installed.
* ``data loader``: the whole training loader (workers, shuffle, tokenise, DALI) as one endless stream.

Every case first checks its numerics: output shape (B, F, 3, S, S), float32, finite, inside the CLIP-normalised
range of [0, 255] pixels, and the DALI output within a few levels of the host path on the same crop windows, so
a fast wrong decoder fails instead of winning.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from benchmarks import torch_threads
from scl_fast.data import DataConfig, Loader
from scl_fast.data.dali import CLIP_MEAN, CLIP_STD, DaliPipelines
from scl_fast.data.demo import write_demo_corpus
from scl_fast.data.loader import center_window
from scl_fast.data.shards import read_tar
from scl_fast.data.video import decode_frames_pyav, probe_video, sample_frame_indices

SIZE = 64  # the demo preset's image size
FRAMES = 4
IMAGES, VIDEOS = 256, 64
IMAGE_BATCH, VIDEO_BATCH = 64, 16
THREADS = min(4, os.cpu_count() or 1)
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)
# Mean |DALI - host| over a batch, in 0..255 levels: resize filters and JPEG IDCTs differ slightly, a wrong
# crop, flip, channel order or normalisation costs tens of levels.
MAX_MEAN_LEVELS = 4.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A demo corpus written in a temporary folder, loaded into memory (encoded) with centre-crop windows."""
    specs = write_demo_corpus(str(tmp_path_factory.mktemp("bench") / "demo"), train_images=IMAGES,
                              train_videos=VIDEOS, val_images=8, val_videos=4, size=SIZE, seed=0)
    folder = os.path.dirname(specs["train"])
    images, videos = [], []
    for name in sorted(os.listdir(folder)):
        if name.startswith("train-"):
            for raw in read_tar(os.path.join(folder, name), None):
                (videos if raw.kind == "video" else images).append(raw.load_media())
    vinfo = [probe_video(v) for v in videos]
    return {
        "spec": specs["train"],
        "images": [np.frombuffer(b, np.uint8) for b in images],
        "image_windows": [center_window(SIZE, SIZE)] * len(images),
        "videos": [np.frombuffer(b, np.uint8) for b in videos],
        "video_idx": [sample_frame_indices(i.frames, FRAMES, None) for i in vinfo],
        "video_windows": [center_window(i.height, i.width) for i in vinfo],
    }


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _host_augment(frames: np.ndarray, window: np.ndarray, flip: bool) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, S, S): crop the window, antialiased bilinear resize, flip, normalise."""
    h, w = frames.shape[1:3]
    y0, x0, ch, cw = (float(v) for v in window)
    top, left = round(y0 * h), round(x0 * w)
    crop = np.array(frames[:, top: top + round(ch * h), left: left + round(cw * w)])  # writable, contiguous
    x = torch.from_numpy(crop).permute(0, 3, 1, 2)  # (F, 3, h, w)
    x = F.interpolate(x.float(), size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    if flip:
        x = x.flip(-1)
    return (x / 255 - MEAN) / STD


def _images_pil(corpus: dict[str, Any], sl: slice, flips: np.ndarray) -> torch.Tensor:
    out = []
    for enc, win, flip in zip(corpus["images"][sl], corpus["image_windows"][sl], flips, strict=True):
        with Image.open(io.BytesIO(enc.tobytes())) as im:
            out.append(_host_augment(np.asarray(im.convert("RGB"))[None], win, bool(flip)))
    return torch.stack(out)


def _videos_pyav(corpus: dict[str, Any], sl: slice, flips: np.ndarray) -> torch.Tensor:
    return torch.stack([_host_augment(decode_frames_pyav(enc.tobytes(), idx), win, bool(flip))
                        for enc, idx, win, flip in zip(corpus["videos"][sl], corpus["video_idx"][sl],
                                                        corpus["video_windows"][sl], flips, strict=True)])


def _videos_decord(corpus: dict[str, Any], sl: slice, flips: np.ndarray) -> torch.Tensor:
    import decord

    out = []
    for enc, idx, win, flip in zip(corpus["videos"][sl], corpus["video_idx"][sl], corpus["video_windows"][sl],
                                   flips, strict=True):
        reader = decord.VideoReader(io.BytesIO(enc.tobytes()), num_threads=1)
        out.append(_host_augment(reader.get_batch(list(map(int, idx))).asnumpy(), win, bool(flip)))
    return torch.stack(out)


def _check(out: torch.Tensor, n: int, frames: int) -> None:
    assert out.shape == (n, frames, 3, SIZE, SIZE), out.shape
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()), "non-finite pixels"
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert bool((out >= lo - 1e-4).all() and (out <= hi + 1e-4).all()), "outside the normalised pixel range"
    assert float(out.std()) > 0.05, "flat output: nothing decoded"


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) * STD).abs().mean() * 255)


def _record(benchmark: Any, count: int, unit: str) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable (the unit-test run)
        rate = count / benchmark.stats.stats.median
        benchmark.extra_info[unit] = rate
        print(f"\n{benchmark.group} {benchmark.name}: {rate:.0f} {unit}")


@pytest.mark.parametrize("impl", ["dali_cpu", "pil_ref"])
def test_images(benchmark: Any, corpus: dict[str, Any], impl: str) -> None:
    benchmark.group = "data images (decode + augment, CPU)"
    n = len(corpus["images"])
    flips = np.arange(n) % 2 == 1
    pipes = DaliPipelines(image_size=SIZE, batch_size=IMAGE_BATCH, device="cpu", threads=THREADS)

    def dali() -> torch.Tensor:
        return torch.cat([pipes.run("images", np.stack(corpus["image_windows"][sl]), flips[sl],
                                    enc=corpus["images"][sl]) for sl in _batches(n, IMAGE_BATCH)])

    def pil() -> torch.Tensor:
        with torch_threads(1):  # as the loader workers run: torch single-threaded
            return torch.cat([_images_pil(corpus, sl, flips[sl]) for sl in _batches(n, IMAGE_BATCH)])

    fn = dali if impl == "dali_cpu" else pil
    out = fn()
    _check(out, n, 1)
    if impl == "dali_cpu":
        ref = pil()
        assert _levels(out, ref) < MAX_MEAN_LEVELS, f"DALI differs from PIL by {_levels(out, ref):.1f} levels"
        assert _levels(out, ref.flip(-1)) > 2 * _levels(out, ref), "flip ignored"
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
    _record(benchmark, n, "images_per_s")


@pytest.mark.parametrize("impl", ["dali_cpu", "pyav_ref", "decord"])
def test_videos(benchmark: Any, corpus: dict[str, Any], impl: str) -> None:
    benchmark.group = f"data videos ({FRAMES} frames, decode + augment, CPU)"
    if impl == "decord":
        pytest.importorskip("decord", reason="decord is not installed (pip install decord)")
    n = len(corpus["videos"])
    flips = np.arange(n) % 2 == 1
    pipes = DaliPipelines(image_size=SIZE, batch_size=VIDEO_BATCH, device="cpu", threads=THREADS)

    def dali() -> torch.Tensor:
        return torch.cat([pipes.run("videos", np.stack(corpus["video_windows"][sl]), flips[sl],
                                    enc=corpus["videos"][sl], idx=corpus["video_idx"][sl])
                          for sl in _batches(n, VIDEO_BATCH)])

    def host(decode: Callable) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch_threads(1):  # as the loader workers run: torch single-threaded
                return torch.cat([decode(corpus, sl, flips[sl]) for sl in _batches(n, VIDEO_BATCH)])

        return run

    fn = {"dali_cpu": dali, "pyav_ref": host(_videos_pyav), "decord": host(_videos_decord)}[impl]
    out = fn()
    _check(out, n, FRAMES)
    if impl != "pyav_ref":
        ref = host(_videos_pyav)()
        assert _levels(out, ref) < MAX_MEAN_LEVELS, f"{impl} differs from PyAV by {_levels(out, ref):.1f} levels"
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
    _record(benchmark, n, "clips_per_s")


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_stream(benchmark: Any, corpus: dict[str, Any], workers: int) -> None:
    """The training loader end to end, as the trainer uses it: one endless stream (workers start once), read
    shards, shuffle, validate, tokenise, decode + augment with DALI in the prefetch thread."""
    benchmark.group = "data loader (training stream, CPU)"
    cfg = DataConfig(train=corpus["spec"], val=corpus["spec"], image_size=SIZE, frames=FRAMES, batch_size=32,
                     num_workers=workers, device="cpu", dali_threads=THREADS, shuffle_buffer=256)
    stream = iter(Loader(cfg, corpus["spec"], train=True, seed=0, epochs=None))
    per_round = 10  # batches: about one epoch of the corpus

    def take() -> int:
        count = 0
        for _ in range(per_round):
            batch = next(stream)
            _check(batch.pixels, len(batch), batch.pixels.shape[1])
            count += len(batch)
        return count

    take()  # builds the DALI pipelines and starts the workers, as the first steps of a run do
    counts: list[int] = []
    benchmark.pedantic(lambda: counts.append(take()), rounds=3, warmup_rounds=0, iterations=1)
    assert all(c == per_round * 32 for c in counts)
    _record(benchmark, per_round * 32, "samples_per_s")
