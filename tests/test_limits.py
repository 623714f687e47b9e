"""Requests the machine cannot meet, and one object used from two threads (issue 10).

A request for more memory than the process can get is an `LmcoreError` naming how much it needs
and what drives it, never an abort; threads beyond the cores are capped with a warning; a Model
or Graph shared by two Python threads takes turns. The requests that once aborted the interpreter
run in a subprocess, so a regression fails one test instead of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import lmcore
from cli_helpers import assert_one_line_error, cli

TINY = dict(vocab_size=65, d_model=32, n_head=2, n_layer=1, block_size=32)


def available_gib() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def assert_raises_in_subprocess(setup: str, call: str, *expected: str) -> None:
    """``call`` raises an LmcoreError whose message holds every ``expected`` part, and the process
    lives on (and can still use lmcore)."""
    code = f"""
import numpy as np, lmcore
{setup}
try:
    {call}
except lmcore.LmcoreError as e:
    print("raised:", e)
else:
    print("no error")
print("alive", lmcore.Model(vocab_size=5, d_model=4, n_head=1, n_layer=1, block_size=4).forward(np.zeros((1, 4), np.int64))[0].shape)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    raised = [line for line in done.stdout.splitlines() if line.startswith("raised:")]
    assert raised, done.stdout
    for part in expected:
        assert part in raised[0], raised[0]
    assert "alive (1, 4, 5)" in done.stdout


# Attention's tiles alone need 720 GB for this batch (more than any test machine has), and what
# comes before them under half a gigabyte: the refusal is quick wherever the tests run.
LONG_BLOCK = "m = lmcore.Model(vocab_size=65, d_model=32, n_head=2, n_layer=1, block_size=300000)\n" \
             "x = np.zeros((2, 300000), np.int64)"


def test_activations_larger_than_memory_are_an_error_not_an_abort() -> None:
    assert_raises_in_subprocess(LONG_BLOCK, "m.forward(x, x)", "out of memory", "a forward pass on a batch of 2 x 300000",
                                "GiB", "shorter sequence")


def test_a_training_step_larger_than_memory_is_an_error() -> None:
    assert_raises_in_subprocess(LONG_BLOCK, "m.train_step(x, x, 1e-3)", "out of memory", "training step", "2 x 300000")


def test_reserve_sizes_a_batch_before_any_work() -> None:
    assert_raises_in_subprocess(LONG_BLOCK, "m.reserve(2, 300000)", "out of memory", "2 x 300000")


def test_a_model_whose_state_does_not_fit_is_refused() -> None:
    # Forty million layers need 320 GB of bookkeeping; 10^9 parameters (under the engine's limit)
    # need 32 GB in float64, more than this machine has if it has less.
    cases = ["d_model=1, n_head=1, n_layer=40_000_000, block_size=8"]
    if available_gib() < 30:
        cases.append("d_model=1, n_head=1, n_layer=1, block_size=1_000_000_000, dtype='float64'")
    for kwargs in cases:
        assert_raises_in_subprocess("", f"lmcore.Model(vocab_size=65, {kwargs})", "out of memory", "parameters")


def test_a_key_value_cache_of_no_rows_or_negative_rows_is_refused() -> None:
    m = lmcore.Model(**TINY)
    for rows in (0, -1):
        with pytest.raises(lmcore.LmcoreError, match="row"):
            m.kv_start(rows)
    with pytest.raises(lmcore.LmcoreError, match="out of memory"):
        m.kv_start(2**64)


def test_a_key_value_cache_that_does_not_fit_is_refused() -> None:
    assert_raises_in_subprocess(LONG_BLOCK, "m.kv_start(1000)", "out of memory", "key/value cache for 1000 rows",
                                "fewer rows")


def test_a_matmul_result_that_does_not_fit_is_refused() -> None:
    assert_raises_in_subprocess("a = np.ones((400000, 1), np.float32)", "lmcore.matmul(a, a.T)", "out of memory",
                                "(400000, 400000) matmul result")


def test_the_model_works_after_running_out_of_memory() -> None:
    m = lmcore.Model(**{**TINY, "block_size": 300_000})
    big = np.zeros((2, 300_000), np.int64)
    with pytest.raises(lmcore.LmcoreError, match="out of memory"):
        m.forward(big, big)
    x = np.zeros((2, 16), np.int64)
    loss, _ = m.train_step(x, x, 1e-3)
    assert np.isfinite(loss)
    fresh = lmcore.Model(**{**TINY, "block_size": 300_000})
    fresh.train_step(x, x, 1e-3)
    # The failed request's memory (gigabytes of activations made before the one that did not fit)
    # was given back: the model holds what one that never failed holds, give or take growth slack.
    assert m.arena_capacity_bytes < 1.2 * fresh.arena_capacity_bytes


