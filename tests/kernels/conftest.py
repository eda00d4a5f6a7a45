"""Fixtures shared by the kernel suites."""

from __future__ import annotations

import pytest

from scl_kernels.attention import launch as attn_launch
from tests.utils import poison_


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the attention launchers allocate (outputs, lse, delta, dq/dk/dv) starts as NaN."""
    new_output = attn_launch._new_output
    monkeypatch.setattr(attn_launch, "_new_output", lambda *a, **k: poison_(new_output(*a, **k)))
