"""Fixtures of the data tests: a small demo corpus written once per session."""

from __future__ import annotations

import pytest

from scl_fast.data.dali import dali_available
from scl_fast.data.demo import write_demo_corpus


@pytest.fixture(params=["dali", "host"])
def decoder(request: pytest.FixtureRequest) -> str:
    """Each decoder a test asks for: DALI (the ``dali`` extra, installed by ``.[dev]``) and the host's PIL/PyAV."""
    if request.param == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed (pip install 'scl_fast[dali]')")
    return request.param


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """60 + 16 train, 20 + 8 val samples: enough for several batches of each kind, seconds to write."""
    out = tmp_path_factory.mktemp("demo") / "corpus"
    return write_demo_corpus(str(out), train_images=60, train_videos=16, val_images=20, val_videos=8, seed=1)
