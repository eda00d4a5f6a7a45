"""Statistics of the generator-driven masks: what each draw must satisfy exactly, and chi-square / binomial tests
of what it must satisfy in distribution.

Every test is seeded (tests/conftest.py and explicit generators), so a pass or a failure reproduces; the
significance level 1e-3 keeps a correct kernel from failing by bad luck on some other seed while a biased one
(e.g. a lost tie rule, a constant philox counter, a 70/20/10 split) fails by orders of magnitude.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy import stats

import scl_kernels
from scl_kernels.masking import keep_count

ALPHA = 1e-3
BACKENDS = ("reference", "native", "triton")


def _rows(backend: str, n: int) -> int:
    """The interpreter runs one program (one row) at ~0.05-0.1 s: Triton gets 1/13 of the rows on CPU (each test
    still expects >= 14 draws per chi-square cell)."""
    return n // 13 if backend == "triton" and not torch.cuda.is_available() else n


def _position_codes(b: int, frames: int, p: int) -> torch.Tensor:
    """(B, F*P, 1) tokens whose value encodes (frame, position): kept tokens reveal what was taken."""
    f = torch.arange(frames).repeat_interleave(p)
    pos = torch.arange(p).repeat(frames)
    return (f * 1000 + pos).float()[None, :, None].expand(b, frames * p, 1).contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_uniform_subsets(backend):
    """P = 5, K = 2: each of the 10 subsets equally likely (chi-square), hence each position kept w.p. K/P."""
    b, p, ratio = _rows(backend, 2000), 5, 0.5
    keep = keep_count(p, ratio)
    assert keep == 2
    x = _position_codes(b, 1, p)
    _, ids = scl_kernels.random_masking(x, ratio, generator=torch.Generator().manual_seed(11), backend=backend)
    subsets = list(itertools.combinations(range(p), keep))
    index = {s: i for i, s in enumerate(subsets)}
    counts = torch.zeros(len(subsets))
    for row in ids.tolist():
        counts[index[tuple(row)]] += 1  # KeyError if a row is not an ascending subset without duplicates
    assert stats.chisquare(counts.numpy()).pvalue > ALPHA, counts.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_position_frequency_and_frames(backend):
    """P = 49, keep 0.2 (K = 9), 4 frames: each position kept w.p. K/P (chi-square), ids strictly ascending,
    and every frame keeps the same positions."""
    b, p, frames, ratio = _rows(backend, 1000), 49, 4, 0.2
    keep = keep_count(p, ratio)
    x = _position_codes(b, frames, p)
    kept, ids = scl_kernels.random_masking(x, ratio, frames=frames, generator=torch.Generator().manual_seed(5),
                                           backend=backend)
    assert ids.shape == (b, keep)
    assert (ids[:, 1:] > ids[:, :-1]).all(), "ids must be strictly ascending (so no duplicates)"
    assert ((ids >= 0) & (ids < p)).all()
    codes = kept[..., 0].reshape(b, frames, keep).long()
    assert torch.equal(codes % 1000, ids[:, None, :].expand(b, frames, keep)), "frames must share the subset"
    assert torch.equal(codes // 1000, torch.arange(frames)[None, :, None].expand(b, frames, keep))
    counts = torch.bincount(ids.flatten(), minlength=p).double()
    assert stats.chisquare(counts.numpy()).pvalue > ALPHA, counts.tolist()
    # rows differ: the philox counter / the noise really is per sample
    assert len({tuple(r) for r in ids.tolist()}) > b * 0.99


def _text_batch(b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(10, 30000, (b, length))
    special = torch.zeros(b, length, dtype=torch.bool)
    lengths = torch.randint(2, length + 1, (b,))
    for i in range(b):
        special[i, 0] = True
        special[i, lengths[i] - 1 :] = True  # [SEP] and padding
    special[0] = True  # a row without real tokens
    return ids, special


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlm_mask_statistics(backend):
    b, length, p, vocab, mask_id = 256, 96, 0.15, 30000, 4
    ids, special = _text_batch(b, length)
    out, labels = scl_kernels.mlm_mask(ids, special, p=p, vocab_size=vocab, mask_id=mask_id,
                                       generator=torch.Generator().manual_seed(2), backend=backend)
    chosen = labels != -100
    # exact properties of every draw
    assert not (chosen & special).any(), "special and padding tokens are never chosen"
    assert torch.equal(labels[chosen], ids[chosen]), "labels hold the original ids"
    assert torch.equal(out[~chosen], ids[~chosen]), "unchosen tokens are untouched"
    assert ((out >= 0) & (out < vocab)).all()
    # masked fraction ~ p among real tokens (exact binomial test)
    n_real, n_chosen = int((~special).sum()), int(chosen.sum())
    assert stats.binomtest(n_chosen, n_real, p).pvalue > ALPHA, (n_chosen, n_real)
    # 80 / 10 / 10 among the chosen: [MASK] / another token / unchanged (a random token equal to the original,
    # probability 1/30000, counts as unchanged: far below the test's resolution)
    is_mask = out[chosen] == mask_id
    is_same = out[chosen] == ids[chosen]
    is_rand = ~is_mask & ~is_same
    counts = [int(is_mask.sum()), int(is_rand.sum()), int(is_same.sum())]
    expected = [n_chosen * 0.8, n_chosen * 0.1, n_chosen * 0.1]
    assert stats.chisquare(counts, expected).pvalue > ALPHA, counts
    # random replacements spread over the vocabulary (not a constant, not stuck low)
    rand_tokens = out[chosen][is_rand]
    assert rand_tokens.unique().numel() > 0.9 * rand_tokens.numel()
    halves = [int((rand_tokens < vocab // 2).sum()), int((rand_tokens >= vocab // 2).sum())]
    assert stats.chisquare(halves).pvalue > ALPHA, halves


@pytest.mark.parametrize("backend", BACKENDS)
def test_scl_text_mask_statistics(backend):
    b, length, ratio, mask_id = _rows(backend, 1000), 40, 0.4, 4
    ids, special = _text_batch(b, length)
    half = b // 2
    special[1:half, 1:12] = False  # rows 1..half-1: real tokens exactly at 1..11 (n_real = 11, count 4)
    special[1:half, 12:] = True
    out = scl_kernels.scl_text_mask(ids, special, ratio=ratio, mask_id=mask_id,
                                    generator=torch.Generator().manual_seed(9), backend=backend)
    masked = out != ids
    assert not (masked & special).any(), "special and padding tokens are never masked"
    assert (out[masked] == mask_id).all(), "every masked token becomes [MASK] (no 80/10/10)"
    n_real = (~special).sum(1)
    expected = torch.clamp((n_real.double() * ratio).round().long(), min=1).minimum(n_real)
    assert torch.equal(masked.sum(1), expected), "exactly round(ratio * n_real) per row, at least one"
    # positions drawn uniformly among the real tokens (chi-square over the 11 positions of the fixed rows)
    counts = masked[1:half, 1:12].sum(0).double()
    assert stats.chisquare(counts.numpy()).pvalue > ALPHA, counts.tolist()
