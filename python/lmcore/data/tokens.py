"""Tokenized corpora: the tokenizer a new run builds and the token ids of each split, cached on disk.

The text is split by characters before it is tokenized (``split_index``: the first 90% for
training), so char and BPE runs see the same validation text and their bits per character
compare; a BPE is trained on the training text only.  Both are cached in
``<user cache>/lmcore/tokens/`` (next to the downloaded corpus), keyed by the corpus's sha256 and
the tokenizer, so a second run on the same text starts at once:

- ``<corpus sha256>-<kind><vocab size>-<split>.json``: a built tokenizer (its ``to_dict()``);
- ``<corpus sha256>-<tokenizer fingerprint>-<split>-train.npy`` and ``...-val.npy``: the ids of
  each split as plain ``.npy`` arrays (``np.load(path, mmap_mode="r")`` reads them), memory-mapped
  on use. They are written as the text is encoded, so the ids never need to fit in memory: the
  header's length is fixed first and its shape filled in at the end.

Files are written atomically and checked when read (numpy's header, length, dtype, ids in range);
one that does not check out is rebuilt.  A cache that cannot be written costs only time: a warning, and the
ids are kept in memory.  The cache is never pruned; delete the directory to reclaim the space.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmcore.atomic import atomic_writer
from lmcore.data.corpus import Corpus, cache_dir, split_index
from lmcore.tokenizer import Tokenizer, tokenizer_from_dict
from lmcore.tokenizer.bpe import BpeTokenizer
from lmcore.tokenizer.char import CharTokenizer

# A .npy version 1.0 header padded to this many bytes: room for any shape, fixed before it is known.
HEADER_BYTES = 128


@dataclass(frozen=True)
class TokenizedCorpus:
    train: np.ndarray
    val: np.ndarray
    train_chars: int
    val_chars: int

    def bits_per_char(self, loss: float) -> float:
        """A validation loss in nats per token, as bits per character of the validation text."""
        return loss * len(self.val) / self.val_chars / math.log(2)


def token_cache_dir() -> Path:
    return cache_dir() / "tokens"


def build_tokenizer(corpus: Corpus, kind: str, vocab_size: int | None = None, cache: Path | None = None) -> Tokenizer:
    """The tokenizer of a new run: the characters of the whole text, or a BPE of ``vocab_size``
    tokens trained on the training text."""
    split = split_index(corpus.n_chars)
    path = (cache or token_cache_dir()) / f"{corpus.sha256}-{kind}{vocab_size or ''}-{split}.json"
    cached = _read_tokenizer(path)
    if cached is not None and cached.kind == kind and vocab_size in (None, cached.vocab_size):
        return cached
    if kind == "char":
        tok: Tokenizer = CharTokenizer.from_chunks(corpus.chunks(label="finding the characters"))
    elif kind == "bpe" and vocab_size is not None:
        tok = BpeTokenizer.train(corpus.chunks(0, split, label=f"training a {vocab_size}-token BPE"), vocab_size)
    else:
        raise ValueError(f"unknown tokenizer {kind!r} (or a BPE without a vocab size)")
    _store(path, lambda f: f.write(json.dumps(tok.to_dict()).encode("utf-8")))
    return tok


def tokenize(corpus: Corpus, tokenizer: Tokenizer, cache: Path | None = None) -> TokenizedCorpus:
    """The corpus's training and validation ids: memory-mapped from the cache, built into it if missing."""
    split = split_index(corpus.n_chars)
    stem = f"{corpus.sha256}-{tokenizer.fingerprint()}-{split}"
    paths = [(cache or token_cache_dir()) / f"{stem}-{part}.npy" for part in ("train", "val")]
    dtype = np.dtype(tokenizer.dtype).newbyteorder("<")

    def load() -> list[np.ndarray] | None:
        ids = [_load_ids(p, dtype, tokenizer.vocab_size) for p in paths]
        return None if any(i is None for i in ids) else ids  # type: ignore[return-value]

    ids = load()
    if ids is None and all(_store(p, lambda f, part=part: _write_ids(f, part, dtype))
                           for p, part in zip(paths, _encoded_splits(corpus, tokenizer, split))):
        ids = load()
    if ids is None:  # no usable cache: encode into memory
        ids = [np.concatenate([np.zeros(0, dtype), *part]) for part in _encoded_splits(corpus, tokenizer, split)]
    return TokenizedCorpus(ids[0], ids[1], split, corpus.n_chars - split)


def _encoded_splits(corpus: Corpus, tokenizer: Tokenizer, split: int) -> Iterator[Iterator[np.ndarray]]:
    """The ids of the training text, then of the validation text, each as a stream of arrays."""
    for start, end, what in ((0, split, "training"), (split, None, "validation")):
        yield tokenizer.encode_stream(corpus.chunks(start, end, label=f"tokenizing the {what} text"))


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """A .npy 1.0 header for a 1-D array, padded to HEADER_BYTES (numpy reads spaces as padding)."""
    text = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({length},), }}"
    prefix = b"\x93NUMPY\x01\x00" + (HEADER_BYTES - 10).to_bytes(2, "little")
    return prefix + text.ljust(HEADER_BYTES - 11).encode("latin1") + b"\n"


def _write_ids(f: BinaryIO, part: Iterator[np.ndarray], dtype: np.dtype) -> None:
    f.write(_npy_header(dtype, 0))  # the real length is known only at the end
    count = 0
    for ids in part:
        f.write(ids.astype(dtype).tobytes())
        count += len(ids)
    f.seek(0)
    f.write(_npy_header(dtype, count))


def _load_ids(path: Path, dtype: np.dtype, vocab_size: int) -> np.ndarray | None:
    """A split's ids, memory-mapped; None (with a warning if the file exists but is damaged or
    unreadable) when there is no usable one."""
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as e:
        return _warn(f"token cache unreadable ({e.strerror or e}); not using it: {path}")
    except (OSError, ValueError, EOFError) as e:  # numpy's checks of the header and the length
        return _warn(f"token cache file is truncated or damaged ({str(e)[:60]}); rebuilding it: {path}")
    if not isinstance(ids, np.memmap) or ids.dtype != dtype or ids.ndim != 1 or ids.offset != HEADER_BYTES:
        return _warn(f"token cache file holds another kind of array; rebuilding it: {path}")
    if path.stat().st_size != HEADER_BYTES + ids.nbytes:
        return _warn(f"token cache file is truncated or damaged (its length); rebuilding it: {path}")
    if len(ids) and _max_id(path, dtype) >= vocab_size:
        return _warn(f"token cache file holds ids beyond the vocabulary; rebuilding it: {path}")
    return ids


def _max_id(path: Path, dtype: np.dtype) -> int:
    # Read in blocks, not through the memory map: pages read through a map count as the process's RSS.
    top = 0
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while block := f.read(1 << 22):
            top = max(top, int(np.frombuffer(block, dtype).max()))
    return top


def _read_tokenizer(path: Path) -> Tokenizer | None:
    try:
        return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        return _warn(f"cached tokenizer is damaged ({str(e)[:80]}); rebuilding it: {path}")


def _store(path: Path, write: Callable[[BinaryIO], Any]) -> bool:
    """Write a cache file atomically; False (with a warning) if the cache cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as f:
            write(f)
    except OSError as e:
        _warn(f"token cache not written ({e.strerror or e}): {path}")
        return False
    return True


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
