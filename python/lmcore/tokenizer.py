"""Tokenizers for lmcore: characters (the default) and byte-level BPE.

``CharTokenizer``: the vocabulary is the sorted set of distinct characters (Unicode code points)
of a training text, as in nanoGPT's ``shakespeare_char``: token id ``i`` is the ``i``-th smallest
code point.  ``BpeTokenizer``: a byte-level BPE (GPT-2 style) trained with Hugging Face
``tokenizers``.  Both have the same interface: ``encode`` (str -> uint16/uint32 array),
``encode_stream`` (for corpora too big to encode in one piece), ``decode``, ``stream_decoder``
(for text printed token by token), ``to_dict``/``from_dict`` (JSON-able, stored in checkpoints)
and a ``fingerprint()`` so that a checkpoint can refuse a tokenizer built from different text.

Special tokens (the chat roles' markers, see ``chat_template.py``) are strings with ids of their
own, appended after the ordinary vocabulary. ``encode`` never produces them (text that spells
one gets ordinary tokens); only ``special_id`` and the chat template do. A tokenizer without
specials has exactly the dict and fingerprint it had before they existed, so old checkpoints
and token caches stay valid; ``with_specials`` makes the extended one (another fingerprint).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

# Encode strings through UTF-32 so that one code point is one array element;
# "surrogatepass" keeps lone surrogates (legal in Python str) encodable.
_CODEC = "utf-32-le"
_ERRORS = "surrogatepass"
_TOKENIZER_TYPE = "char"
_SURROGATE_CHAR = re.compile("[\ud800-\udfff]")


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(_CODEC, _ERRORS), dtype="<u4")


def _id_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    # uint16 halves the memory of an encoded corpus for any vocab that fits.
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def _checked_ids(ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """``ids`` as a 1-D integer array, every id in range (or a ValueError naming the first bad one)."""
    arr = ids if isinstance(ids, np.ndarray) else np.array(list(ids), dtype=np.int64)
    if arr.size == 0:
        return arr.reshape(0).astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"decode expects a 1-D sequence of integer ids, got {arr.dtype} {arr.shape}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {int(arr[np.argmax(bad)])} is out of range for vocab_size {vocab_size}")
    return arr


def _checked_specials(specials: Iterable[str]) -> tuple[str, ...]:
    out = tuple(specials)
    if any(not isinstance(t, str) or not t or _SURROGATE_CHAR.search(t) for t in out) or len(set(out)) != len(out):
        raise ValueError(f"special tokens must be distinct, non-empty, valid Unicode strings, got {list(out)[:8]!r}")
    return out


def _with_specials_fingerprint(base: str, specials: tuple[str, ...], chat_template: str | None) -> str:
    """The plain fingerprint when there are no specials; otherwise one that also covers them."""
    if not specials and chat_template is None:
        return base
    extra = json.dumps({"base": base, "specials": specials, "chat_template": chat_template}, separators=(",", ":"))
    return hashlib.sha256(extra.encode("utf-8")).hexdigest()


def _specials_dict(specials: tuple[str, ...], chat_template: str | None) -> dict[str, Any]:
    # Absent, not empty, when unused: an old tokenizer's dict is unchanged.
    return {"specials": list(specials), "chat_template": chat_template} if specials or chat_template else {}


def _specials_from_dict(d: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    specials, template = d.get("specials", []), d.get("chat_template")
    if not isinstance(specials, list) or not (template is None or isinstance(template, str)):
        raise ValueError("tokenizer dict: 'specials' must be a list of strings and 'chat_template' a string")
    return _checked_specials(specials), template


class _SpecialTokens:
    """What both tokenizers share about special tokens: ids after the ordinary vocabulary."""

    _specials: tuple[str, ...]
    chat_template: str | None
    base_vocab_size: int

    @property
    def specials(self) -> tuple[str, ...]:
        """The special tokens, in id order (ids ``base_vocab_size`` and up)."""
        return self._specials

    def special_id(self, token: str) -> int:
        """The id of a special token (a KeyError names the known ones)."""
        try:
            return self.base_vocab_size + self._specials.index(token)
        except ValueError:
            raise KeyError(f"{token!r} is not a special token of this tokenizer "
                           f"(it has {list(self._specials)})") from None

    def apply_chat_template(self, messages: Any, add_generation_prompt: bool = False) -> Any:
        """``chat_template.apply_chat_template`` with this tokenizer: (ids, learn)."""
        from lmcore.chat_template import apply_chat_template

        return apply_chat_template(self, messages, add_generation_prompt)  # type: ignore[arg-type]

    def _specials_after(self, specials: Iterable[str]) -> tuple[str, ...]:
        """This tokenizer's specials followed by those of ``specials`` it lacks (ids never move)."""
        return self._specials + tuple(t for t in dict.fromkeys(specials) if t not in self._specials)


