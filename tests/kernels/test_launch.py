"""The host-side launch arithmetic equals Triton's (it replaces triton.cdiv / next_power_of_2 on the call path)."""

from __future__ import annotations

import triton

from scl_kernels._launch import cdiv, dot_block, next_pow2


def test_matches_triton() -> None:
    for n in range(1, 5000):
        assert next_pow2(n) == triton.next_power_of_2(n), n
        assert dot_block(n) == max(16, triton.next_power_of_2(n)), n
        for b in (1, 7, 16, 64, 128):
            assert cdiv(n, b) == triton.cdiv(n, b), (n, b)
