"""Static shapes: every training batch of a run has one shape per frame count, bad samples mixed in or not.

B = ``data.batch_size`` rows (a share short of good samples is padded with blank rows marked invalid, a share with
none is a batch of padding), L = ``data.max_text_len``; so a compiled step compiles once per frame count and a CUDA
graph per shape replays every step.
"""

from __future__ import annotations

import os

import pytest
import torch

from scl_fast.data import DataConfig, Loader

from .media import image_bytes, noise_jpeg, write_tar

BATCH, TEXT = 4, 24


@pytest.fixture(scope="module")
def mixed(demo_corpus: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo corpus's training shards plus a shard where most samples are bad (corrupt bodies, missing captions,
    empty files) between a few good ones."""
    folder = tmp_path_factory.mktemp("mixed")
    members = []
    for i in range(40):
        key = f"bad{i:03d}"
        if i % 5 == 0:
            members += [(f"{key}.jpg", image_bytes((200, 10 * i % 255, 30))), (f"{key}.txt", b"a good red one")]
        elif i % 5 == 1:
            members += [(f"{key}.jpg", noise_jpeg(seed=i)[:300]), (f"{key}.txt", b"a cut one")]
        elif i % 5 == 2:
            members.append((f"{key}.jpg", image_bytes()))  # no caption
        else:
            members += [(f"{key}.jpg", b""), (f"{key}.txt", b"an empty one")]
    write_tar(str(folder / "bad.tar"), members)
    shards = os.path.dirname(demo_corpus["train"])
    return f"{shards}/train-{{00000..00000}}.tar::{folder}/bad.tar"


def test_every_training_batch_has_one_shape_per_frame_count(mixed: str) -> None:
    signatures: dict[int, set] = {}
    padded = empty = 0
    for world in (1, 2):  # one rank, and 2 aligned ranks (each gets a batch of the same F at every step)
        for rank in range(world):
            cfg = DataConfig(train=mixed, val=mixed, batch_size=BATCH, num_workers=0, device="cpu", decoder="host",
                             max_text_len=TEXT, shuffle_buffer=8, tokenizer="demo")
            loader = Loader(cfg, mixed, train=True, rank=rank, world_size=world, seed=1, epochs=2)
            for batch in loader:
                f = batch.pixels.shape[1]
                signatures.setdefault(f, set()).add((tuple(batch.pixels.shape), tuple(batch.input_ids.shape),
                                                     tuple(batch.attention_mask.shape), batch.valid is None))
                assert batch.pixels.shape[0] == BATCH and batch.input_ids.shape == (BATCH, TEXT)
                if batch.valid is not None:
                    real = int(batch.valid.sum())
                    padded += 1
                    empty += real == 0
                    assert batch.padded == BATCH - real and all(k == "" for k in batch.keys[real:])
                    assert not batch.valid[real:].any() and batch.valid[:real].all(), "real rows first"
                    assert torch.equal(batch.pixels[real:], torch.zeros_like(batch.pixels[real:]))
                    assert batch.special_mask[real:].all() and (batch.attention_mask[real:].sum(1) == 2).all()
            assert loader.stats.bad, "the mixed set must have had bad samples"
    assert set(signatures) == {1, 4}
    for f, found in signatures.items():
        shapes = {s[:3] for s in found}
        assert shapes == {((BATCH, f, 3, 64, 64), (BATCH, TEXT), (BATCH, TEXT))}, (f, found)
    assert padded > 0 and empty > 0, "the bad shard must produce padded and all-padding batches"
