"""Every kind of bad input of issue 5 in one shard set: good samples all delivered, exact counts per reason,
the same counts from ``python -m scl_fast.data.check --json``, and strict mode naming shard and key."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass

import av
import numpy as np
import pytest
import torch

from scl_fast.config import parse_args
from scl_fast.data import BadSampleError, DataConfig, build_loader
from scl_fast.data.host import CLIP_MEAN, CLIP_STD
from scl_fast.data.shards import REPAIRED, SKIPPED

from .media import caption_json, image_bytes, noise_jpeg, video_bytes, write_tar

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)
FRAMES = 3
SIZE = 32


@dataclass
class Case:
    """One sample of the bad set and what must happen to it."""

    key: str
    members: list[tuple[str, bytes]]  # (extension, payload)
    outcome: str  # "good", or a key of SKIPPED / REPAIRED
    rgb: tuple[int, int, int] | None = None  # expected colour of an image that is delivered


def _packet_offsets(video: bytes) -> list[int]:
    """Byte offset of each video packet in the container (PyAV's demuxer, no decoding)."""
    with av.open(io.BytesIO(video)) as container:
        return [p.pos for p in container.demux(container.streams.video[0]) if p.size]


def _cases() -> list[list[Case]]:
    """The cases, shard by shard. Shard 2 is truncated after its third sample; shard 3 does not exist."""
    cap = b"a caption"
    vid = video_bytes(frames=8, size=SIZE)
    noisy = noise_jpeg()
    images = [
        Case("good_jpg", [("jpg", image_bytes((255, 0, 0))), ("txt", b"a red picture")], "good", (255, 0, 0)),
        Case("good_png_json", [("png", image_bytes((0, 0, 255), fmt="PNG")), ("json", caption_json("blue"))],
             "good", (0, 0, 255)),
        # Header garbage: PIL rejects it in the worker, it never reaches DALI.
        Case("corrupt_jpeg_header", [("jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2), ("txt", cap)],
             "corrupt_image"),
        # Valid header, body cut: passes the header probe, DALI rejects the batch, the host decoder too.
        Case("corrupt_jpeg_body", [("jpg", noisy[: int(len(noisy) * 0.6)]), ("txt", cap)], "corrupt_image"),
        Case("zero_byte_jpg", [("jpg", b""), ("txt", cap)], "empty_media"),
        Case("grayscale_jpg", [("jpg", image_bytes((90, 90, 90), mode="L")), ("txt", cap)], "converted_to_rgb",
             (90, 90, 90)),
        Case("grayscale_png", [("png", image_bytes((140, 140, 140), fmt="PNG", mode="L")), ("txt", cap)],
             "converted_to_rgb", (140, 140, 140)),
        Case("cmyk_jpg", [("jpg", image_bytes((10, 200, 30), mode="CMYK")), ("txt", cap)], "converted_to_rgb",
             (10, 200, 30)),
        Case("rgba_png", [("png", image_bytes((0, 160, 255), fmt="PNG", mode="RGBA", alpha=90)), ("txt", cap)],
             "converted_to_rgb", (0, 160, 255)),
        Case("palette_png", [("png", image_bytes((255, 102, 0), fmt="PNG", mode="P")), ("txt", cap)],
             "converted_to_rgb", (255, 102, 0)),  # a web-palette colour
        Case("one_pixel", [("png", image_bytes((0, 255, 0), (1, 1), "PNG")), ("txt", cap)], "tiny_image",
             (0, 255, 0)),
        Case("extreme_wide", [("jpg", image_bytes((255, 255, 0), (200, 20))), ("txt", cap)], "extreme_aspect",
             (255, 255, 0)),
        Case("extreme_tall", [("png", image_bytes((0, 255, 255), (17, 300), "PNG")), ("txt", cap)],
             "extreme_aspect", (0, 255, 255)),
        Case("missing_media", [("txt", cap)], "missing_media"),
        Case("unknown_media_ext", [("gif", image_bytes(fmt="GIF")), ("txt", cap)], "missing_media"),
        Case("missing_caption", [("jpg", image_bytes())], "missing_caption"),
        Case("non_utf8_txt", [("jpg", image_bytes()), ("txt", b"caf\xe9 \xff\xfe")], "non_utf8_caption"),
        Case("non_utf8_json", [("jpg", image_bytes()), ("json", b'{"caption": "caf\xe9"}')], "non_utf8_caption"),
        Case("empty_caption", [("jpg", image_bytes()), ("txt", b" \n\t ")], "empty_caption"),
        Case("json_without_caption", [("jpg", image_bytes()), ("json", b'{"url": "x"}')], "bad_json"),
    ]
    videos = [
        Case("good_webm", [("webm", vid), ("txt", b"a gray clip")], "good"),
        Case("short_webm", [("webm", video_bytes(frames=2, size=SIZE)), ("txt", cap)], "short_video"),
        Case("truncated_webm", [("webm", vid[: len(vid) // 2]), ("txt", cap)], "corrupt_video"),  # no packet left
        # Cut where the third frame's packet starts: two frames readable, fewer than FRAMES.
        Case("truncated_webm_2_frames", [("webm", vid[: _packet_offsets(vid)[2]]), ("txt", cap)], "short_video"),
        Case("zero_byte_webm", [("webm", b""), ("txt", cap)], "empty_media"),
        Case("garbage_mp4", [("mp4", bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8))),
                             ("txt", cap)], "corrupt_video"),
        Case("mpeg4_fallback", [("mp4", video_bytes(frames=5, size=SIZE, codec="mpeg4", fmt="mp4")),
                                ("txt", b"an mpeg-4 clip")], "good"),
    ]
    truncated = [Case(f"before_cut{i}", [("jpg", image_bytes((200, 0, 200))), ("txt", cap)], "good", (200, 0, 200))
                 for i in range(3)]
    return [images, videos, truncated]


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Writes the shard set; returns its spec, the expected delivered cases and the expected counts."""
    root = tmp_path_factory.mktemp("bad")
    shards = _cases()
    for s, cases in enumerate(shards):
        members = [(f"{c.key}.{ext}", payload) for c in cases for ext, payload in c.members]
        if s == 2:
            members.append(("cut_here.jpg", noise_jpeg(seed=1)))  # the member the truncation cuts in half
        write_tar(str(root / f"bad-{s:05d}.tar"), members)
    path = str(root / "bad-00002.tar")
    with tarfile.open(path) as tar:
        cut = tar.getmember("cut_here.jpg")
    with open(path, "r+b") as f:  # cut in the middle of cut_here.jpg's data
        f.truncate(cut.offset_data + cut.size // 2)
    cases = [c for shard in shards for c in shard]
    good = {c.key: c for c in cases if c.outcome == "good" or c.outcome in REPAIRED}
    bad = Counter(c.outcome for c in cases if c.outcome in SKIPPED)
    bad.update({"truncated_shard": 1, "unreadable_shard": 1})
    repaired = Counter(c.outcome for c in cases if c.outcome in REPAIRED)
    assert set(bad) | set(repaired) >= {"corrupt_image", "corrupt_video", "empty_media", "missing_media",
                                        "missing_caption", "non_utf8_caption", "truncated_shard",
                                        "converted_to_rgb", "tiny_image", "extreme_aspect", "short_video"}
    return {"spec": str(root / "bad-{00000..00003}.tar"), "cases": {c.key: c for c in cases}, "good": good,
            "bad": bad, "repaired": repaired, "first_bad": ("bad-00000.tar", "corrupt_jpeg_header")}


def _cfg(spec: str, **kw) -> DataConfig:
    base = dict(train=spec, val=spec, image_size=SIZE, frames=FRAMES, batch_size=8, num_workers=0, device="cpu",
                shuffle_buffer=4)
    return DataConfig(**{**base, **kw})


def _rgb(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels * STD + MEAN) * 255  # (..., 3, H, W) back to 0..255


def _check_delivered(batches: list, bad_set: dict) -> None:
    good = bad_set["good"]
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(good), f"delivered {sorted(keys)}"
    for b in batches:
        assert b.pixels.shape[1:] in ((1, 3, SIZE, SIZE), (FRAMES, 3, SIZE, SIZE)), b.pixels.shape
        assert bool(torch.isfinite(b.pixels).all())
        for i, key in enumerate(b.keys):
            rgb = good[key].rgb
            if rgb is None:
                continue
            assert b.pixels.shape[1] == 1, key
            want = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)
            err = (_rgb(b.pixels[i, 0]) - want).abs().amax().item()
            assert err <= 8, f"{key}: max error {err:.1f} levels from {rgb}"  # JPEG chroma of a flat colour
    video = {k: b.pixels[i] for b in batches for i, k in enumerate(b.keys) if b.pixels.shape[1] == FRAMES}
    assert sorted(video) == ["good_webm", "mpeg4_fallback", "short_webm", "truncated_webm_2_frames"]
    # A 2-frame clip repaired to 3 frames repeats a frame: values 20 and 45 only, non-decreasing.
    for key in ("short_webm", "truncated_webm_2_frames"):
        values = _rgb(video[key]).mean(dim=(1, 2, 3))
        assert bool((values[1:] >= values[:-1] - 0.5).all()), (key, values)
        assert {round(v / 25) for v in values.tolist()} <= {1, 2}, (key, values)


def test_every_bad_case_skipped_or_repaired_with_exact_counts(bad_set: dict, decoder: str) -> None:
    loader = build_loader(_cfg(bad_set["spec"], decoder=decoder), "val")
    batches = list(loader)
    _check_delivered(batches, bad_set)
    stats = loader.stats
    assert stats.good == len(bad_set["good"])
    assert dict(stats.bad) == dict(bad_set["bad"])
    assert dict(stats.repaired) == dict(bad_set["repaired"])
    if decoder == "dali":
        assert stats.info["pyav_fallback"] == 1  # the MPEG-4 clip: DALI's CPU decoder lacks the codec
        assert stats.info["host_decode"] >= 1  # the batch DALI rejected over the cut JPEG body
    else:  # no fallback: PIL and PyAV read every delivered sample in the workers
        videos = sum(c.members[0][0] in ("webm", "mp4") for c in bad_set["good"].values())
        assert dict(stats.info) == {"pil": len(bad_set["good"]) - videos, "pyav": videos}


def test_bad_set_through_workers_and_shuffle(bad_set: dict, decoder: str) -> None:
    """Training order (shuffle buffer, augmentation) with 2 loader workers: same samples, same counts."""
    loader = build_loader(_cfg(bad_set["spec"], num_workers=2, decoder=decoder), "train", epochs=1, drop_last=False)
    batches = list(loader)
    assert sorted(k for b in batches for k in b.keys) == sorted(bad_set["good"])
    for b in batches:
        assert bool(torch.isfinite(b.pixels).all()) and b.pixels.shape[-2:] == (SIZE, SIZE)
    assert loader.stats.good == len(bad_set["good"])
    assert dict(loader.stats.bad) == dict(bad_set["bad"])
    assert dict(loader.stats.repaired) == dict(bad_set["repaired"])


def _check_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scl_fast.data.check", *args, "--frames", str(FRAMES),
                           "--image-size", str(SIZE)], capture_output=True, text=True, timeout=120)


def test_check_cli_json(bad_set: dict) -> None:
    out = _check_cli(bad_set["spec"], "--json")
    # The set holds a missing shard: the counts are reported and the check fails, so it can guard a pipeline.
    assert out.returncode == 1, out.stderr[-2000:]
    # (stderr also holds the decoders' own complaints about the broken files)
    assert out.stderr.strip().splitlines()[-1] == "check failed: 1 unreadable shard(s): missing or not a tar"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["good"] == len(bad_set["good"])
    assert result["bad"] == dict(sorted(bad_set["bad"].items()))
    assert result["repaired"] == dict(sorted(bad_set["repaired"].items()))


def test_check_cli_exit_status(bad_set: dict, tmp_path) -> None:
    """0 for usable data, 1 for no good sample or too many skipped, 2 (one line) for an argument it cannot use."""
    readable = bad_set["spec"].replace("{00000..00003}", "{00000..00002}")  # without the missing shard
    fraction = sum(bad_set["bad"].values()) / (sum(bad_set["bad"].values()) + len(bad_set["good"]))
    assert _check_cli(readable, "--max-bad-fraction", f"{fraction + 0.05:.3f}").returncode == 0
    over = _check_cli(readable, "--max-bad-fraction", f"{fraction - 0.05:.3f}")
    assert over.returncode == 1 and "over --max-bad-fraction" in over.stderr
    missing = _check_cli(str(tmp_path / "nowhere-{00000..00001}.tar"))
    assert missing.returncode == 1 and "no good sample" in missing.stderr and "2 unreadable shard(s)" in missing.stderr
    manifest = _check_cli(str(tmp_path / "absent.jsonl"))
    assert manifest.returncode == 2, manifest.stderr
    assert manifest.stderr.strip() == f"error: manifest not found: '{tmp_path / 'absent.jsonl'}'"


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_raises_naming_shard_and_key(bad_set: dict, workers: int) -> None:
    shard, key = bad_set["first_bad"]
    with pytest.raises(BadSampleError, match=rf"{shard}.*key '{key}': corrupt_image"):
        for _ in build_loader(_cfg(bad_set["spec"], strict=True, num_workers=workers), "val"):
            pass


def test_strict_from_the_command_line(bad_set: dict) -> None:
    """``--data.strict true`` reaches the loader through the training program's parser."""
    cfg = parse_args(["--data.strict", "true", "--data.train", bad_set["spec"], "--data.val", bad_set["spec"],
                      "--data.num_workers", "0", "--data.device", "cpu"]).data
    assert cfg.strict is True
    with pytest.raises(BadSampleError, match=r"bad-00000\.tar.*corrupt_jpeg_header"):
        next(iter(build_loader(cfg, "val")))


@pytest.mark.parametrize("key", ["corrupt_jpeg_body", "truncated_webm", "non_utf8_txt", "missing_media", "cut"])
def test_strict_names_each_kind(bad_set: dict, tmp_path, key: str, decoder: str) -> None:
    """Strict mode on one bad case at a time, including the one DALI detects only when decoding (the host decoder
    when it decodes in the worker) and the truncated shard."""
    if key == "cut":
        spec, shard, want = bad_set["spec"].replace("{00000..00003}", "00002"), "bad-00002.tar", "truncated_shard"
    else:
        case, good = bad_set["cases"][key], bad_set["cases"]["good_jpg"]
        spec, shard, want = str(tmp_path / "one.tar"), "one.tar", rf"key '{key}': {case.outcome}"
        write_tar(spec, [(f"{c.key}.{ext}", p) for c in (good, case) for ext, p in c.members])
    with pytest.raises(BadSampleError, match=rf"{shard}.*{want}"):
        for _ in build_loader(_cfg(spec, strict=True, decoder=decoder), "val"):
            pass
    # Without strict the same input is read to the end.
    loader = build_loader(_cfg(spec, decoder=decoder), "val")
    list(loader)
    assert sum(loader.stats.bad.values()) == 1 and loader.stats.good >= 1


def test_reasons_are_documented() -> None:
    """Every reason the ledger can report has a one-line meaning (the README's table is built from these)."""
    assert all(isinstance(v, str) and v for v in {**SKIPPED, **REPAIRED}.values())
    assert not set(SKIPPED) & set(REPAIRED)


def test_bad_manifest_lines(tmp_path) -> None:
    """The JSONL form of the bad cases: missing file, broken JSON line, no caption, not an object, no media key."""
    (tmp_path / "ok.jpg").write_bytes(image_bytes((0, 0, 255)))
    (tmp_path / "gray.png").write_bytes(image_bytes((90, 90, 90), fmt="PNG", mode="L"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    lines = [json.dumps({"image": "ok.jpg", "caption": "blue"}),
             json.dumps({"image": "gray.png", "caption": "gray"}),
             json.dumps({"image": "nowhere.jpg", "caption": "lost"}),
             '{"image": "ok.jpg", "caption": ',
             json.dumps({"image": "ok.jpg"}),
             json.dumps(["ok.jpg", "a list"]),
             json.dumps({"caption": "no media"}),
             json.dumps({"image": "empty.jpg", "caption": "zero bytes"}),
             "",
             json.dumps({"image": "ok.jpg", "caption": "   "})]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    loader = build_loader(_cfg(str(manifest)), "val")
    keys = [k for b in loader for k in b.keys]
    assert keys == ["line1", "line2"]
    assert dict(loader.stats.bad) == {"missing_media": 2, "bad_json": 2, "missing_caption": 1, "empty_media": 1,
                                      "empty_caption": 1}
    assert dict(loader.stats.repaired) == {"converted_to_rgb": 1}
    with pytest.raises(BadSampleError, match=r"m\.jsonl.*key 'line3': missing_media"):
        list(build_loader(_cfg(str(manifest), strict=True), "val"))
