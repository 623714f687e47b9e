"""Tests for lmcore.tokenizer.CharTokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmcore.tokenizer import CharTokenizer

SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
TOK = CharTokenizer.from_text(SAMPLE)


def test_vocab_is_sorted_unique_chars() -> None:
    assert TOK.chars == "".join(sorted(set(SAMPLE)))
    assert TOK.vocab_size == len(set(SAMPLE))
    assert TOK.encode(TOK.chars).tolist() == list(range(TOK.vocab_size))


def test_encode_dtype_and_values() -> None:
    ids = TOK.encode(SAMPLE)
    assert ids.dtype == np.uint16
    assert ids.shape == (len(SAMPLE),)
    assert [TOK.chars[i] for i in ids] == list(SAMPLE)


@given(st.text(alphabet=sorted(set(SAMPLE))))
def test_round_trip_over_vocab(s: str) -> None:
    assert TOK.decode(TOK.encode(s)) == s


@given(st.text(min_size=1))
def test_round_trip_any_unicode_text(s: str) -> None:
    # Includes astral-plane characters and lone surrogates.
    tok = CharTokenizer.from_text(s)
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(s).tolist()) == s


def test_unknown_character_error_names_it() -> None:
    with pytest.raises(ValueError, match=r"'Z' \(U\+005A\) at position 3"):
        TOK.encode("All" + "Z")


def test_unknown_character_above_vocab_range() -> None:
    with pytest.raises(ValueError, match="U\\+1F600"):
        TOK.encode("\U0001f600")


def test_decode_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="out of range"):
        TOK.decode([0, TOK.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        TOK.decode(np.array([-1]))


def test_decode_empty() -> None:
    assert TOK.decode([]) == ""
    assert TOK.encode("").shape == (0,)


def test_empty_text_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


def test_dict_round_trip_through_json() -> None:
    d = json.loads(json.dumps(TOK.to_dict()))
    tok = CharTokenizer.from_dict(d)
    assert tok == TOK
    assert tok.fingerprint() == TOK.fingerprint()
    assert d["vocab_size"] == TOK.vocab_size


def test_dict_with_surrogates_and_emoji_round_trips() -> None:
    tok = CharTokenizer.from_text("a\ud800\U0001f600")
    assert CharTokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok


def test_from_dict_rejects_tampering() -> None:
    d = TOK.to_dict()
    with pytest.raises(ValueError, match="fingerprint"):
        CharTokenizer.from_dict({**d, "fingerprint": "0" * 64})
    with pytest.raises(ValueError, match="sorted"):
        CharTokenizer.from_dict({**d, "chars": d["chars"][::-1], "fingerprint": None})
    with pytest.raises(ValueError, match="type"):
        CharTokenizer.from_dict({**d, "type": "bpe"})


def test_fingerprint_depends_on_vocab_only() -> None:
    assert CharTokenizer.from_text("abc").fingerprint() == CharTokenizer.from_text("cba").fingerprint()
    assert CharTokenizer.from_text("aabbc").fingerprint() == CharTokenizer.from_text("abc").fingerprint()
    assert CharTokenizer.from_text("abc").fingerprint() != CharTokenizer.from_text("abd").fingerprint()
    assert len(TOK.fingerprint()) == 64


def test_large_vocab_uses_uint32() -> None:
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70000) if not 0xD800 <= c < 0xE000)
    tok = CharTokenizer.from_text(chars)
    assert tok.vocab_size > 65536
    ids = tok.encode(chars[-5:])
    assert ids.dtype == np.uint32
    assert tok.decode(ids) == chars[-5:]
