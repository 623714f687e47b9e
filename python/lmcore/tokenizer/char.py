"""The character tokenizer (lmcore's default): the vocabulary is the sorted set of distinct
characters (Unicode code points) of a training text, as in nanoGPT's ``shakespeare_char``: token id
``i`` is the ``i``-th smallest code point."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from lmcore.tokenizer.base import SpecialTokens, checked_ids, id_dtype, specials_from_dict

# Encode strings through UTF-32 so that one code point is one array element;
# "surrogatepass" keeps lone surrogates (legal in Python str) encodable.
_CODEC = "utf-32-le"
_ERRORS = "surrogatepass"
_TOKENIZER_TYPE = "char"


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(_CODEC, _ERRORS), dtype="<u4")



class CharTokenizer(SpecialTokens):
    """Maps each character of a fixed vocabulary to a dense integer id."""

    kind = _TOKENIZER_TYPE

    def __init__(self, chars: Iterable[str], specials: Iterable[str] = (), chat_template: str | None = None) -> None:
        vocab = sorted(set(chars))
        if not vocab:
            raise ValueError("cannot build a CharTokenizer from empty text")
        if any(len(c) != 1 for c in vocab):
            raise ValueError("CharTokenizer vocabulary entries must be single characters")
        self._chars: str = "".join(vocab)
        # Sorted code points: encode() maps text to ids with one searchsorted.
        self._codes: np.ndarray = _code_points(self._chars)
        self._set_specials(specials, chat_template, len(vocab))
        self.dtype = id_dtype(self.vocab_size)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    @classmethod
    def from_chunks(cls, chunks: Iterable[str]) -> CharTokenizer:
        """The vocabulary of a text given in pieces (a corpus streamed from disk)."""
        chars: set[str] = set()
        for chunk in chunks:
            chars.update(chunk)
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self._chars) + len(self._specials)

    def with_specials(self, specials: Iterable[str], chat_template: str | None = None) -> CharTokenizer:
        """This tokenizer with ``specials`` appended (those it lacks); ordinary ids are unchanged."""
        return CharTokenizer(self._chars, self._specials_after(specials), chat_template or self.chat_template)

    @property
    def chars(self) -> str:
        """The vocabulary, one character per id, in id order."""
        return self._chars

    def encode(self, text: str, offset: int = 0) -> np.ndarray:
        """Encode ``text`` to a 1-D array of ids (uint16, or uint32 for huge vocabs); an error names the
        position of an unknown character (plus ``offset``: where ``text`` starts in a longer one)."""
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes)
        clipped = np.minimum(ids, self.base_vocab_size - 1)
        unknown = self._codes[clipped] != codes
        if unknown.any():
            pos = int(np.argmax(unknown))
            ch = text[pos]
            raise ValueError(
                f"character {ch!r} (U+{ord(ch):04X}) at position {offset + pos} "
                f"is not in the tokenizer vocabulary ({self.base_vocab_size} chars)"
            )
        return ids.astype(self.dtype)

    def encode_stream(self, chunks: Iterable[str]) -> Iterator[np.ndarray]:
        """The ids of the concatenated chunks, piece by piece (equal to encoding the whole)."""
        seen = 0
        for chunk in chunks:
            yield self.encode(chunk, seen)
            seen += len(chunk)

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special: bool = False) -> str:
        """Decode a sequence of ids back to text; special tokens as their text, or left out."""
        arr = checked_ids(ids, self.vocab_size)
        special = arr >= self.base_vocab_size
        if not special.any():
            return self._codes[arr].astype("<u4").tobytes().decode(_CODEC, _ERRORS)
        # Runs of ordinary ids between the specials.
        cuts = np.flatnonzero(special)
        parts, start = [], 0
        for c in cuts.tolist():
            parts.append(self.decode(arr[start:c]))
            if not skip_special:
                parts.append(self._specials[int(arr[c]) - self.base_vocab_size])
            start = c + 1
        parts.append(self.decode(arr[start:]))
        return "".join(parts)

    def stream_decoder(self, skip_special: bool = False) -> Callable[..., str]:
        """``feed(ids, final=False) -> str``: the text of ids arriving a few at a time."""
        return lambda ids, final=False: self.decode(ids, skip_special)

    def fingerprint(self) -> str:
        """sha256 hex digest of the sorted vocabulary (and of the specials, if any)."""
        base = hashlib.sha256(self._chars.encode("utf-8", _ERRORS)).hexdigest()
        return self._with_specials_fingerprint(base)

    def to_dict(self) -> dict[str, Any]:
        # json.dumps escapes non-ASCII and lone surrogates, so this is JSON-safe.
        return {
            "type": _TOKENIZER_TYPE,
            "chars": self._chars,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
            **self._specials_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if d.get("type") != _TOKENIZER_TYPE:
            raise ValueError(f"not a char tokenizer dict (type={d.get('type')!r})")
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise ValueError("char tokenizer dict has no 'chars' string")
        tok = cls(chars, *specials_from_dict(d))
        # A dict whose chars were reordered or deduplicated would silently
        # change ids; refuse it rather than train on shifted tokens.
        if tok.chars != chars:
            raise ValueError("char tokenizer dict 'chars' is not a sorted, duplicate-free vocabulary")
        expected = d.get("fingerprint")
        if expected is not None and expected != tok.fingerprint():
            raise ValueError("char tokenizer dict fingerprint does not match its chars")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, tuple[str, ...], str | None]:
        return self._chars, self._specials, self.chat_template

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()[:12]})"

