"""Helpers shared by the tests that run ``python -m lmcore.train`` (in-process or as a child process):
where the corpus is, the tiny recipe, running and resuming, comparing what runs leave behind, and
breaking checkpoint files."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import lmcore.train
from lmcore.checkpoint.file import load_checkpoint
from lmcore.checkpoint.state import DIGEST_KEY, load_run
from lmcore.training.metrics import read_metrics

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPUS_FILE = SHARED_DATA / "tinyshakespeare.txt"
requires_corpus = pytest.mark.skipif(not CORPUS_FILE.is_file(), reason=f"shared corpus missing: {CORPUS_FILE}")

# The recipe of most test runs: tiny model, short warmup so the cosine part of the schedule is used.
RECIPE = ["--tiny", "--eval-interval", "20", "--eval-iters", "2", "--ckpt-interval", "10",
          "--log-interval", "5", "--warmup-iters", "10"]
# Per-invocation settings, not part of the recipe (allowed on --resume).
QUIET = ["--sample-tokens", "0", "--threads", "1"]
TIMING_FIELDS = {"tok_s", "rss_mb", "elapsed_s"}
# The corpus comes from LMCORE_DATA_DIR; the user's cache (and so the network) is never used: runs
# cache their tokens in a directory of this test session's own.
TEST_CACHE = tempfile.mkdtemp(prefix="lmcore-test-cache-")
atexit.register(shutil.rmtree, TEST_CACHE, True)
ENV = {**os.environ, "LMCORE_DATA_DIR": str(SHARED_DATA), "XDG_CACHE_HOME": TEST_CACHE, "PYTHONUTF8": "1"}


# --- running ---


def run_main(argv: list[str]) -> int:
    """``lmcore.train.main(argv)`` in this process, with the test environment; returns the exit code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMCORE_DATA_DIR", ENV["LMCORE_DATA_DIR"])
        mp.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])
        return lmcore.train.main(argv)


def train(out_dir: Path, *args: str, recipe: bool = True) -> None:
    """One in-process run of ``python -m lmcore.train`` that must succeed."""
    argv = [*(RECIPE if recipe else []), *QUIET, "--out-dir", str(out_dir), *args]
    assert run_main(argv) == 0, argv


def resume(out_dir: Path, *args: str) -> None:
    train(out_dir, "--resume", *args, recipe=False)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmcore.train", *args], env=ENV, capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


def spawn(out_dir: Path, *args: str, recipe: bool = True, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lmcore.train", *(RECIPE if recipe else []), *QUIET,
                             "--out-dir", str(out_dir), *args], env=ENV, text=True, encoding="utf-8", **kwargs)


def wait_for_checkpoint(proc: subprocess.Popen[str], path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before writing {path}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint after {timeout}s: {path}")
        time.sleep(0.002)


# --- comparing ---


def assert_same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]) and a[name].tobytes() == b[name].tobytes(), name


def assert_same_weights(a: Path, b: Path) -> None:
    weights_a = safetensors.numpy.load_file(str(a / "model.safetensors"))
    assert weights_a, "no weights"
    assert_same_tensors(weights_a, safetensors.numpy.load_file(str(b / "model.safetensors")))


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Parameters, AdamW moments and every piece of metadata (step, RNG, sampler, ...) equal, but the
    wall seconds the runs took (and so the sha256 that seals them with the rest)."""
    tensors_a, meta_a = load_checkpoint(a / "ckpt.safetensors")
    tensors_b, meta_b = load_checkpoint(b / "ckpt.safetensors")
    assert_same_tensors(tensors_a, tensors_b)
    assert meta_a["elapsed_s"] >= 0 and meta_b["elapsed_s"] >= 0
    untimed = lambda meta: {k: v for k, v in meta.items() if k not in ("elapsed_s", DIGEST_KEY)}  # noqa: E731
    assert untimed(meta_a) == untimed(meta_b)


def metrics(out_dir: Path) -> list[dict[str, Any]]:
    """The metrics log without the fields that measure the machine rather than the run."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(out_dir / "metrics.jsonl")]


def losses_after(out_dir: Path, step: int) -> list[tuple[int, float, float | None]]:
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in metrics(out_dir) if r["step"] > step]


def iter_num(out_dir: Path) -> int:
    return int(load_run(out_dir / "ckpt.safetensors")[1]["iter_num"])


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, stderr: str, message: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(message, lines[0]), lines[0]


# --- breaking checkpoint files ---


def flip(path: Path, start: int, count: int, mask: int = 0xFF) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(start, start + count):
        raw[i] ^= mask
    path.write_bytes(bytes(raw))


def header_end(path: Path) -> int:
    """Where a safetensors file's tensor data starts (after the u64 header length and the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def split_safetensors(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's JSON header (parsed) and its data bytes."""
    end = 8 + int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:end]), raw[end:]


def join_safetensors(header: dict[str, Any] | str | bytes, data: bytes) -> bytes:
    """A safetensors file with ``header`` (a dict, or raw JSON text) in front of ``data``."""
    text = json.dumps(header) if isinstance(header, dict) else header
    encoded = text.encode() if isinstance(text, str) else text
    return len(encoded).to_bytes(8, "little") + encoded + data
