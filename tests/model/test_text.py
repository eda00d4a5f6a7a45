"""The BERT/RoBERTa-style text encoder: padding, positions, backends, parameter names (HF equality itself is
tested in test_convert.py on real and tiny HF checkpoints)."""

from __future__ import annotations

import pytest
import torch

from scl_fast.model.attention import set_attn_backend
from scl_fast.model.config import TextConfig
from scl_fast.model.text import TextEncoder
from tests.utils import assert_close


def _encoder(**kw: object) -> TextEncoder:
    torch.manual_seed(0)
    cfg = TextConfig(**({"vocab_size": 120, "width": 32, "layers": 2, "heads": 2, "intermediate": 64,
                         "max_positions": 40, "dropout": 0.0} | kw))
    return TextEncoder(cfg, attn_backend="eager").double().eval()


def _batch(pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 120, (3, 9))
    mask = torch.arange(9)[None] < torch.tensor([9, 5, 2])[:, None]
    return ids.masked_fill(~mask, pad), mask


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_padding_is_invisible(backend: str) -> None:
    """Real tokens' outputs do not depend on what is padded, nor on how much padding follows (BERT positions)."""
    enc = _encoder()
    set_attn_backend(enc, backend)
    ids, mask = _batch()
    out = enc(ids, mask)
    other = ids.clone()
    other[~mask] = torch.randint(5, 120, (int((~mask).sum()),))
    assert_close(enc(other, mask)[mask], out[mask], rtol=1e-12, name="padded ids")
    longer_ids = torch.cat([ids, torch.zeros(3, 4, dtype=ids.dtype)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    assert_close(enc(longer_ids, longer_mask)[:, :9][mask], out[mask], rtol=1e-12, name="longer padding")


def test_backends_agree() -> None:
    enc = _encoder()
    ids, mask = _batch()
    ref = enc(ids, mask)
    set_attn_backend(enc, "sdpa")
    assert_close(enc(ids, mask), ref, rtol=1e-12, name="sdpa vs eager")


def test_roberta_positions() -> None:
    """RoBERTa: positions count real tokens from pad+1; padding sits at pad_token_id (HF's rule)."""
    enc = _encoder(pad_token_id=1, position_offset=2, max_positions=42)
    ids, mask = _batch(pad=1)
    pos = enc.embeddings.position_ids(ids)
    expected = torch.where(mask, torch.arange(9)[None] + 2, torch.ones_like(ids))
    assert torch.equal(pos, expected)
    with pytest.raises(ValueError, match="max_positions"):
        enc(torch.full((1, 41), 7), torch.ones(1, 41, dtype=torch.bool))


def test_hf_parameter_names() -> None:
    """Names mirror HF BertModel (the converter relies on it)."""
    names = set(dict(_encoder().named_parameters()))
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                 "encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.output.dense.bias",
                 "encoder.layer.1.attention.output.LayerNorm.weight", "encoder.layer.1.intermediate.dense.weight",
                 "encoder.layer.1.output.dense.weight", "encoder.layer.1.output.LayerNorm.bias"):
        assert name in names, name


def test_bad_shapes() -> None:
    enc = _encoder()
    with pytest.raises(ValueError, match="must both be"):
        enc(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