class CharTokenizer(_SpecialTokens):
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
        self._specials = _checked_specials(specials)
        self.chat_template = chat_template
        self.base_vocab_size = len(vocab)
        self.dtype = _id_dtype(self.vocab_size)

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
        arr = _checked_ids(ids, self.vocab_size)
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
        return _with_specials_fingerprint(base, self._specials, self.chat_template)

    def to_dict(self) -> dict[str, Any]:
        # json.dumps escapes non-ASCII and lone surrogates, so this is JSON-safe.
        return {
            "type": _TOKENIZER_TYPE,
            "chars": self._chars,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
            **_specials_dict(self._specials, self.chat_template),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if d.get("type") != _TOKENIZER_TYPE:
            raise ValueError(f"not a char tokenizer dict (type={d.get('type')!r})")
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise ValueError("char tokenizer dict has no 'chars' string")
        tok = cls(chars, *_specials_from_dict(d))
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


# --- byte-level BPE ---

_BPE_TYPE = "bpe"
BPE_MIN_VOCAB = 256  # one token per byte: every text can be encoded
BPE_MAX_VOCAB = 65_536  # ids fit uint16; a larger embedding would dwarf a CPU-sized model
# A space or newline after a non-whitespace character: the GPT-2 pre-tokenizer regex always splits
# there, and how it splits the rest does not depend on the text before, so text cut at such points
# encodes piece by piece exactly as it does whole.  (Python's \S is stricter than the Rust regex's:
# its whitespace is a superset of Unicode White_Space.)
_CUT = re.compile(r"\S[ \n]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Text is encoded in pieces of about this many chars: the library's memory for a call grows with the
# piece (about 200 bytes a token), and 64k chars are as fast as any size.
_PIECE_CHARS = 1 << 16
# Chars held waiting for a cut before cutting anyway (only text without spaces or newlines; there,
# the two sides are encoded as separate texts).
_MAX_UNCUT = 1 << 24


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes: how a byte-level BPE spells its tokens."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = (b for b in range(256) if b not in printable)
    stand_in = {b: 256 + i for i, b in enumerate(others)}
    return [chr(stand_in.get(b, b)) for b in range(256)]


_SYMBOL_BYTE = {symbol: b for b, symbol in enumerate(_byte_symbols())}


def check_bpe_vocab_size(vocab_size: int) -> None:
    if not BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB:
        raise ValueError(f"a byte-level BPE vocabulary must have {BPE_MIN_VOCAB} (one token per byte) to "
                         f"{BPE_MAX_VOCAB:,} tokens, got {vocab_size:,}")


def _hf_bpe() -> Any:
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
        if bad := _SURROGATE.search(chunk):
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


class BpeTokenizer(_SpecialTokens):
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
        template = json.loads(_hf_bpe().to_str())
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
        self._specials = _checked_specials(specials)
        self.chat_template = chat_template
        self.base_vocab_size = len(tokens)
        # Every id's bytes; a special's are its UTF-8 text, which is how it is rendered.
        self._bytes = [bytes(_SYMBOL_BYTE[c] for c in t) for t in tokens] + [t.encode("utf-8") for t in self._specials]
        self.dtype = _id_dtype(self.vocab_size)
        merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
        canonical = json.dumps({"type": _BPE_TYPE, "vocab": tokens, "merges": merges}, separators=(",", ":"))
        self._fingerprint = _with_specials_fingerprint(
            hashlib.sha256(canonical.encode("ascii")).hexdigest(), self._specials, chat_template)

    @classmethod
    def train(cls, chunks: Iterable[str], vocab_size: int) -> BpeTokenizer:
        """Train on the text of ``chunks`` (streamed; memory grows with its distinct words, not its length).

        Deterministic: the same text and vocab size give the same tokenizer, however the text is chunked."""
        from tokenizers import pre_tokenizers, trainers

        check_bpe_vocab_size(vocab_size)
        hf = _hf_bpe()
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
        return b"".join([self._bytes[i] for i in _checked_ids(ids, self.vocab_size).tolist() if i < limit])

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
                "tokenizer_json": self._json, **_specials_dict(self._specials, self.chat_template)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpeTokenizer:
        if d.get("type") != _BPE_TYPE:
            raise ValueError(f"not a bpe tokenizer dict (type={d.get('type')!r})")
        if not isinstance(d.get("tokenizer_json"), str):
            raise ValueError("bpe tokenizer dict has no 'tokenizer_json' string")
        tok = cls(d["tokenizer_json"], *_specials_from_dict(d))
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


Tokenizer = CharTokenizer | BpeTokenizer
TOKENIZER_KINDS: dict[str, type[CharTokenizer] | type[BpeTokenizer]] = {
    _TOKENIZER_TYPE: CharTokenizer, _BPE_TYPE: BpeTokenizer}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer of any kind from its ``to_dict()`` (as stored in a checkpoint)."""
    kind = TOKENIZER_KINDS.get(d.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise ValueError(f"unknown tokenizer type {str(d.get('type'))[:40]!r} (known: {', '.join(TOKENIZER_KINDS)})")
    return kind.from_dict(d)
