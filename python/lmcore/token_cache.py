"""Tokenized corpora: the tokenizer a new run builds and the token ids of each split, cached on disk.

The text is split by characters before it is tokenized (``split_index``: the first 90% for
training), so char and BPE runs see the same validation text and their bits per character
compare; a BPE is trained on the training text only.  Both are cached in
``<user cache>/lmcore/tokens/`` (next to the downloaded corpus), keyed by the corpus's sha256 and
the tokenizer, so a second run on the same text starts at once:

- ``<corpus sha256>-<kind><vocab size>-<split>.json``: a built tokenizer (its ``to_dict()``);
- ``<corpus sha256>-<tokenizer fingerprint>.tokens``: a header (``MAGIC``, then JSON padded to
  ``HEADER_BYTES``) followed by the training ids and the validation ids, memory-mapped on use.

Files are written atomically and checked when read (header, length, dtype, ids in range); one that
does not check out is rebuilt.  A cache that cannot be written costs only time: a warning, and the
ids are kept in memory.  The cache is never pruned; delete the directory to reclaim the space.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmcore.atomic import atomic_writer
from lmcore.corpus import Corpus, cache_dir, split_index
from lmcore.tokenizer import BpeTokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

MAGIC = b"lmcore-tokens 1\n"
HEADER_BYTES = 512


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
    path = (cache or token_cache_dir()) / f"{corpus.sha256}-{tokenizer.fingerprint()}.tokens"
    key = {"corpus_sha256": corpus.sha256, "tokenizer": tokenizer.fingerprint(), "split_char": split,
           "dtype": np.dtype(tokenizer.dtype).newbyteorder("<").str}
    ids = _load_ids(path, key, tokenizer.vocab_size)
    if ids is None and _store(path, lambda f: _write_ids(f, _encoded_splits(corpus, tokenizer, split), key)):
        ids = _load_ids(path, key, tokenizer.vocab_size)
    if ids is None:  # no usable cache: encode into memory
        ids = tuple(np.concatenate([np.zeros(0, tokenizer.dtype), *part])
                    for part in _encoded_splits(corpus, tokenizer, split))
    return TokenizedCorpus(ids[0], ids[1], split, corpus.n_chars - split)


def _encoded_splits(corpus: Corpus, tokenizer: Tokenizer, split: int) -> Iterator[Iterator[np.ndarray]]:
    """The ids of the training text, then of the validation text, each as a stream of arrays."""
    for start, end, what in ((0, split, "training"), (split, None, "validation")):
        yield tokenizer.encode_stream(corpus.chunks(start, end, label=f"tokenizing the {what} text"))


def _write_ids(f: BinaryIO, splits: Iterator[Iterator[np.ndarray]], key: dict[str, Any]) -> None:
    f.write(bytes(HEADER_BYTES))  # the header, written once the counts are known
    counts = []
    for part in splits:
        counts.append(0)
        for ids in part:
            f.write(ids.astype(key["dtype"]).tobytes())
            counts[-1] += len(ids)
    header = MAGIC + json.dumps({**key, "n_train": counts[0], "n_val": counts[1]}, sort_keys=True).encode()
    f.seek(0)
    f.write(header.ljust(HEADER_BYTES, b" "))


def _load_ids(path: Path, key: dict[str, Any], vocab_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The (train, val) ids of a cache file, memory-mapped; None (with a warning if it exists but is
    damaged or unreadable) when there is no usable one."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(HEADER_BYTES), os.fstat(f.fileno()).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return _warn(f"token cache unreadable ({e.strerror or e}); not using it: {path}")
    try:
        fields = json.loads(head[len(MAGIC):]) if head.startswith(MAGIC) else None
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or any(fields.get(k) != v for k, v in key.items()):
        return _warn(f"token cache file has a damaged or foreign header; rebuilding it: {path}")
    n_train, n_val = fields.get("n_train"), fields.get("n_val")
    itemsize = np.dtype(key["dtype"]).itemsize
    if not (type(n_train) is int and type(n_val) is int and n_train >= 0 and n_val >= 0
            and n_train + n_val > 0 and size == HEADER_BYTES + (n_train + n_val) * itemsize):
        return _warn(f"token cache file is truncated or has a damaged header; rebuilding it: {path}")
    if _max_id(path, key["dtype"]) >= vocab_size:
        return _warn(f"token cache file holds ids beyond the vocabulary; rebuilding it: {path}")
    ids = np.memmap(path, dtype=key["dtype"], mode="r", offset=HEADER_BYTES, shape=(n_train + n_val,))
    return ids[:n_train], ids[n_train:]


def _max_id(path: Path, dtype: str) -> int:
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
