"""Caption tokenisation: truncation to max_text_len, padding to the longest caption, masks, decode round trip."""

from __future__ import annotations

import numpy as np
import pytest

from scl_fast.data import load_tokenizer


def test_truncation_padding_and_masks() -> None:
    tok = load_tokenizer(None, max_len=8)
    long = "one two three four five six seven eight nine ten eleven"
    ids, attention, special = tok.encode_batch(["a red circle", long, "Café AU lait"])
    assert ids.dtype == np.int64 and attention.dtype == bool and special.dtype == bool
    assert ids.shape == (3, 8), "padded to the longest caption, truncated to max_len"
    assert attention.sum(1).tolist() == [5, 8, attention[2].sum()]
    for row, mask in zip(ids, attention, strict=True):
        n = int(mask.sum())
        assert row[0] == tok.cls_id and row[n - 1] == tok.sep_id, "[CLS] first, [SEP] last even when truncated"
        assert (row[n:] == tok.pad_id).all()
    assert (special == (np.isin(ids, [tok.cls_id, tok.sep_id, tok.pad_id]) | ~attention)).all()
    assert not special[attention & ~np.isin(ids, [tok.cls_id, tok.sep_id])].any(), "a word flagged special"
    assert tok.decode(ids[1]) == "one two three four five six"
    assert tok.decode(ids[2]) == tok.normalize("Café AU lait") == "cafe au lait"
    assert tok.mask_id not in (tok.cls_id, tok.sep_id, tok.pad_id) and tok.vocab_size > tok.mask_id


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_len"):
        load_tokenizer(None, max_len=2)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer("/nonexistent/tokenizer")
    with pytest.raises(ValueError, match="at least one"):
        load_tokenizer(None).encode_batch([])
