"""Numerics helpers shared by the tests (one place for the comparison rule)."""

from __future__ import annotations

import torch

# Relative-norm tolerances against an fp64 reference (ARCHITECTURE.md, "Numerics tolerances").
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
# Elementwise absolute scale (xformers / Liger).
ATOL = {torch.float32: 3e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2, torch.float64: 1e-10}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (NaN if either holds NaN/inf)."""
    a, e = actual.detach().double(), expected.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return float("nan")
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float,
    atol: float = 0.0,
    baseline: torch.Tensor | None = None,
    name: str = "tensor",
) -> None:
    """Assert ``actual`` matches ``expected`` (usually an fp64 reference) in relative norm.

    Passes when rel_err(actual) <= rtol, or, with ``baseline`` (the same-dtype PyTorch result), when
    err(actual) <= 2 * err(baseline) + atol (flash-attn's rule: a low-precision kernel may be as wrong as
    PyTorch in that precision, twice over). NaN or inf never passes; the message reports max abs/rel
    error, the mismatch count and the first bad indices.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    bad_a = ~torch.isfinite(a)
    if bad_a.any() or (~torch.isfinite(e)).any():
        idx = bad_a.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(bad_a.sum())} non-finite values in actual (first {idx}) or in expected")
    err = rel_err(a, e)
    ok = err <= rtol
    limit = f"rtol {rtol:.1e}"
    if not ok and baseline is not None:
        base_err = rel_err(baseline, e)
        ok = err <= 2 * base_err + atol
        limit += f" or 2 * baseline {base_err:.2e} + {atol:.1e}"
    if ok:
        return
    diff = (a - e).abs()
    tol = atol + rtol * e.abs()
    mismatch = diff > tol
    first = mismatch.nonzero()[:5].tolist()
    raise AssertionError(
        f"{name}: rel err {err:.3e} > {limit}; max abs {diff.max().item():.3e}, "
        f"max rel {(diff / e.abs().clamp_min(1e-12)).max().item():.3e}, "
        f"{int(mismatch.sum())}/{mismatch.numel()} elements off, first at {first}"
    )


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN so an element the kernel forgets to write fails the test."""
    return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-(2**30))