def test_reserve_changes_nothing_a_step_would_see() -> None:
    x = np.random.default_rng(0).integers(0, 65, (4, 32))
    plain, reserved = lmcore.Model(**TINY, dropout=0.1, seed=3), lmcore.Model(**TINY, dropout=0.1, seed=3)
    reserved.reserve(4, 32)
    high_water = reserved.arena_high_water_bytes
    for _ in range(3):
        assert plain.train_step(x, x, 1e-3) == reserved.train_step(x, x, 1e-3)
    assert reserved.arena_high_water_bytes == high_water  # it sized the arena for these steps
    for name in plain.param_names():
        assert np.array_equal(plain.get_param(name), reserved.get_param(name))
    assert plain.rng_state == reserved.rng_state


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "100000000"], "out of memory"),
    (["--n-layer", "30000000", "--d-model", "1", "--n-head", "1"], "out of memory"),
    (["--d-model", "100000", "--n-head", "1"], "too large"),
])
def test_cli_refuses_other_settings_that_size_memory(tmp_path: Path, flags: list[str], message: str) -> None:
    out = tmp_path / "run"
    done = cli("--tiny", *flags, "--max-iters", "5", "--out-dir", str(out))
    assert_one_line_error(done.returncode, done.stderr, message)
    assert not out.exists()


def test_huge_numbers_where_a_count_is_expected(finished_tiny_run: Path) -> None:
    """Found by the sweep: ints beyond 64 bits once gave tracebacks or aborts."""
    done = subprocess.run([sys.executable, "-m", "lmcore.generate", "--out-dir", str(finished_tiny_run),
                           "--max-new-tokens", "5", "--top-k", str(2**63)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # more than the vocabulary: every token
    done = subprocess.run([sys.executable, "-m", "lmcore.generate", "--out-dir", str(finished_tiny_run),
                           "--max-new-tokens", "5", "--threads", str(2**64)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.startswith("warning: "), done.stderr
    with pytest.raises(OverflowError, match=f"vocab_size {2**64} is too large"):
        lmcore.Model(vocab_size=2**64, d_model=4, n_head=1, n_layer=1, block_size=4)


def test_a_strided_view_too_large_to_copy_is_refused() -> None:
    # (a view of one float that claims 1.6 x 10^11 elements: its contiguous copy would need 640 GB)
    assert_raises_in_subprocess("from numpy.lib.stride_tricks import as_strided\n"
                                "a = as_strided(np.zeros(1, np.float32), (400000, 400000), (0, 0))",
                                "lmcore.matmul(a, a)", "out of memory", "contiguous copy")
    assert_raises_in_subprocess("from numpy.lib.stride_tricks import as_strided\n"
                                "a = as_strided(np.zeros(1, np.float32), (400000, 400000), (0, 0))",
                                "lmcore.Graph('float32').tensor(a)", "out of memory", "contiguous copy")


def test_a_batch_far_too_large_is_refused_at_once_with_its_size() -> None:
    m = lmcore.Model(**TINY)
    started = time.monotonic()
    with pytest.raises(lmcore.LmcoreError, match=r"a training step on a batch of 1000000 x 32 tokens needs at least"):
        m.reserve(1_000_000, 32)
    assert time.monotonic() - started < 10  # (the sweep saw 40 s and 16 GB before the refusal)


def test_generation_of_more_tokens_than_memory_holds_is_refused(finished_tiny_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lmcore.generate", "--out-dir", str(finished_tiny_run),
                           "--max-new-tokens", str(10**13)], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "out of memory")


@pytest.fixture(scope="module")
def finished_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    done = cli("--tiny", "--max-iters", "20", "--eval-interval", "20", "--eval-iters", "2", "--sample-tokens", "0",
               "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 heads, 1 layer, block 32" in done.stdout  # (it once said "1 layers")
    return out


# --- threads ---

def test_more_threads_than_cores_are_capped_with_a_warning() -> None:
    cores = len(os.sched_getaffinity(0))
    before = lmcore.num_threads()
    try:
        with pytest.warns(RuntimeWarning, match=f"64 threads requested, but this process may use {cores} cores"):
            assert lmcore.set_num_threads(64) == cores
        assert lmcore.num_threads() == cores
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert lmcore.set_num_threads(1) == 1  # within the cores: no warning
    finally:
        lmcore.set_num_threads(before)


def test_the_default_thread_count_follows_the_cpu_affinity() -> None:
    done = run_python("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                      "import lmcore; print(lmcore.num_threads())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_cli_warns_about_threads_beyond_the_cores(finished_tiny_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lmcore.generate", "--out-dir", str(finished_tiny_run),
                           "--max-new-tokens", "5", "--threads", "64"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("warning: 64 threads requested"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def in_two_threads(work: Callable[[], None]) -> list[BaseException]:
    """Run ``work`` in two threads at once; what either raised."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001 (returned)
            errors.append(e)

    threads = [threading.Thread(target=guarded) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_one_model_from_two_threads_takes_turns() -> None:
    x = np.random.default_rng(1).integers(0, 65, (4, 32))
    shared, alone = lmcore.Model(**TINY, seed=5), lmcore.Model(**TINY, seed=5)

    def work() -> None:
        for _ in range(25):
            shared.train_step(x, x, 1e-3)
            shared.forward(x[:1])
            shared.get_param("transformer.wte.weight")

    assert in_two_threads(work) == []
    assert shared.step == 50
    for _ in range(50):  # the same batch every step: the order of the calls cannot matter
        alone.train_step(x, x, 1e-3)
    for name in alone.param_names():
        assert np.array_equal(alone.get_param(name), shared.get_param(name))


def test_one_graph_from_two_threads_takes_turns() -> None:
    g = lmcore.Graph("float64")
    a = np.random.default_rng(2).standard_normal((64, 64))

    def work() -> None:
        for _ in range(200):
            g.value(g.gelu(g.tensor(a)))

    assert in_two_threads(work) == []
