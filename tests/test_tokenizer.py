"""Tests for lmcore.tokenizer: CharTokenizer and BpeTokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcore.tokenizer import bpe as tokenizer_module
from lmcore.tokenizer import tokenizer_from_dict
from lmcore.tokenizer.bpe import BpeTokenizer
from lmcore.tokenizer.char import CharTokenizer

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


# --- byte-level BPE ---

CORPUS_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
# Training text for the tests' BPE: Shakespeare-like, plus a little of other scripts.
BPE_TEXT = SAMPLE * 20 + "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f600\U0001f600 \u0645\u0631\u062d\u0628\u0627\n" * 5
BPE = BpeTokenizer.train([BPE_TEXT], 300)
VALID_TEXT = st.text(st.characters(exclude_categories=("Cs",)))  # every string UTF-8 can hold


@settings(deadline=None)  # (a loaded machine must not fail it)
@given(VALID_TEXT)
def test_bpe_round_trip_any_valid_unicode(s: str) -> None:
    ids = BPE.encode(s)
    assert ids.dtype == np.uint16 and (ids < BPE.vocab_size).all()
    assert BPE.decode(ids) == s
    assert BPE.decode(ids.tolist()) == s


@settings(deadline=None)  # (a loaded machine must not fail it)
@given(VALID_TEXT, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), VALID_TEXT)
def test_bpe_refuses_lone_surrogates(before: str, surrogate: str, after: str) -> None:
    """A lone surrogate is legal in a Python str but has no UTF-8 bytes: a clear error, not a wrong token."""
    with pytest.raises(ValueError, match=f"lone surrogate U\\+{ord(surrogate):04X} at position {len(before)}"):
        BPE.encode(before + surrogate + after)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab \n\t\r.,'\u00e9\u00a0\u3000\U0001f600", max_size=80), st.lists(st.integers(0, 80)),
       st.integers(1, 12))
def test_bpe_encodes_a_stream_exactly_as_the_whole(text: str, cuts: list[int], piece: int) -> None:
    """Whitespace-heavy text, cut into arbitrary chunks and re-cut into tiny pieces: the same ids."""
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = BPE._hf.encode(text).ids  # the library's own encoding of the whole text
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_module, "_PIECE_CHARS", piece)
        assert np.concatenate([np.zeros(0, np.uint16), *BPE.encode_stream(chunks)]).tolist() == whole
        assert BPE.encode(text).tolist() == whole


@settings(deadline=None)  # (a loaded machine must not fail it)
@given(st.lists(st.integers(0, 299), max_size=40))
def test_bpe_decodes_any_ids_to_printable_text(ids: list[int]) -> None:
    """A model may emit any sequence: decode replaces bytes that are not UTF-8, so the text can be printed,
    and a stream decoder fed one id at a time gives the same text."""
    text = BPE.decode(ids)
    text.encode("utf-8")  # no lone surrogates
    feed = BPE.stream_decoder()
    assert "".join(feed([i]) for i in ids) + feed([], final=True) == text


def test_bpe_stream_decoder_holds_back_partial_characters() -> None:
    ids = BPE.encode("\u00e9\U0001f600")
    feed = BPE.stream_decoder()
    pieces = [feed(ids[i : i + 1]) for i in range(len(ids))]
    assert "".join(pieces) == "\u00e9\U0001f600" and all(p in ("", "\u00e9", "\U0001f600") for p in pieces)


def test_bpe_decode_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="out of range"):
        BPE.decode([0, BPE.vocab_size])


def test_bpe_vocabulary_is_bytes_then_merges() -> None:
    assert BPE.vocab_size == 300 and len(BPE.encode(SAMPLE)) < len(SAMPLE.encode("utf-8")) / 2  # merges learnt
    assert sorted(BPE.token_bytes([i]) for i in range(256)) == [bytes([b]) for b in range(256)]
    # Our byte table is the library's: its own decoder agrees on every token that is whole UTF-8.
    hf = BPE._hf
    for i in range(BPE.vocab_size):
        raw = BPE.token_bytes([i])
        if raw.decode("utf-8", "replace") == raw.decode("utf-8", "ignore"):
            assert hf.decode([i]) == raw.decode("utf-8"), i


def test_bpe_dict_round_trip_through_json() -> None:
    d = json.loads(json.dumps(BPE.to_dict()))
    assert d["type"] == "bpe" and d["vocab_size"] == 300
    for tok in (BpeTokenizer.from_dict(d), tokenizer_from_dict(d)):
        assert tok == BPE and tok.fingerprint() == BPE.fingerprint()
        assert tok.encode(BPE_TEXT).tolist() == BPE.encode(BPE_TEXT).tolist()
    assert tokenizer_from_dict(TOK.to_dict()) == TOK


def _with_json(change) -> dict:
    spec = json.loads(BPE.to_dict()["tokenizer_json"])
    change(spec)
    return {"type": "bpe", "tokenizer_json": json.dumps(spec)}


@pytest.mark.parametrize(
    ("d", "message"),
    [({**BPE.to_dict(), "fingerprint": "0" * 64}, "fingerprint"),
     ({**BPE.to_dict(), "vocab_size": 301}, "vocab_size 301"),
     ({**BPE.to_dict(), "tokenizer_json": "{not json"}, "invalid BPE tokenizer JSON"),
     ({"type": "bpe"}, "no 'tokenizer_json'"),
     ({**BPE.to_dict(), "type": "wordpiece"}, "unknown tokenizer type 'wordpiece'"),
     (_with_json(lambda s: s.update(normalizer={"type": "Lowercase"})), "not a plain byte-level BPE: normalizer"),
     (_with_json(lambda s: s["model"].update(dropout=0.5)), "model.dropout"),
     (_with_json(lambda s: s["model"]["vocab"].pop("\u0120")), "not byte-level|invalid"),
     (_with_json(lambda s: s["model"]["vocab"].update({"x": 5000})), "not 0..n-1")],
    ids=["fingerprint", "vocab-size", "not-json", "no-json", "unknown-type", "normalizer", "dropout",
         "missing-byte", "sparse-ids"],
)
def test_bpe_from_dict_rejects_tampering(d: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokenizer_from_dict(d)


def test_bpe_training_is_deterministic() -> None:
    """Same text and vocab size, however chunked: the same tokenizer (bit-exact resume relies on it)."""
    text = CORPUS_FILE.read_text(encoding="utf-8")[:200_000] if CORPUS_FILE.is_file() else BPE_TEXT * 20
    first = BpeTokenizer.train([text], 600)
    again = BpeTokenizer.train((text[i : i + 777] for i in range(0, len(text), 777)), 600)
    assert again.to_dict() == first.to_dict()
    assert BpeTokenizer.train([text], 601).fingerprint() != first.fingerprint()


@pytest.mark.parametrize("vocab_size", [0, 255, 65_537, 10**9])
def test_bpe_vocab_size_bounds(vocab_size: int) -> None:
    with pytest.raises(ValueError, match="256 \\(one token per byte\\) to 65,536 tokens"):
        BpeTokenizer.train([BPE_TEXT], vocab_size)


def test_bpe_needs_enough_text_for_its_vocabulary() -> None:
    assert BpeTokenizer.train(["ab"], 256).vocab_size == 256
    with pytest.raises(ValueError, match="too few distinct byte pairs for 300 BPE tokens"):
        BpeTokenizer.train(["abab"], 300)


def test_char_tokenizer_from_chunks_and_encode_stream() -> None:
    assert CharTokenizer.from_chunks([SAMPLE[:10], "", SAMPLE[10:]]) == TOK
    assert np.concatenate(list(TOK.encode_stream([SAMPLE[:7], SAMPLE[7:]]))).tolist() == TOK.encode(SAMPLE).tolist()
    with pytest.raises(ValueError, match="'Z' \\(U\\+005A\\) at position 12 "):  # in the whole text, not the chunk
        list(TOK.encode_stream(["All:\n", "Speak, Z"]))
