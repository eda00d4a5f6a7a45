"""Sharding across ranks and loader workers, batches grouped by frame count, and resuming a saved position."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from scl_fast.data import DataConfig, Loader
from scl_fast.data.demo import write_shard

from .media import image_bytes, video_bytes

FRAMES = 2
SHARD_SIZES = (7, 3, 9, 5, 6, 4)  # 34 samples, uneven shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six shards of images mixed with videos (every fourth sample); the caption of a sample is its key."""
    root = tmp_path_factory.mktemp("dist")
    clip = video_bytes(frames=4, size=24)
    keys, n = [], 0
    for s, size in enumerate(SHARD_SIZES):
        samples = []
        for _ in range(size):
            key = f"s{n:03d}"
            if n % 4 == 3:
                samples.append((key, "webm", clip, f"video {key}"))
            else:
                samples.append((key, "jpg", image_bytes(((n * 37) % 256, 80, 200), (24 + n % 5, 20)), f"image {key}"))
            keys.append(key)
            n += 1
        write_shard(str(root / f"d-{s:05d}.tar"), samples)
    last = len(SHARD_SIZES) - 1
    return {"all": str(root / f"d-{{00000..{last:05d}}}.tar"), "three": str(root / "d-{00000..00002}.tar"),
            "keys": keys, "keys_three": keys[: sum(SHARD_SIZES[:3])]}


def _cfg(spec: str, **kw) -> DataConfig:
    base = dict(train=spec, val=spec, image_size=16, frames=FRAMES, batch_size=3, num_workers=2, device="cpu",
                shuffle_buffer=5)
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize("which", ["all", "three"])  # 6 shards >= 4 slots: by shard; 3 < 4: by sample
def test_two_ranks_two_workers_see_every_sample_once(corpus: dict, which: str) -> None:
    spec = corpus[which]
    expected = corpus["keys"] if which == "all" else corpus["keys_three"]
    seen: list[str] = []
    per_rank: list[list[str]] = []
    good = 0
    for rank in range(2):
        loader = Loader(_cfg(spec), spec, train=True, rank=rank, world_size=2, seed=5, epochs=1, drop_last=False)
        keys = []
        for batch in loader:
            frames = batch.pixels.shape[1]
            assert frames in (1, FRAMES)
            # Grouped by frame count: a batch holds images only or videos only.
            assert all(c.startswith("video" if frames == FRAMES else "image") for c in batch.captions), batch.captions
            keys += batch.keys
        per_rank.append(keys)
        seen += keys
        good += loader.stats.good
    assert sorted(seen) == sorted(expected), "the world's union must be the dataset"
    assert not [k for k, n in Counter(seen).items() if n > 1], "a sample was seen twice"
    assert all(per_rank), "a rank got no sample"
    assert good == len(expected)


