"""Tokenizers for lmcore: characters (the default, ``char.py``) and byte-level BPE (``bpe.py``).

Both have the same interface: ``encode`` (str -> uint16/uint32 array), ``encode_stream`` (for
corpora too big to encode in one piece), ``decode``, ``stream_decoder`` (for text printed token by
token), ``to_dict``/``from_dict`` (JSON-able, stored in checkpoints), a ``fingerprint()`` so that a
checkpoint can refuse a tokenizer built from different text, and the special tokens of ``base.py``.
"""

from __future__ import annotations

from typing import Any

from lmcore.tokenizer.bpe import BpeTokenizer
from lmcore.tokenizer.char import CharTokenizer

Tokenizer = CharTokenizer | BpeTokenizer
TOKENIZER_KINDS: dict[str, type[CharTokenizer] | type[BpeTokenizer]] = {
    CharTokenizer.kind: CharTokenizer, BpeTokenizer.kind: BpeTokenizer}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer of any kind from its ``to_dict()`` (as stored in a checkpoint)."""
    kind = TOKENIZER_KINDS.get(d.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise ValueError(f"unknown tokenizer type {str(d.get('type'))[:40]!r} (known: {', '.join(TOKENIZER_KINDS)})")
    return kind.from_dict(d)
