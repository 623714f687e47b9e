"""A training text: the ``Corpus`` that streams it block by block from files (so its size is not
limited by memory) or holds it in memory, the UTF-8 checks that name the file and the byte, and
where the training text ends (``split_index``)."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcore.errors import Error
from lmcore.progress import Progress


class DataError(Error):
    """The corpus cannot be found, read or sampled; the message says why and where."""


READ_BLOCK = 1 << 20  # bytes read (and decoded) at a time: memory stays flat for any corpus size
PROGRESS_MIN_BYTES = 4 << 20  # a corpus file this large shows a progress bar while it is read
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class Corpus:
    """A training text: held in memory (downloads, the offline plays, tests) or streamed from files.

    The text of several files is their concatenation in sorted order, with a newline after a file
    that does not end with one; ``sha256`` is the hash of that text's UTF-8 bytes."""

    name: str
    sha256: str
    source: str  # human-readable: which file / download / package it came from
    n_chars: int
    files: tuple[Path, ...] = ()
    memory: str | None = field(default=None, repr=False)

    @classmethod
    def from_text(cls, name: str, text: str, source: str) -> Corpus:
        return cls(name, hashlib.sha256(text.encode("utf-8")).hexdigest(), source, len(text), memory=text)

    @property
    def text(self) -> str:
        """The whole text at once: for small corpora (training streams it through ``chunks``)."""
        return self.memory if self.memory is not None else "".join(self.chunks())

    def chunks(self, start: int = 0, end: int | None = None, label: str | None = None) -> Iterator[str]:
        """Characters ``start`` to ``end`` of the text, a block at a time; a big corpus shows ``label``
        on a progress bar."""
        blocks = (_read_files(self.files) if self.memory is None else
                  (self.memory[i:i + READ_BLOCK] for i in range(0, len(self.memory), READ_BLOCK)))
        pos, end = 0, self.n_chars if end is None else end
        # The bar counts the characters of this range (the text before it is read, not counted).
        big = self.memory is None and sum(f.stat().st_size for f in self.files if f.is_file()) >= PROGRESS_MIN_BYTES
        progress = Progress(end - start) if label and big else None
        try:
            for block in blocks:
                lo, hi = max(start - pos, 0), min(end - pos, len(block))
                if lo < hi:
                    yield block if (lo, hi) == (0, len(block)) else block[lo:hi]
                pos += len(block)
                if progress:
                    done = min(max(pos - start, 0), end - start)
                    progress.show(done, f"{label} {done:,}/{end - start:,} characters")
                if pos >= end:
                    break
        finally:
            if progress:
                progress.close()


def split_index(n: int, train_fraction: float = TRAIN_FRACTION) -> int:
    """Where a sequence of ``n`` characters (or tokens) is split: training before, validation after."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    return int(n * train_fraction)


def _read_files(files: tuple[Path, ...], hasher: Any = None, label: str | None = None) -> Iterator[str]:
    """The corpus text of ``files``, decoded block by block (and hashed into ``hasher``); a big one
    shows ``label`` on a progress bar of its bytes.

    Bytes that are not UTF-8, or a NUL (binary data, or UTF-16), are a DataError naming the file
    and the byte offset."""
    total = sum(f.stat().st_size for f in files if f.is_file())  # (a missing file is reported below)
    progress = Progress(total) if label and total >= PROGRESS_MIN_BYTES else None
    try:
        yield from _decoded(files, hasher, progress, label)
    finally:
        if progress:
            progress.close()


def _decoded(files: tuple[Path, ...], hasher: Any, progress: Progress | None, label: str | None) -> Iterator[str]:
    done, last = 0, ""
    for path in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        first = True
        with _open_corpus_file(path) as f:
            while raw := f.read(READ_BLOCK):
                block = _decode_block(decoder, raw, path, end_offset=f.tell())
                if first and last not in ("", "\n"):  # the previous file's last line ends here
                    if hasher is not None:
                        hasher.update(b"\n")
                    yield "\n"
                first = False
                if hasher is not None:
                    hasher.update(raw)
                done += len(raw)
                last = block[-1:] or last
                if progress:
                    progress.show(done, f"{label} {done / 2**20:,.0f}/{progress.total / 2**20:,.0f} MB")
                if block:
                    yield block
        if decoder.getstate()[0]:
            raise DataError(f"corpus file is not UTF-8 text (it ends inside a character): {path}")


@contextlib.contextmanager
def _open_corpus_file(path: Path) -> Iterator[Any]:
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise DataError(f"corpus file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read corpus file {path}: {e.strerror}") from None
    with f:
        yield f


def _decode_block(decoder: Any, raw: bytes, path: Path, end_offset: int) -> str:
    # (A 0 byte is never part of a longer UTF-8 character: text has none, binary data has plenty.)
    if (nul := raw.find(b"\0")) >= 0:
        raise DataError(f"corpus file looks binary, not text (a NUL byte at {end_offset - len(raw) + nul}): {path}")
    pending = len(decoder.getstate()[0])  # bytes of a character begun in the previous block
    try:
        block: str = decoder.decode(raw)
    except UnicodeDecodeError as e:
        at = end_offset - len(raw) - pending + e.start
        raise DataError(f"corpus file is not UTF-8 text (byte {at}): {path}") from None
    return block


def read_text_file(path: str | os.PathLike[str], dataset: str | None = None) -> Corpus:
    """A UTF-8 text file, or a directory's ``<dataset>.txt`` if it has one, else all its ``*.txt`` files.

    The files are read once here (to hash and count them, block by block) and again each time the
    text is used: the corpus need not fit in memory.  Any problem is a one-line DataError naming
    the path."""
    p = Path(path)
    if p.is_dir():
        own = p / f"{dataset}.txt"
        files = (own,) if dataset and own.is_file() else tuple(sorted(f for f in p.glob("*.txt") if f.is_file()))
        if not files:
            raise DataError(f"corpus directory holds no .txt file: {p}")
    else:
        files = (p,)
    hasher = hashlib.sha256()
    n_chars = sum(len(block) for block in _read_files(files, hasher, label="reading"))
    if n_chars == 0:
        raise DataError(f"corpus file is empty: {p}" if len(files) == 1 else f"corpus files are all empty: {p}")
    if len(files) == 1:
        return Corpus(files[0].stem, hasher.hexdigest(), f"file {files[0]}", n_chars, files)
    return Corpus(p.name, hasher.hexdigest(), f"{len(files)} .txt files in {p}", n_chars, files)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lmcore``, defaulting to ``~/.cache/lmcore``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmcore"
