"""The byte-level BPE tokenizer (GPT-2 style), trained with Hugging Face ``tokenizers``: any text
becomes UTF-8 bytes, merged into at most ``vocab_size`` tokens; text too big for memory is encoded
piece by piece, cut where the pieces encode as the whole does."""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from lmcore.tokenizer.base import LONE_SURROGATE, SpecialTokens, checked_ids, id_dtype, specials_from_dict

_BPE_TYPE = "bpe"
BPE_MIN_VOCAB = 256  # one token per byte: every text can be encoded
BPE_MAX_VOCAB = 65_536  # ids fit uint16; a larger embedding would dwarf a CPU-sized model
# A space or newline after a non-whitespace character: the GPT-2 pre-tokenizer regex always splits
# there, and how it splits the rest does not depend on the text before, so text cut at such points
# encodes piece by piece exactly as it does whole.  (Python's \S is stricter than the Rust regex's:
# its whitespace is a superset of Unicode White_Space.)
_CUT = re.compile(r"\S[ \n]")
# Text is encoded in pieces of about this many chars: the library's memory for a call grows with the
# piece (about 200 bytes a token), and 64k chars are as fast as any size.
_PIECE_CHARS = 1 << 16
# Chars held waiting for a cut before cutting anyway (only text without spaces or newlines; there,
# the two sides are encoded as separate texts).
_MAX_UNCUT = 1 << 24


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes: how a byte-level BPE spells its tokens."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = (b for b in range(256) if b not in printable)
    stand_in = {b: 256 + i for i, b in enumerate(others)}
    return [chr(stand_in.get(b, b)) for b in range(256)]


_SYMBOL_BYTE = {symbol: b for b, symbol in enumerate(byte_symbols())}


def check_bpe_vocab_size(vocab_size: int) -> None:
    if not BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB:
        raise ValueError(f"a byte-level BPE vocabulary must have {BPE_MIN_VOCAB} (one token per byte) to "
                         f"{BPE_MAX_VOCAB:,} tokens, got {vocab_size:,}")


