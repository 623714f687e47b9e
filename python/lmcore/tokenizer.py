"""Character-level tokenizer for lmcore.

The vocabulary is the sorted set of distinct characters (Unicode code points)
of a training text, as in nanoGPT's ``shakespeare_char``: token id ``i`` is the
``i``-th smallest code point.  The tokenizer serialises to a small JSON-able
dict and has a ``fingerprint()`` so that a checkpoint can refuse to be paired
with a tokenizer built from different text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

# Encode strings through UTF-32 so that one code point is one array element;
# "surrogatepass" keeps lone surrogates (legal in Python str) encodable.
_CODEC = "utf-32-le"
_ERRORS = "surrogatepass"
_TOKENIZER_TYPE = "char"


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(_CODEC, _ERRORS), dtype="<u4")


def _id_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    # uint16 halves the memory of an encoded corpus for any vocab that fits.
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


class CharTokenizer:
    """Maps each character of a fixed vocabulary to a dense integer id."""

    def __init__(self, chars: Iterable[str]) -> None:
        vocab = sorted(set(chars))
        if not vocab:
            raise ValueError("cannot build a CharTokenizer from empty text")
        if any(len(c) != 1 for c in vocab):
            raise ValueError("CharTokenizer vocabulary entries must be single characters")
        self._chars: str = "".join(vocab)
        # Sorted code points: encode() maps text to ids with one searchsorted.
        self._codes: np.ndarray = _code_points(self._chars)
        self.dtype = _id_dtype(len(vocab))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    @property
    def chars(self) -> str:
        """The vocabulary, one character per id, in id order."""
        return self._chars

    def encode(self, text: str) -> np.ndarray:
        """Encode ``text`` to a 1-D array of ids (uint16, or uint32 for huge vocabs)."""
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes)
        clipped = np.minimum(ids, self.vocab_size - 1)
        unknown = self._codes[clipped] != codes
        if unknown.any():
            pos = int(np.argmax(unknown))
            ch = text[pos]
            raise ValueError(
                f"character {ch!r} (U+{ord(ch):04X}) at position {pos} "
                f"is not in the tokenizer vocabulary ({self.vocab_size} chars)"
            )
        return ids.astype(self.dtype)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Decode a sequence of ids back to text."""
        arr = ids if isinstance(ids, np.ndarray) else np.array(list(ids), dtype=np.int64)
        if arr.size == 0:
            return ""
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"decode expects a 1-D sequence of integer ids, got {arr.dtype} {arr.shape}")
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"token id {int(arr[np.argmax(bad)])} is out of range for vocab_size {self.vocab_size}"
            )
        return self._codes[arr].astype("<u4").tobytes().decode(_CODEC, _ERRORS)

    def fingerprint(self) -> str:
        """sha256 hex digest of the sorted vocabulary (identifies this tokenizer)."""
        return hashlib.sha256(self._chars.encode("utf-8", _ERRORS)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        # json.dumps escapes non-ASCII and lone surrogates, so this is JSON-safe.
        return {
            "type": _TOKENIZER_TYPE,
            "chars": self._chars,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if d.get("type") != _TOKENIZER_TYPE:
            raise ValueError(f"not a char tokenizer dict (type={d.get('type')!r})")
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise ValueError("char tokenizer dict has no 'chars' string")
        tok = cls(chars)
        # A dict whose chars were reordered or deduplicated would silently
        # change ids; refuse it rather than train on shifted tokens.
        if tok.chars != chars:
            raise ValueError("char tokenizer dict 'chars' is not a sorted, duplicate-free vocabulary")
        expected = d.get("fingerprint")
        if expected is not None and expected != tok.fingerprint():
            raise ValueError("char tokenizer dict fingerprint does not match its chars")
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other._chars == self._chars

    def __hash__(self) -> int:
        return hash(self._chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()[:12]})"
