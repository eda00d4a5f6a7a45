"""Shared fixtures of the training tests: one small demo corpus per session, short-run overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_CORPUS = ["--data.demo_train_images", "96", "--data.demo_train_videos", "32", "--data.demo_val_images", "24",
                "--data.demo_val_videos", "16"]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo corpus, written once per session (the trainer writes it on first use otherwise)."""
    from scl_fast.data import ensure_demo_corpus

    cache = tmp_path_factory.mktemp("demo_cache")
    ensure_demo_corpus(str(cache), train_images=96, train_videos=32, val_images=24, val_videos=16)
    return cache


def short_run_args(cache: Path, run_dir: Path, *, steps: int = 6, batch: int = 8, extra: list[str] | None = None
                   ) -> list[str]:
    """Overrides for a few-step run on the small corpus (log and checkpoint often, one loader worker)."""
    return ["--train.steps", str(steps), "--train.run_dir", str(run_dir), "--train.log_every", "2",
            "--data.cache_dir", str(cache), "--data.batch_size", str(batch), "--data.num_workers", "1",
            "--data.shuffle_buffer", "16", *SMALL_CORPUS, *(extra or [])]


# A much smaller SCLModel than the demo preset, for subprocess tests whose subject is the loop, not the model.
TINY_MODEL = ["--model.vision.width", "32", "--model.vision.layers", "1", "--model.vision.heads", "2",
              "--model.text.width", "32", "--model.text.layers", "1", "--model.text.heads", "2",
              "--model.text.intermediate", "64", "--model.fusion.width", "32", "--model.fusion.layers", "1",
              "--model.fusion.heads", "2", "--model.fusion.intermediate", "64", "--model.loss.itc_dim", "32"]
