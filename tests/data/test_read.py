"""Reading shards through both CPU decoders (DALI, host PIL/PyAV): shapes, dtype, normalisation, frames, tokens."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from scl_fast.data import DataConfig, Loader, build_loader, load_tokenizer
from scl_fast.data.dali import dali_available
from scl_fast.data.host import CLIP_MEAN, CLIP_STD

from .media import caption_json, image_bytes, video_bytes, write_tar

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _collect(loader) -> list:
    return list(loader)


def _check_batch(batch, cfg: DataConfig, tokenizer) -> None:
    b, f = batch.pixels.shape[:2]
    assert batch.pixels.shape == (b, f, 3, cfg.image_size, cfg.image_size)
    assert f in (1, cfg.frames)
    assert batch.pixels.dtype == torch.float32
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD  # the normalised range of [0, 255] pixels
    assert bool((batch.pixels >= lo - 1e-4).all() and (batch.pixels <= hi + 1e-4).all())
    assert batch.input_ids.dtype == torch.int64 and batch.input_ids.shape[0] == b == len(batch.keys)
    assert batch.attention_mask.dtype == torch.bool and batch.special_mask.dtype == torch.bool
    assert batch.input_ids.shape[1] <= cfg.max_text_len
    assert bool(batch.attention_mask.any(1).all()), "a row has no real token"
    assert bool((batch.input_ids[~batch.attention_mask] == tokenizer.pad_id).all())
    assert bool((batch.special_mask[:, 0]).all()), "[CLS] must be flagged special"
    for i, caption in enumerate(batch.captions):
        assert tokenizer.decode(batch.input_ids[i]) == " ".join(tokenizer.normalize(caption).split())


@pytest.mark.parametrize("split", ["val", "train"])
def test_demo_shards_through_cpu_pipeline(demo_corpus: dict[str, str], split: str, decoder: str) -> None:
    cfg = DataConfig(train=demo_corpus["train"], val=demo_corpus["val"], batch_size=8, num_workers=0,
                     device="cpu", shuffle_buffer=16, decoder=decoder)
    loader = build_loader(cfg, split, epochs=1, drop_last=False)
    tokenizer = load_tokenizer(None, cfg.max_text_len)
    batches = _collect(loader)
    for batch in batches:
        _check_batch(batch, cfg, tokenizer)
        video = batch.pixels.shape[1] == cfg.frames
        assert all(("moving" in c) == video for c in batch.captions), "images and videos mixed in one batch"
    expected = 60 + 16 if split == "train" else 20 + 8
    assert sum(len(b) for b in batches) == expected == loader.stats.good
    assert loader.stats.bad == {} and loader.stats.repaired == {}
    if split == "val":  # evaluation is ordered: a second pass gives the same keys and pixels
        again = _collect(loader)
        assert [b.keys for b in again] == [b.keys for b in batches]
        assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(again, batches, strict=True))


def test_img2dataset_layout_tar(tmp_path, decoder: str) -> None:
    """A hand-written tar (jpg+txt, png+json, webm+txt): exact colours after normalisation, F frames."""
    members = [
        ("000000.jpg", image_bytes((255, 0, 0), (48, 40))), ("000000.txt", b"A red picture"),
        ("000001.png", image_bytes((0, 0, 255), (40, 64), "PNG")), ("000001.json", caption_json("a blue one")),
        ("000002.webm", video_bytes(frames=8)), ("000002.txt", "a gray clip \u00e9t\u00e9".encode()),
    ]
    write_tar(str(tmp_path / "00000.tar"), members)
    cfg = DataConfig(val=str(tmp_path / "{00000..00000}.tar"), train="unused", image_size=32, frames=3,
                     batch_size=4, num_workers=0, device="cpu", decoder=decoder)
    batches = list(build_loader(cfg, "val"))
    by_key = {k: (b, i) for b in batches for i, k in enumerate(b.keys)}
    assert sorted(by_key) == ["000000", "000001", "000002"]
    tokenizer = load_tokenizer(None, cfg.max_text_len)
    for b in batches:
        _check_batch(b, cfg, tokenizer)
    for key, rgb in (("000000", (255, 0, 0)), ("000001", (0, 0, 255))):
        b, i = by_key[key]
        assert b.pixels.shape[1] == 1
        want = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD
        # JPEG chroma subsampling shifts a saturated colour by a few levels: 6/255 in pixel units.
        err = (b.pixels[i, 0] - want).abs().mul(STD).amax().item()
        assert err < 6 / 255 + 1e-6, f"{key}: max error {err * 255:.1f} levels"
    b, i = by_key["000002"]
    assert b.pixels.shape[1] == 3
    assert b.captions[i] == "a gray clip \u00e9t\u00e9"
    # Evaluation samples frames at segment middles: 8 frames, 3 segments -> frames 1, 4, 6 (values 45, 120, 170).
    values = (b.pixels[i] * STD + MEAN).mean(dim=(1, 2, 3)) * 255
    np.testing.assert_allclose(values.numpy(), [45, 120, 170], atol=4)


def test_manifest_and_pyav_fallback(tmp_path, decoder: str) -> None:
    """JSONL manifest of a folder; an MPEG-4 video (not decodable by DALI on the CPU) goes through PyAV."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(image_bytes((0, 255, 0)))
    (tmp_path / "clip.mp4").write_bytes(video_bytes(frames=6, codec="mpeg4", fmt="mp4"))
    lines = [{"image": "img/a.jpg", "caption": "green"}, {"video": "clip.mp4", "caption": "a clip"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = DataConfig(train=str(manifest), val=str(manifest), batch_size=2, num_workers=0, device="cpu",
                     decoder=decoder)
    loader = build_loader(cfg, "train", epochs=1, drop_last=False)
    batches = list(loader)
    frames = sorted(b.pixels.shape[1] for b in batches)
    assert frames == [1, cfg.frames]
    assert loader.stats.good == 2 and loader.stats.info["pyav_fallback"] == (decoder == "dali")
    video = next(b for b in batches if b.pixels.shape[1] == cfg.frames)
    # Training samples one random frame per segment: frame values stay in order (non-decreasing).
    values = (video.pixels[0] * STD + MEAN).mean(dim=(1, 2, 3))
    assert bool((values[1:] >= values[:-1] - 0.02).all()), values


def test_host_decoder_agrees_with_dali(demo_corpus: dict[str, str]) -> None:
    """Same samples, same windows and flips (a training pass with a fixed seed): images agree to one grey level
    (rounding of the resize), videos to under 2.5 levels on average (the two VP9 decoders' colour conversion differs
    by up to ~60 levels on the shapes' edges); a wrong crop, flip, frame or channel order costs tens on average."""
    if not dali_available():
        pytest.skip("NVIDIA DALI is not installed (pip install 'scl_fast[dali]')")
    out = {}
    for decoder in ("dali", "host"):
        cfg = DataConfig(train=demo_corpus["train"], val=demo_corpus["val"], batch_size=8, num_workers=0,
                         device="cpu", shuffle_buffer=16, decoder=decoder)
        out[decoder] = list(build_loader(cfg, "train", epochs=1, seed=3))
    assert [b.keys for b in out["dali"]] == [b.keys for b in out["host"]]
    kinds = set()
    for a, b in zip(out["dali"], out["host"], strict=True):
        kinds.add(a.pixels.shape[1])
        diff = ((a.pixels - b.pixels) * STD).abs() * 255
        if a.pixels.shape[1] == 1:
            assert diff.amax().item() < 1.01, f"{a.keys}: max |DALI - host| = {diff.amax().item():.2f} levels"
        else:
            assert diff.mean().item() < 2.5, f"{a.keys}: mean |DALI - host| = {diff.mean().item():.2f} levels"
    assert kinds == {1, 4}


def test_demo_corpus_is_idempotent_and_deterministic(tmp_path) -> None:
    from scl_fast.data.demo import ensure_demo_corpus

    sizes = dict(train_images=12, train_videos=3, val_images=4, val_videos=2)
    first = ensure_demo_corpus(str(tmp_path / "a"), **sizes)
    shard = first["train"].replace("{00000..00000}", "00000")
    mtime = os.stat(shard).st_mtime_ns
    assert ensure_demo_corpus(str(tmp_path / "a"), **sizes) == first
    assert os.stat(shard).st_mtime_ns == mtime, "second call rewrote the corpus"
    other = ensure_demo_corpus(str(tmp_path / "b"), **sizes)
    with open(shard, "rb") as f, open(other["train"].replace("{00000..00000}", "00000"), "rb") as g:
        assert f.read() == g.read()
    assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".")], "temporary folder left behind"


