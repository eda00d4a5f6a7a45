"""Caption tokenisation: truncation to max_text_len, padding to the longest caption, masks, decode round trip."""

from __future__ import annotations

import numpy as np
import pytest

from scl_fast.data import load_tokenizer


@pytest.mark.parametrize("name", [None, "demo"])
def test_truncation_padding_and_masks(name: str | None) -> None:
    tok = load_tokenizer(name, max_len=8)
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
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (101, 102, 0, 103), "BERT-uncased's special ids"
    assert tok.normalize("Café AU lait") == "cafe au lait"
    if attention[2].sum() < 8:  # BERT: whole words
        assert tok.decode(ids[2]) == "cafe au lait"
    else:  # the demo's vocabulary spells these words letter by letter: truncated
        assert "cafe au lait".startswith(tok.decode(ids[2])) and len(tok.decode(ids[2])) >= 4
    assert tok.mask_id not in (tok.cls_id, tok.sep_id, tok.pad_id) and tok.vocab_size > tok.mask_id


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_len"):
        load_tokenizer(None, max_len=2)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer("/nonexistent/tokenizer")
    with pytest.raises(ValueError, match="at least one"):
        load_tokenizer(None).encode_batch([])


def test_demo_tokenizer_covers_the_demo_words_and_fits_the_demo_preset() -> None:
    from scl_fast.config import preset
    from scl_fast.data.demo import DEMO_VOCAB_SIZE, WORDS
    from scl_fast.data.text import check_fits

    tok = load_tokenizer("demo", max_len=50)
    ids, attention, _ = tok.encode_batch(list(WORDS))
    assert (attention.sum(1) == 3).all(), "a demo word split into pieces"  # [CLS] word [SEP]
    assert len(set(ids[:, 1].tolist())) == len(WORDS) and 100 not in ids[:, 1], "a word maps to [UNK] or another"
    ids, attention, _ = tok.encode_batch(["Zebras, 42!"])
    assert 100 not in ids[0], "letters, digits and punctuation spell any ASCII text"
    assert tok.decode(ids[0]) == "zebras, 42!"
    cfg = preset("demo")
    assert tok.vocab_size == DEMO_VOCAB_SIZE == cfg.model.text.vocab_size and cfg.data.tokenizer == "demo"
    text = cfg.model.text
    check_fits(tok, vocab_size=text.vocab_size, pad_token_id=text.pad_token_id, mask_token_id=text.mask_token_id)


def test_a_tokenizer_the_model_cannot_read_is_refused() -> None:
    from scl_fast.data.text import check_fits

    bert = load_tokenizer(None)
    with pytest.raises(ValueError, match=r"30522 tokens but model.text.vocab_size is 512: set --model.text"):
        check_fits(bert, vocab_size=512, pad_token_id=0, mask_token_id=103)
    with pytest.raises(ValueError, match=r"mask id 103 but model.text.mask_token_id is 4: set --model.text.mask_tok"):
        check_fits(bert, vocab_size=30522, pad_token_id=0, mask_token_id=4)