def _run(loader: Loader, limit: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
    out = []
    for batch in loader:
        out.append((batch.keys, batch.pixels))
        if limit is not None and len(out) == limit:
            break
    return out


# Stops: early, mid-epoch with samples still waiting in a group, in the second epoch. prefetch 0 decodes in the
# consumer's thread, 2 in a background thread that runs ahead of what the saved position may include.
@pytest.mark.parametrize(("stop", "prefetch"), [(1, 2), (4, 0), (4, 2), (7, 2)])
def test_resume_continues_where_it_stopped(corpus: dict, stop: int, prefetch: int) -> None:
    spec = corpus["all"]
    kw = dict(train=True, rank=1, world_size=2, seed=3, epochs=2, drop_last=False)
    full = _run(Loader(_cfg(spec), spec, **kw))
    assert len(full) > stop + 1, len(full)

    first = Loader(_cfg(spec, prefetch_batches=prefetch), spec, **kw)
    head = _run(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
    resumed = Loader(_cfg(spec, prefetch_batches=prefetch), spec, **kw)
    resumed.load_state_dict(state)
    tail = _run(resumed)

    got = head + tail
    assert [k for k, _ in got] == [k for k, _ in full], "resumed run repeats, loses or reorders samples"
    for (keys, a), (_, b) in zip(got, full, strict=True):
        assert torch.equal(a, b), f"pixels differ after resume in batch {keys}"  # same crops and flips
    assert resumed.stats.good == sum(len(k) for k, _ in full)


def test_resume_rejects_a_different_world(corpus: dict) -> None:
    spec = corpus["all"]
    loader = Loader(_cfg(spec), spec, train=True, rank=0, world_size=2, seed=3, epochs=1)
    _run(loader, 1)
    other = Loader(_cfg(spec), spec, train=True, rank=0, world_size=4, seed=3, epochs=1)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(loader.state_dict())


def test_prefetch_thread_same_batches_and_global_rng(corpus: dict) -> None:
    """Decoding ahead in a thread changes neither the batches nor when torch's global RNG is drawn from (the
    DataLoader draws its worker seed when its iterator is made: that must stay in the consumer's thread)."""
    spec = corpus["three"]
    results = []
    for prefetch in (0, 2):
        torch.manual_seed(11)
        loader = Loader(_cfg(spec, num_workers=0, prefetch_batches=prefetch), spec, train=True, seed=1, epochs=1,
                        drop_last=False)
        batches = _run(loader)
        results.append((batches, torch.rand(4), loader.stats.as_dict()))
    (a, rng_a, stats_a), (b, rng_b, stats_b) = results
    assert [k for k, _ in a] == [k for k, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert torch.equal(rng_a, rng_b) and stats_a == stats_b


def test_resume_endless_stream_as_the_trainer_uses_it(corpus: dict) -> None:
    """epochs=None, drop_last=True (the trainer's loader): resuming a few epochs into the stream."""
    spec = corpus["all"]
    kw = dict(train=True, rank=0, world_size=2, seed=9, epochs=None, drop_last=True)
    full = _run(Loader(_cfg(spec), spec, **kw), 16)
    first = Loader(_cfg(spec), spec, **kw)
    head = _run(first, 11)
    resumed = Loader(_cfg(spec), spec, **kw)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = _run(resumed, 5)
    assert [k for k, _ in head + tail] == [k for k, _ in full]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(head + tail, full, strict=True))
    assert all(len(k) == 3 for k, _ in full), "drop_last: only full batches"


def test_aligned_ranks_get_the_same_frame_count_at_every_step(corpus: dict) -> None:
    """Multi-rank training: the per-frame gathers of the SCL loss need the same F on every rank at each step."""
    spec = corpus["all"]
    images = sum(1 for i in range(len(corpus["keys"])) if i % 4 != 3)
    videos = len(corpus["keys"]) - images
    slots, batch = 4, 2  # 2 ranks x 2 workers
    frames, epoch_keys = [], []
    for rank in range(2):
        endless = iter(Loader(_cfg(spec, batch_size=batch), spec, train=True, rank=rank, world_size=2, seed=2))
        frames.append([next(endless).pixels.shape[1] for _ in range(14)])
        one = Loader(_cfg(spec, batch_size=batch), spec, train=True, rank=rank, world_size=2, seed=2, epochs=1)
        epoch_keys += [k for b in one for k in b.keys]
    assert frames[0] == frames[1], frames
    assert set(frames[0]) == {1, FRAMES}
    # One epoch: each kind's remainder below batch * slots is dropped, the rest seen exactly once.
    expected = (images // (batch * slots) + videos // (batch * slots)) * batch * slots
    assert len(epoch_keys) == len(set(epoch_keys)) == expected, (len(epoch_keys), len(set(epoch_keys)), expected)


def test_unaligned_ranks_read_only_their_shards(corpus: dict) -> None:
    """align_ranks off: each rank groups on its own (cheaper I/O), so frame counts may differ across ranks."""
    spec = corpus["all"]
    seen = []
    for rank in range(2):
        loader = Loader(_cfg(spec, align_ranks=False), spec, train=True, rank=rank, world_size=2, seed=5, epochs=1)
        seen += [k for b in loader for k in b.keys]
    assert len(seen) == len(set(seen)) and len(seen) <= len(corpus["keys"])