def test_demo_captions_describe_pixels(demo_corpus: dict[str, str], decoder: str) -> None:
    """The caption's colour word is the colour of the shape: what makes retrieval learnable."""
    from scl_fast.data.demo import COLOURS

    cfg = DataConfig(train=demo_corpus["train"], val=demo_corpus["val"], batch_size=32, num_workers=0,
                     device="cpu", decoder=decoder)
    checked = 0
    for batch in build_loader(cfg, "val"):
        rgb = (batch.pixels * STD + MEAN) * 255  # (B, F, 3, H, W)
        for i, caption in enumerate(batch.captions):
            colour = next(c for c in COLOURS if f" {c} " in caption)
            target = torch.tensor(COLOURS[colour], dtype=torch.float32).view(3, 1, 1)
            dist = (rgb[i, 0] - target).abs().amax(0)  # (H, W)
            assert int((dist < 40).sum()) >= 12, f"no {colour} pixels in {batch.keys[i]}: {caption!r}"
            checked += 1
    assert checked == 28


def test_flip_swaps_left_and_right_in_captions(demo_corpus: dict[str, str], decoder: str) -> None:
    """Training flips half the samples; a flipped "top left" shape is on the right, and its caption says so."""
    from scl_fast.data.demo import COLOURS

    cfg = DataConfig(train=demo_corpus["train"], val=demo_corpus["val"], batch_size=16, num_workers=0,
                     device="cpu", shuffle_buffer=8, decoder=decoder)
    loader = build_loader(cfg, "train", epochs=1, drop_last=False, seed=4)
    flipped = checked = 0
    originals = {}
    for batch in Loader(cfg, demo_corpus["train"], train=False, epochs=1, drop_last=False):  # unflipped
        originals.update(zip(batch.keys, batch.captions, strict=True))
    moving = 0
    for batch in loader:
        if batch.pixels.shape[1] != 1:
            moving += _check_motion(batch, COLOURS)
            continue
        rgb = (batch.pixels[:, 0] * STD + MEAN) * 255  # (B, 3, H, W)
        for i, caption in enumerate(batch.captions):
            side = "left" if " left" in caption else "right" if " right" in caption else None
            if side is None:
                continue
            flipped += caption != originals[batch.keys[i]]
            colour = next(c for c in COLOURS if f" {c} " in caption)
            target = torch.tensor(COLOURS[colour], dtype=torch.float32).view(3, 1, 1)
            ys, xs = torch.nonzero((rgb[i] - target).abs().amax(0) < 40, as_tuple=True)
            assert len(xs) >= 12, f"no {colour} pixels: {caption!r}"
            centre = xs.float().mean().item() / (rgb.shape[-1] - 1)
            assert (centre < 0.5) == (side == "left"), f"{batch.keys[i]}: {caption!r} but shape at x={centre:.2f}"
            checked += 1
    assert checked >= 20 and 0 < flipped < checked, (checked, flipped)
    assert moving >= 3, moving


def _check_motion(batch, colours: dict) -> int:
    """Clips whose caption says "moving left/right": the shape's centre moves that way from first to last frame."""
    rgb = (batch.pixels * STD + MEAN) * 255  # (B, F, 3, H, W)
    checked = 0
    for i, caption in enumerate(batch.captions):
        direction = next((d for d in ("left", "right") if f"moving {d}" in caption), None)
        if direction is None:
            continue
        colour = next(c for c in colours if f" {c} " in caption)
        target = torch.tensor(colours[colour], dtype=torch.float32).view(3, 1, 1)
        centres = []
        for f in (0, rgb.shape[1] - 1):
            xs = torch.nonzero((rgb[i, f] - target).abs().amax(0) < 40, as_tuple=True)[1]
            assert len(xs) >= 12, f"no {colour} pixels in frame {f}: {caption!r}"
            centres.append(xs.float().mean().item())
        assert (centres[1] > centres[0]) == (direction == "right"), f"{caption!r} but x went {centres}"
        checked += 1
    return checked
