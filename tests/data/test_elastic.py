"""One sample order for every layout: 1 rank x 8 samples and 2 ranks x 4 consume the same global batches (2 loader
workers the same samples, two steps at a time), and a position moves between layouts (``global_position``) with no
sample repeated or skipped."""

from __future__ import annotations

import pytest

from scl_fast.data import DataConfig, Loader
from scl_fast.data.loader import global_position
from scl_fast.errors import ConfigError

GLOBAL_BATCH = 8
STEPS = 12  # the 60 + 16 sample corpus holds 7 + 2 global batches of 8 per epoch: this crosses into the second


def _cfg(corpus: dict[str, str], world: int, workers: int = 0) -> DataConfig:
    return DataConfig(train=corpus["train"], val=corpus["val"], batch_size=GLOBAL_BATCH // world, num_workers=workers,
                      prefetch_batches=0, device="cpu", shuffle_buffer=16, decoder="host")


def _loaders(corpus: dict[str, str], world: int, workers: int = 0) -> list[Loader]:
    return [Loader(_cfg(corpus, world, workers), corpus["train"], train=True, rank=r, world_size=world, seed=5)
            for r in range(world)]


def _steps(loaders: list[Loader], n: int) -> tuple[list[tuple[int, frozenset[str]]], list[dict]]:
    """``n`` steps of every rank: each step's frame count and global batch (a set of keys), and the ranks' states
    after."""
    iters = [iter(loader) for loader in loaders]
    steps = []
    for _ in range(n):
        batches = [next(it) for it in iters]
        assert len({b.pixels.shape[1] for b in batches}) == 1, "ranks got batches of different frame counts"
        assert all(len(b) == GLOBAL_BATCH // len(loaders) for b in batches)
        steps.append((batches[0].pixels.shape[1], frozenset(k for b in batches for k in b.keys)))
    states = [loader.state_dict() for loader in loaders]
    for it in iters:
        it.close()
    return steps, states


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_position_moves_between_numbers_of_ranks(demo_corpus: dict[str, str], before: int, after: int) -> None:
    reference, _ = _steps(_loaders(demo_corpus, 1), STEPS)
    assert len(set().union(*(keys for _, keys in reference[:9]))) == 9 * GLOBAL_BATCH, "an epoch repeats no sample"
    split, states = _steps(_loaders(demo_corpus, before), 5)
    assert split == reference[:5], "the global batches must not depend on the number of ranks"
    position = global_position(states)
    moved = _loaders(demo_corpus, after)
    for rank, loader in enumerate(moved):
        loader.load_state_dict(position if rank == 0 else {**position, "stats": {"good": 0, "bad": {}, "repaired": {},
                                                                                 "info": {}}})
    rest, _ = _steps(moved, STEPS - 5)
    assert rest == reference[5:], "after the move: the same global batches, none repeated or skipped"
    assert moved[0].stats.good == 5 * GLOBAL_BATCH + (STEPS - 5) * GLOBAL_BATCH // after


def _consumed(steps: list[tuple[int, frozenset[str]]]) -> dict[int, set[str]]:
    """The samples of each kind (frame count) in ``steps``; a sample seen twice fails."""
    seen: dict[int, set[str]] = {}
    for frames, keys in steps:
        assert not keys & seen.get(frames, set()), "a sample was consumed twice"
        seen.setdefault(frames, set()).update(keys)
    return seen


def _prefix(reference: list[tuple[int, frozenset[str]]], counts: dict[int, set[str]]) -> dict[int, set[str]]:
    """The first samples of each kind in the reference order, as many as ``counts`` holds."""
    out: dict[int, set[str]] = {}
    for frames, keys in reference:
        if len(out.get(frames, ())) < len(counts.get(frames, ())):
            out.setdefault(frames, set()).update(keys)
    return out


def test_loader_workers_move_at_global_batch_boundaries(demo_corpus: dict[str, str]) -> None:
    """With 2 workers a global batch (16 samples of one kind) is dealt to both and each hands out its half in turn:
    each kind's samples come in the same order as with one worker, and the position is a count of global batches
    only after an even number of steps."""
    reference, _ = _steps(_loaders(demo_corpus, 1), 18)
    two_workers = _loaders(demo_corpus, 1, workers=2)
    odd, states = _steps(two_workers, 3)
    assert not two_workers[0].at_global_boundary()
    with pytest.raises(ConfigError, match="not at a global-batch boundary"):
        global_position(states)
    two_workers = _loaders(demo_corpus, 1, workers=2)
    before, states = _steps(two_workers, 4)
    assert two_workers[0].at_global_boundary()
    consumed = _consumed(before)
    assert consumed == _prefix(reference, consumed), "each kind in the reference order"
    moved = _loaders(demo_corpus, 2)
    for loader in moved:
        loader.load_state_dict(global_position(states))
    after, _ = _steps(moved, 4)  # still in the first epoch (at least 5 global batches of 8 are left in it)
    consumed = _consumed(before + after)  # fails if a sample repeats across the move
    assert consumed == _prefix(reference, consumed), "nothing skipped: still each kind's first samples"
    assert sum(len(v) for v in consumed.values()) == 8 * GLOBAL_BATCH
