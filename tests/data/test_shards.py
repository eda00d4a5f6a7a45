"""Pieces of the reader and the augmentation choices: shard specs, crop windows, frame sampling, stats."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from scl_fast.data.loader import center_window, rrc_window
from scl_fast.data.shards import Stats, expand_braces, expand_spec
from scl_fast.data.video import sample_frame_indices


def test_expand_braces() -> None:
    assert expand_braces("d/{00008..00011}.tar") == [f"d/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="empty brace range"):
        expand_braces("{5..3}.tar")


def test_expand_spec(tmp_path) -> None:
    for name in ("b.tar", "a.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_spec(str(tmp_path)) == ("tar", [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    assert expand_spec(f"x/{{1..2}}.tar::{tmp_path / 'a.tar'}") == ("tar", ["x/1.tar", "x/2.tar",
                                                                              str(tmp_path / "a.tar")])
    (tmp_path / "m.jsonl").write_text("")
    assert expand_spec(str(tmp_path / "m.jsonl")) == ("manifest", [str(tmp_path / "m.jsonl")])
    with pytest.raises(ValueError, match="manifest not found"):
        expand_spec(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="empty data spec"):
        expand_spec("  ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar shards"):
        expand_spec(str(tmp_path / "empty"))


@pytest.mark.parametrize(("h", "w"), [(64, 64), (40, 97), (300, 17), (17, 300)])
def test_rrc_window_inside_image_with_area_and_aspect_in_range(h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    # Largest window with an allowed aspect, as a fraction of the image: below 0.8 no random draw can succeed.
    best = min(w, h * 4 / 3) * min(h, w * 4 / 3) / (h * w)
    random_windows = 0
    for _ in range(200):
        y0, x0, ch, cw = (float(v) for v in rrc_window(h, w, rng, 0.8))
        assert 0 <= y0 and 0 <= x0 and y0 + ch <= 1 + 1e-6 and x0 + cw <= 1 + 1e-6
        aspect = (cw * w) / (ch * h)
        assert 3 / 4 - 1e-4 <= aspect <= 4 / 3 + 1e-4, aspect
        centred = math.isclose(y0 + ch / 2, 0.5, abs_tol=1e-5) and math.isclose(x0 + cw / 2, 0.5, abs_tol=1e-5)
        if centred and math.isclose(ch * cw, best, rel_tol=1e-4):
            continue  # torchvision's fallback after 10 failed draws: the largest centred allowed window
        assert best >= 0.8 and 0.8 - 1e-5 <= ch * cw <= 1 + 1e-5, (ch * cw, best)
        random_windows += 1
    assert (random_windows > 100) == (best >= 0.8), random_windows
    y0, x0, ch, cw = center_window(h, w)
    assert math.isclose(ch * h, min(h, w), rel_tol=1e-5) and math.isclose(cw * w, min(h, w), rel_tol=1e-5)


def test_frame_sampling() -> None:
    assert sample_frame_indices(8, 4, None).tolist() == [1, 3, 5, 7]  # segment middles
    assert sample_frame_indices(2, 4, None).tolist() == [0, 0, 1, 1]  # short clip: repeated, in order
    rng = np.random.default_rng(0)
    seen: Counter = Counter()
    for _ in range(400):
        idx = sample_frame_indices(16, 4, rng)
        assert idx.dtype == np.int32 and idx.shape == (4,)
        assert all(4 * s <= i < 4 * (s + 1) for s, i in enumerate(idx.tolist())), idx  # one per segment
        seen.update(idx.tolist())
    assert sorted(seen) == list(range(16)), "every frame reachable in training"
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(0, 4, None)


def test_stats_round_trip_and_take() -> None:
    s = Stats(3, Counter(corrupt_image=2), Counter(tiny_image=1), Counter(pyav_fallback=4))
    assert Stats.from_dict(s.as_dict()).as_dict() == s.as_dict()
    total = Stats()
    total.merge(s.take())
    assert s.empty() and total.good == 3 and total.bad == {"corrupt_image": 2}


def test_video_routing_between_dali_and_pyav() -> None:
    """Which clips DALI decodes (the rest go to PyAV in the workers, counted as pyav_fallback)."""
    from scl_fast.data.video import VideoInfo, dali_decodes

    def clip(codec: str, side: int) -> VideoInfo:
        return VideoInfo(codec, 8, side, side)

    assert dali_decodes(clip("vp9", 64), "cpu") and not dali_decodes(clip("h264", 640), "cpu")
    hopper, ada = (9, 0), (8, 9)
    assert dali_decodes(clip("h264", 224), "gpu", hopper) and dali_decodes(clip("vp9", 224), "gpu", hopper)
    assert not dali_decodes(clip("vp9", 64), "gpu", hopper), "below NVDEC's smallest VP9 frame"
    assert not dali_decodes(clip("av1", 224), "gpu", hopper) and dali_decodes(clip("av1", 224), "gpu", ada)
    assert not dali_decodes(clip("theora", 224), "gpu", ada)
