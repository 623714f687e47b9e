"""Tests for lmcore.data.tokens: the text is split before it is tokenized (the same validation text for
every tokenizer), tokenizers and ids are cached and a second run reuses them, a damaged cache file is
rebuilt, an unwritable cache costs nothing but time, and a big corpus is tokenized in bounded memory."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lmcore.data.corpus import Corpus, split_index
from lmcore.data.tokens import HEADER_BYTES, build_tokenizer, tokenize
from lmcore.tokenizer.bpe import BpeTokenizer
from lmcore.tokenizer.char import CharTokenizer

CORPUS_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
TEXT = (CORPUS_FILE.read_text(encoding="utf-8")[:30_000] if CORPUS_FILE.is_file()
        else "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 500)
CORPUS = Corpus.from_text("sample", TEXT, "test")
SPLIT = split_index(len(TEXT))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "tokens"


def _encode(tokenizer: CharTokenizer | BpeTokenizer, text: str) -> list[int]:
    return tokenizer.encode(text).tolist()


@pytest.mark.parametrize(("kind", "vocab_size"), [("char", None), ("bpe", 300)])
def test_splits_the_text_then_tokenizes_each_part(cache: Path, kind: str, vocab_size: int | None) -> None:
    tok = build_tokenizer(CORPUS, kind, vocab_size, cache)
    tokens = tokenize(CORPUS, tok, cache)
    assert tokens.train.tolist() == _encode(tok, TEXT[:SPLIT]) and tokens.val.tolist() == _encode(tok, TEXT[SPLIT:])
    assert (tokens.train_chars, tokens.val_chars) == (SPLIT, len(TEXT) - SPLIT)
    assert tok.decode(tokens.val) == TEXT[SPLIT:]  # the same validation text for every tokenizer
    assert tokens.bits_per_char(1.5) == pytest.approx(1.5 * len(tokens.val) / tokens.val_chars / math.log(2))
    if kind == "char":
        assert tok == CharTokenizer.from_text(TEXT) and tokens.bits_per_char(1.5) == pytest.approx(1.5 / math.log(2))
    else:  # a BPE is trained on the training text only
        assert tok == BpeTokenizer.train([TEXT[:SPLIT]], vocab_size) and len(tokens.val) < tokens.val_chars


def test_a_second_run_reads_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = build_tokenizer(CORPUS, "bpe", 300, cache)
    first = tokenize(CORPUS, tok, cache)
    assert sorted(p.name.split("-")[-1] for p in cache.iterdir()) == [f"{SPLIT}.json", "train.npy", "val.npy"]
    # Plain .npy files: any numpy reads them.
    assert np.load(next(cache.glob("*-val.npy"))).tolist() == first.val.tolist()

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(BpeTokenizer, "train", never)
    monkeypatch.setattr(BpeTokenizer, "encode_stream", never)
    again = build_tokenizer(CORPUS, "bpe", 300, cache)
    second = tokenize(CORPUS, again, cache)
    assert again == tok and isinstance(second.train, np.memmap)
    assert second.train.tolist() == first.train.tolist() and second.val.tolist() == first.val.tolist()


def test_the_cache_is_keyed_by_text_and_tokenizer(cache: Path) -> None:
    tokenize(CORPUS, build_tokenizer(CORPUS, "char", None, cache), cache)
    tokenize(CORPUS, build_tokenizer(CORPUS, "bpe", 300, cache), cache)
    tokenize(CORPUS, build_tokenizer(CORPUS, "bpe", 301, cache), cache)
    other = Corpus.from_text("other", TEXT[:-1], "test")
    tokenize(other, build_tokenizer(other, "char", None, cache), cache)
    assert len(list(cache.glob("*-train.npy"))) == 4 and len(list(cache.glob("*.json"))) == 4


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _flip_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x20
    path.write_bytes(bytes(raw))


def _other_dtype(path: Path) -> None:
    raw = path.read_bytes()
    at = raw.index(b"'descr': '<") + len(b"'descr': '<")
    path.write_bytes(raw[:at] + b"i" + raw[at + 1 :])  # still a valid header, another dtype


def _id_beyond_vocab(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES : HEADER_BYTES + 2] = b"\xff\xff"
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_truncate, _flip_header, _other_dtype, _id_beyond_vocab])
def test_a_damaged_ids_file_is_rebuilt(cache: Path, damage) -> None:
    tok = build_tokenizer(CORPUS, "char", None, cache)
    expected = tokenize(CORPUS, tok, cache)
    train, val = expected.train.tolist(), expected.val.tolist()  # (copies: the damage is done in place)
    [path] = cache.glob("*-train.npy")
    good = path.read_bytes()
    damage(path)
    with pytest.warns(UserWarning, match="rebuilding it"):
        rebuilt = tokenize(CORPUS, tok, cache)
    assert rebuilt.train.tolist() == train and rebuilt.val.tolist() == val
    assert path.read_bytes() == good


def test_a_damaged_tokenizer_file_is_rebuilt(cache: Path) -> None:
    tok = build_tokenizer(CORPUS, "bpe", 300, cache)
    [path] = cache.glob("*.json")
    path.write_text(path.read_text()[:100])
    with pytest.warns(UserWarning, match="cached tokenizer is damaged"):
        assert build_tokenizer(CORPUS, "bpe", 300, cache) == tok


def test_an_unwritable_cache_costs_only_time(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("where the cache directory should be")
    with pytest.warns(UserWarning, match="token cache not written"):
        tok = build_tokenizer(CORPUS, "char", None, blocked / "tokens")
        tokens = tokenize(CORPUS, tok, blocked / "tokens")
    assert tokens.train.tolist() == _encode(tok, TEXT[:SPLIT]) and tokens.val.tolist() == _encode(tok, TEXT[SPLIT:])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize(("kind", "megabytes", "limit_mb"), [("char", 64, 100), ("bpe", 12, 160)])
def test_a_big_corpus_is_tokenized_in_bounded_memory(tmp_path: Path, kind: str, megabytes: int, limit_mb: int) -> None:
    """Holding 64 MB of text with its UTF-32 code points and int64 ids would take over 800 MB; encoding
    12 MB with the BPE library in one call, over 1 GB.  The child reads, trains on and tokenizes the
    file in blocks, and reports its peak RSS.  (The BPE's size is kept down for the test's time.)"""
    corpus = tmp_path / "big.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(megabytes):
            f.write(TEXT[:30_000] * 35)  # ~1 MB a write
    # VmHWM, not ru_maxrss: the latter keeps the peak of the forked copy of this (big) test process.
    code = textwrap.dedent(f"""
        import re
        from lmcore.data.corpus import read_text_file
        from lmcore.data.tokens import build_tokenizer, tokenize
        corpus = read_text_file({str(corpus)!r})
        tokens = tokenize(corpus, build_tokenizer(corpus, {kind!r}, {300 if kind == "bpe" else None}, None))
        peak_kb = re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read())[1]
        print(corpus.n_chars, len(tokens.train) + len(tokens.val), peak_kb)
    """)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    n_chars, n_tokens, peak_kb = map(int, done.stdout.split())
    assert n_chars > 0.95 * megabytes * 2**20
    assert n_tokens == n_chars if kind == "char" else n_chars / 4 < n_tokens < n_chars
    assert peak_kb / 1024 < limit_mb, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert "tokenizing the training text" in done.stderr  # a progress bar for a corpus this big