def hf_bpe() -> Any:
    """An untrained byte-level BPE of Hugging Face ``tokenizers`` (imported here: char runs never load it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _cut_pieces(chunks: Iterable[str]) -> Iterator[str]:
    """The text of ``chunks`` re-cut at safe points (``_CUT``) into pieces of about ``_PIECE_CHARS``;
    refuses lone surrogates, which UTF-8 cannot hold."""
    carry, seen = "", 0
    for chunk in chunks:
        if bad := LONE_SURROGATE.search(chunk):
            raise ValueError(f"lone surrogate U+{ord(bad.group()):04X} at position {seen + bad.start()} "
                             "cannot be encoded as UTF-8, so not by a byte-level BPE")
        seen += len(chunk)
        text, pos = carry + chunk, 0
        while len(text) - pos > _PIECE_CHARS:
            cut = _last_cut(text, pos, pos + _PIECE_CHARS)
            if cut == pos:  # no cut within a piece's length: the first one after it, if any
                after = _CUT.search(text, pos + _PIECE_CHARS)
                cut = after.start() + 1 if after else len(text) if len(text) - pos > _MAX_UNCUT else pos
            if cut == pos:
                break  # wait for more text
            yield text[pos:cut]
            pos = cut
        carry = text[pos:]
    if carry:
        yield carry


def _last_cut(text: str, lo: int, hi: int) -> int:
    """The last safe cut in ``text[lo:hi + 1]`` (``lo`` if there is none), searching back from ``hi``."""
    window = 4096
    while True:
        start = max(lo, hi - window)
        last = None
        for last in _CUT.finditer(text, start, hi + 1):  # noqa: B007 (only the last match is wanted)
            pass
        if last is not None:
            return last.start() + 1
        if start == lo:
            return lo
        window *= 16


class BpeTokenizer(SpecialTokens):
    """A byte-level BPE: any text becomes UTF-8 bytes, merged into at most ``vocab_size`` tokens.

    ``decode(encode(s)) == s`` for every string that is valid Unicode; a lone surrogate (legal in a
    Python str, not in UTF-8) is refused by ``encode``.  ``decode`` of an arbitrary id sequence (a
    model's output) replaces bytes that are not valid UTF-8 with U+FFFD, so it is always printable.
    """

    kind = _BPE_TYPE

    def __init__(self, tokenizer_json: str, specials: Iterable[str] = (), chat_template: str | None = None) -> None:
        """From the JSON of a tokenizer made by ``train`` (checked: anything else is a ValueError);
        ``specials`` live outside the library's tokenizer, so ``encode`` can never produce them."""
        from tokenizers import Tokenizer

        try:
            hf = Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # noqa: BLE001 (the Rust parser's errors share no Python base class)
            raise ValueError(f"invalid BPE tokenizer JSON: {str(e)[:200]}") from None
        self._json: str = hf.to_str()  # the library's own normal form
        spec = json.loads(self._json)
        template = json.loads(hf_bpe().to_str())
        fixed = {**{k: v for k, v in template.items() if k != "model"},
                 **{f"model.{k}": v for k, v in template["model"].items() if k not in ("vocab", "merges")}}
        for key, want in fixed.items():
            have = spec["model"].get(key[6:]) if key.startswith("model.") else spec.get(key)
            if have != want:
                raise ValueError(f"not a plain byte-level BPE: {key} is {str(have)[:60]}, expected {want}")
        vocab: dict[str, int] = spec["model"]["vocab"]
        tokens = sorted(vocab, key=vocab.__getitem__)
        if [vocab[t] for t in tokens] != list(range(len(tokens))) or len(tokens) > BPE_MAX_VOCAB:
            raise ValueError(f"BPE vocabulary ids are not 0..n-1 with n <= {BPE_MAX_VOCAB:,}")
        if not _SYMBOL_BYTE.keys() <= vocab.keys() or any(not _SYMBOL_BYTE.keys() >= set(t) for t in tokens):
            raise ValueError("BPE vocabulary is not byte-level: it lacks a byte or has a token that is not bytes")
        self._hf = hf
        self._set_specials(specials, chat_template, len(tokens))
        # Every id's bytes; a special's are its UTF-8 text, which is how it is rendered.
        self._bytes = [bytes(_SYMBOL_BYTE[c] for c in t) for t in tokens] + [t.encode("utf-8") for t in self._specials]
        self.dtype = id_dtype(self.vocab_size)
        merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
        canonical = json.dumps({"type": _BPE_TYPE, "vocab": tokens, "merges": merges}, separators=(",", ":"))
        self._fingerprint = self._with_specials_fingerprint(hashlib.sha256(canonical.encode("ascii")).hexdigest())

    @classmethod
    def train(cls, chunks: Iterable[str], vocab_size: int) -> BpeTokenizer:
        """Train on the text of ``chunks`` (streamed; memory grows with its distinct words, not its length).

        Deterministic: the same text and vocab size give the same tokenizer, however the text is chunked."""
        from tokenizers import pre_tokenizers, trainers

        check_bpe_vocab_size(vocab_size)
        hf = hf_bpe()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        hf.train_from_iterator(_cut_pieces(chunks), trainer)
        tok = cls(hf.to_str())
        if tok.vocab_size < vocab_size:
            raise ValueError(f"the training text has too few distinct byte pairs for {vocab_size:,} BPE tokens "
                             f"(it gives {tok.vocab_size:,}); ask for fewer or give more text")
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def with_specials(self, specials: Iterable[str], chat_template: str | None = None) -> BpeTokenizer:
        """This tokenizer with ``specials`` appended (those it lacks); ordinary ids are unchanged."""
        return BpeTokenizer(self._json, self._specials_after(specials), chat_template or self.chat_template)

    def encode(self, text: str) -> np.ndarray:
        """Encode ``text`` to a 1-D array of uint16 ids."""
        pieces = list(self.encode_stream([text]))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def encode_stream(self, chunks: Iterable[str]) -> Iterator[np.ndarray]:
        """The ids of the concatenated chunks, piece by piece (equal to encoding the whole)."""
        for piece in _cut_pieces(chunks):
            yield np.array(self._hf.encode(piece, add_special_tokens=False).ids, dtype=self.dtype)

    def token_bytes(self, ids: Iterable[int] | np.ndarray, skip_special: bool = False) -> bytes:
        """The bytes the ids stand for (not necessarily valid UTF-8: a model may emit any sequence);
        a special token's are its text's, or none with ``skip_special``."""
        limit = self.base_vocab_size if skip_special else self.vocab_size
        return b"".join([self._bytes[i] for i in checked_ids(ids, self.vocab_size).tolist() if i < limit])

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special: bool = False) -> str:
        return self.token_bytes(ids, skip_special).decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = False) -> Callable[..., str]:
        """``feed(ids, final=False) -> str``: a character split over several tokens comes out whole."""
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        return lambda ids, final=False: utf8.decode(self.token_bytes(ids, skip_special), final)

    def fingerprint(self) -> str:
        """sha256 of the vocabulary and merges, in order (the same across ``tokenizers`` versions)."""
        return self._fingerprint

    def to_dict(self) -> dict[str, Any]:
        return {"type": _BPE_TYPE, "vocab_size": self.vocab_size, "fingerprint": self._fingerprint,
                "tokenizer_json": self._json, **self._specials_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpeTokenizer:
        if d.get("type") != _BPE_TYPE:
            raise ValueError(f"not a bpe tokenizer dict (type={d.get('type')!r})")
        if not isinstance(d.get("tokenizer_json"), str):
            raise ValueError("bpe tokenizer dict has no 'tokenizer_json' string")
        tok = cls(d["tokenizer_json"], *specials_from_dict(d))
        if d.get("fingerprint") not in (None, tok.fingerprint()):
            raise ValueError("bpe tokenizer dict fingerprint does not match its vocabulary and merges")
        if d.get("vocab_size") not in (None, tok.vocab_size):
            raise ValueError(f"bpe tokenizer dict says vocab_size {d['vocab_size']!r}, its vocabulary has {tok.vocab_size}")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BpeTokenizer) and other._fingerprint == self._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"BpeTokenizer(vocab_size={self.vocab_size}, fingerprint={self._fingerprint[:12]})"

