"""``python -m lmcore.train``: a resumed run is the same run bit for bit (after a clean stop, in ten
separate processes, after SIGKILL, after Ctrl-C, with a longer planned schedule), bad input gets a
one-line error that leaves the output directory untouched, a checkpoint holds the whole state, and a
byte-level BPE run on a directory of text files keeps its tokenizer and reports bits per character.

Runs use the tiny preset for a few dozen steps on one thread (two where noted), in-process (``lmcore.train.main``)
where that is enough, as subprocesses where a separate process or a signal matters.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import lmcore.loop
import lmcore.run
import lmcore.saver
import lmcore.train
from cli_helpers import (
    CORPUS_FILE,
    ENV,
    QUIET,
    RECIPE,
    assert_one_line_error,
    assert_same_checkpoint,
    assert_same_tensors,
    assert_same_weights,
    cli,
    flip,
    header_end,
    iter_num,
    metrics,
    requires_corpus,
    resume,
    run_main,
    snapshot,
    spawn,
    train,
    wait_for_checkpoint,
)
from lmcore.checkpoint import load_checkpoint
from lmcore.config import RunConfig, lr_at
from lmcore.datasets import resolve_corpus
from lmcore.metrics import read_metrics
from lmcore.run_state import load_run, new_model
from lmcore.token_cache import tokenize
from lmcore.tokenizer import tokenizer_from_dict

TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

pytestmark = requires_corpus


def losses_after(out_dir: Path, step: int) -> list[tuple[int, float, float | None]]:
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in metrics(out_dir) if r["step"] > step]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step run of the command line (read-only: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = cli(*RECIPE, *QUIET, "--out-dir", str(out), "--max-iters", "20")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "done: 20 steps" in done.stdout
    return out


# --- 1. resume after a clean stop ---


@pytest.mark.parametrize("dropout, threads", [("0.0", "1"), ("0.1", "1"), ("0.1", "2")])
def test_resume_is_the_same_run_bit_for_bit(tmp_path: Path, dropout: str, threads: str) -> None:
    n = 20
    plan = ["--dropout", dropout, "--lr-decay-iters", str(2 * n), "--threads", threads]
    train(tmp_path / "whole", *plan, "--max-iters", str(2 * n))
    train(tmp_path / "split", *plan, "--max-iters", str(n))
    assert iter_num(tmp_path / "split") == n
    if dropout != "0.0":  # the dropout generator has moved on: the resume must restore it, not reseed it
        _, meta = load_run(tmp_path / "split" / "ckpt.safetensors")
        fresh = new_model(RunConfig.from_dict(meta["config"]), meta["vocab_size"])
        assert int(meta["rng_state"]) != fresh.rng_state
    resume(tmp_path / "split", "--max-iters", str(2 * n), "--threads", threads)

    assert_same_weights(tmp_path / "whole", tmp_path / "split")
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    after = losses_after(tmp_path / "whole", n)
    assert after and any(v is not None for _, _, v in after)
    assert losses_after(tmp_path / "split", n) == after
    assert metrics(tmp_path / "split") == metrics(tmp_path / "whole")


# --- 2. the earlier engine's failed experiment: ten processes, one run ---


@pytest.mark.slow
def test_ten_resumed_processes_equal_one_continuous_run(tmp_path: Path) -> None:
    n, chunks = 10, 10
    total = n * chunks
    plan = ["--lr-decay-iters", str(total)]
    train(tmp_path / "whole", *plan, "--max-iters", str(total))
    out = tmp_path / "chunked"
    for k in range(1, chunks + 1):
        args = [*RECIPE, *plan] if k == 1 else ["--resume"]
        done = cli(*args, *QUIET, "--out-dir", str(out), "--max-iters", str(k * n))
        assert done.returncode == 0, done.stderr
        assert iter_num(out) == k * n

    assert_same_weights(tmp_path / "whole", out)
    assert_same_tensors(load_checkpoint(tmp_path / "whole" / "ckpt.safetensors")[0],
                        load_checkpoint(out / "ckpt.safetensors")[0])
    # Every chunk ends with an evaluation, so the chunked log has extra val_loss/val_bpc at chunk ends.
    interval = 20
    chunked = [{key: v for key, v in r.items() if key not in ("val_loss", "val_bpc") or r["step"] % interval == 0}
               for r in metrics(out)]
    assert chunked == metrics(tmp_path / "whole")


# --- 3, 4. SIGKILL and Ctrl-C ---

LONG = ["--max-iters", "300", "--eval-interval", "50"]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("long") / "run"
    train(out, *LONG)
    return out


@pytest.mark.slow
def test_sigkill_then_resume_is_the_same_run(tmp_path: Path, long_run: Path) -> None:
    out = tmp_path / "killed"
    proc = spawn(out, *LONG, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(proc, out / "ckpt.safetensors")
    time.sleep(0.05)  # some moment after the first checkpoint, not necessarily at one
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL

    _, meta = load_run(out / "ckpt.safetensors")  # the checkpoint left behind is whole
    assert 10 <= meta["iter_num"] < 300 and meta["iter_num"] % 10 == 0
    resume(out)
    assert_same_weights(long_run, out)
    assert_same_checkpoint(long_run, out)
    assert metrics(out) == metrics(long_run)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"])
def test_a_stop_signal_saves_a_checkpoint_and_resume_is_the_same_run(tmp_path: Path, long_run: Path,
                                                                     stop: str) -> None:
    """Ctrl-C, and the signals that kill, systemd, Kubernetes and Slurm send, stop at a checkpoint."""
    sig = signal.Signals[stop]
    out = tmp_path / "interrupted"
    proc = spawn(out, *LONG, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_checkpoint(proc, out / "ckpt.safetensors")
    time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 128 + sig, stderr  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    assert "Traceback" not in stderr
    told = [line for line in stderr.splitlines() if "--resume" in line]
    assert len(told) == 1, stderr
    stopped = iter_num(out)
    assert 10 <= stopped < 300
    assert f"interrupted by {stop} at step {stopped}" in told[0] and str(out / "ckpt.safetensors") in told[0]
    assert not (out / "model.safetensors").exists()  # an interrupted run has no final weights yet

    resume(out)
    assert_same_weights(long_run, out)
    assert_same_checkpoint(long_run, out)
    assert metrics(out) == metrics(long_run)


def test_signals_during_the_save_do_not_corrupt_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second and third signal arriving while the checkpoint is written change nothing: the
    first one decides, the save completes, and the run resumes to the continuous one."""
    real_save = lmcore.saver.save_run
    calls = []

    def save_under_fire(path: Path, *args: Any) -> None:
        calls.append(path)
        if len(calls) == 2:  # the second interval checkpoint: signals before and during its write
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGHUP)
        real_save(path, *args)

    monkeypatch.setattr(lmcore.saver, "save_run", save_under_fire)
    out = tmp_path / "run"
    argv = [*RECIPE, *QUIET, "--max-iters", "40", "--out-dir", str(out)]
    assert run_main(argv) == 128 + signal.SIGTERM
    assert iter_num(out) == 20 and len(calls) == 3  # stopped at the checkpoint of step 20, saved again
    monkeypatch.setattr(lmcore.saver, "save_run", real_save)
    resume(out)
    train(tmp_path / "whole", "--max-iters", "40")
    assert_same_weights(tmp_path / "whole", out)
    assert_same_checkpoint(tmp_path / "whole", out)


@pytest.mark.slow
def test_a_stop_signal_during_a_long_evaluation_stops_at_once(tmp_path: Path) -> None:
    """An evaluation of a hundred million batches is cut short by SIGTERM, not waited for."""
    out = tmp_path / "run"
    proc = spawn(out, "--eval-iters", "100000000", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)  # (inside step 0's evaluation by now)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - started < 10
    assert "interrupted by SIGTERM at step 0" in stderr and iter_num(out) == 0


def test_an_evaluation_cut_short_is_done_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop signal in the middle of step 20's evaluation: the checkpoint of step 20 holds the
    step's record, and the resumed run evaluates and logs it, so its log equals a continuous run's."""
    real = lmcore.loop.validation
    calls = []

    def signalled(run: Any, kept: str, stop: Any = None) -> dict[str, float]:
        calls.append(run.iter_num)
        if run.iter_num == 20 and calls.count(20) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives before the evaluation's first batch
        return real(run, kept, stop)

    monkeypatch.setattr(lmcore.loop, "validation", signalled)
    out = tmp_path / "run"
    assert run_main([*RECIPE, *QUIET, "--max-iters", "40", "--out-dir", str(out)]) == 128 + signal.SIGTERM
    assert iter_num(out) == 20 and [r["step"] for r in metrics(out)][-1] < 20
    resume(out)
    assert calls.count(20) == 2
    train(tmp_path / "whole", "--max-iters", "40")
    assert metrics(out) == metrics(tmp_path / "whole")
    assert_same_checkpoint(tmp_path / "whole", out)


# --- 5. a longer planned schedule, resumed in pieces; the schedule itself ---


def test_planned_schedule_resumed_in_pieces(tmp_path: Path) -> None:
    train(tmp_path / "whole", "--max-iters", "60", "--lr-decay-iters", "60")
    out = tmp_path / "pieces"
    train(out, "--max-iters", "20", "--lr-decay-iters", "60")
    resume(out, "--max-iters", "40")
    resume(out, "--max-iters", "60")
    assert_same_weights(tmp_path / "whole", out)
    assert_same_checkpoint(tmp_path / "whole", out)
    assert metrics(out) == metrics(tmp_path / "whole")


def test_a_finished_run_keeps_its_schedule_when_extended(tmp_path: Path) -> None:
    """Without --lr-decay-iters the schedule ends at the first --max-iters, and stays there."""
    train(tmp_path / "run", "--max-iters", "20")
    resume(tmp_path / "run", "--max-iters", "30")
    _, meta = load_run(tmp_path / "run" / "ckpt.safetensors")
    assert meta["config"]["lr_decay_iters"] == 20 and meta["config"]["max_iters"] == 30
    cfg = RunConfig.from_dict(meta["config"])
    assert [r["lr"] for r in metrics(tmp_path / "run") if r["step"] > 20] == [cfg.min_lr, cfg.min_lr]


def test_resume_from_a_step_zero_checkpoint(tmp_path: Path) -> None:
    train(tmp_path / "whole", "--max-iters", "20")
    out = tmp_path / "zero"
    train(out, "--max-iters", "0", "--lr-decay-iters", "20")  # evaluates, saves step 0
    resume(out, "--max-iters", "20")
    assert_same_weights(tmp_path / "whole", out)
    assert metrics(out) == metrics(tmp_path / "whole")  # step 0 logged once


def test_fresh_run_starts_a_new_metrics_log(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()  # a run killed before its first checkpoint left a log behind
    (out / "metrics.jsonl").write_text('{"step": 0, "train_loss": 9.5}\n{"step": 5, "train_loss": 9.0}\n')
    train(out, "--max-iters", "10")
    train(tmp_path / "clean", "--max-iters", "10")
    assert metrics(out) == metrics(tmp_path / "clean")


def test_lr_schedule() -> None:
    cfg = RunConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110, max_iters=200)
    warmup = [lr_at(i, cfg) for i in range(10)]
    assert warmup[0] == pytest.approx(1e-3 / 11)
    assert all(a < b for a, b in zip(warmup, warmup[1:])) and warmup[-1] < cfg.lr
    assert lr_at(10, cfg) == pytest.approx(cfg.lr)  # warmup ends at the peak
    assert lr_at(60, cfg) == pytest.approx((cfg.lr + cfg.min_lr) / 2)  # cosine midpoint
    decay = [lr_at(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(109, cfg) > cfg.min_lr
    assert lr_at(110, cfg) == cfg.min_lr  # the cosine ends exactly at min_lr at lr_decay_iters
    assert all(lr_at(i, cfg) == cfg.min_lr for i in (111, 150, 199, 10_000))  # and stays flat


def test_lr_schedule_defaults_and_edges() -> None:
    cfg = RunConfig(lr=1e-3, min_lr=1e-4, warmup_iters=0, lr_decay_iters=None, max_iters=100)
    assert lr_at(0, cfg) == pytest.approx(cfg.lr)  # no warmup: starts at the peak
    assert lr_at(50, cfg) == pytest.approx((cfg.lr + cfg.min_lr) / 2)
    assert lr_at(100, cfg) == cfg.min_lr  # lr_decay_iters None: decays over max_iters
    cfg = RunConfig(lr=1e-3, min_lr=1e-4, warmup_iters=50, lr_decay_iters=20)
    assert lr_at(49, cfg) == pytest.approx(1e-3 * 50 / 51) and lr_at(50, cfg) == cfg.min_lr


def test_fresh_run_fixes_the_schedule_length() -> None:
    args = lmcore.train.parse_args(["--tiny", "--max-iters", "77"])
    assert lmcore.train.fresh_config(args).lr_decay_iters == 77
    args = lmcore.train.parse_args(["--tiny", "--max-iters", "77", "--lr-decay-iters", "300"])
    assert lmcore.train.fresh_config(args).lr_decay_iters == 300


# --- 6. bad input ---


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncate(run: Path) -> None:
    ckpt = run / "ckpt.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])


def _flip_header(run: Path) -> None:
    flip(run / "ckpt.safetensors", 8, 12)  # the start of the JSON header


def _flip_tensor_bits(run: Path) -> None:
    """The lowest mantissa bit of one weight: a plausible value that nothing else would notice."""
    ckpt = run / "ckpt.safetensors"
    header = json.loads(ckpt.read_bytes()[8 : header_end(ckpt)])
    name = sorted(k for k in header if k.startswith("param/"))[0]
    start, end = header[name]["data_offsets"]
    flip(ckpt, header_end(ckpt) + (start + end) // 2 // 4 * 4, 1, mask=0x01)


def _flip_metadata_digit(run: Path) -> None:
    ckpt = run / "ckpt.safetensors"
    raw = ckpt.read_bytes()
    at = raw.index(b'\\"iter_num\\": 20')  # metadata is a JSON string inside the JSON header
    ckpt.write_bytes(raw[: at + 15] + b"1" + raw[at + 16 :])  # still valid JSON, iter_num 21


# (id, where: "fresh" (a new run into an existing directory without a checkpoint) or "run" (the
# directory of a finished run), arguments (DATA: a directory of test files, RUN: the finished run),
# what to break first, what the error must say)
BAD_INPUT = [
    ("missing-data", "fresh", ["--data", "DATA/nope.txt"], None, r"not found.*nope\.txt"),
    ("empty-data", "fresh", ["--data", "DATA/empty.txt"], None, r"empty.*empty\.txt"),
    ("non-utf8-data", "fresh", ["--data", "DATA/latin1.txt"], None, r"not UTF-8.*latin1\.txt"),
    ("data-shorter-than-a-block", "fresh", ["--data", "DATA/short.txt"], None, r"fewer than one block of 32"),
    ("binary-data", "fresh", ["--data", "DATA/binary.txt"], None, r"looks binary.*binary\.txt"),
    ("empty-data-directory", "fresh", ["--data", "DATA/emptydir"], None, r"no \.txt file.*emptydir"),
    ("vocab-size-below-256", "fresh", ["--tokenizer", "bpe", "--vocab-size", "255"], None,
     r"--vocab-size: .*256 \(one token per byte\) to 65,536 tokens, got 255"),
    ("vocab-size-absurd", "fresh", ["--tokenizer", "bpe", "--vocab-size", "10000000"], None,
     r"--vocab-size: .*got 10,000,000"),
    ("vocab-size-without-bpe", "fresh", ["--vocab-size", "512"], None, r"--vocab-size needs --tokenizer bpe"),
    ("bpe-data-shorter-than-a-block", "fresh", ["--data", "DATA/short.txt", "--tokenizer", "bpe", "--vocab-size",
     "256"], None, r"training split has 18 tokens, fewer than one block of 32"),
    ("bpe-vocab-too-big-for-the-data", "fresh", ["--data", "DATA/short.txt", "--tokenizer", "bpe", "--vocab-size",
     "1000"], None, r"too few distinct byte pairs for 1,000 BPE tokens"),
    ("resume-without-checkpoint", "fresh", ["--resume"], None, r"--resume: no checkpoint"),
    ("truncated-checkpoint", "run", ["--resume"], _truncate, r"truncated|corrupt"),
    ("corrupt-checkpoint-header", "run", ["--resume"], _flip_header, r"corrupt"),
    ("corrupt-checkpoint-tensor", "run", ["--resume"], _flip_tensor_bits, r"corrupt"),
    ("corrupt-checkpoint-metadata", "run", ["--resume"], _flip_metadata_digit, r"corrupt"),
    ("negative-batch-size", "fresh", ["--batch-size", "-1"], None, r"--batch-size must be at least 1, got -1"),
    ("negative-d-model", "fresh", ["--d-model", "-32"], None, r"--d-model must be at least 1"),
    ("heads-do-not-divide", "fresh", ["--n-head", "3", "--d-model", "32"], None,
     r"--n-head 3 does not divide --d-model 32"),
    ("zero-threads", "fresh", ["--threads", "0"], None, r"--threads must be at least 1"),
    ("batch-size-beyond-64-bits", "fresh", ["--batch-size", str(2**64)], None,
     r"--batch-size 18446744073709551616 with --block-size 32: "),
    ("max-iters-zero-alone", "fresh", ["--max-iters", "0"], None, r"--max-iters 0 plans no steps: pass --lr-decay-iters"),
    ("batch-larger-than-memory", "fresh", ["--data", "DATA/big.txt", "--block-size", "300000"], None,
     # (attention's tiles alone need 360 GB: refused on any machine the tests run on)
     r"--batch-size 8 with --block-size 300000: out of memory: .* needs at least [\d.]+ GiB"),
    ("negative-sample-tokens", "fresh", ["--sample-tokens", "-1"], None, r"--sample-tokens must not be negative"),
    ("fresh-run-over-checkpoint", "run", [], None, r"already holds a checkpoint.*--resume"),
    ("resume-changes-lr", "run", ["--resume", "--lr", "0.5"], None, r"--lr cannot change on --resume"),
    ("resume-changes-batch", "run", ["--resume", "--batch-size", "4"], None, r"--batch-size cannot change"),
    ("resume-changes-dropout", "run", ["--resume", "--dropout", "0.1"], None, r"--dropout cannot change"),
    ("resume-other-tokenizer", "run", ["--resume", "--tokenizer", "bpe"], None,
     r"trained with the char tokenizer, not --tokenizer bpe"),
    ("resume-below-checkpoint-step", "run", ["--resume", "--max-iters", "10"], None,
     r"--max-iters 10 is below the checkpoint's step 20"),
    ("resume-other-data", "run", ["--resume", "--data", "DATA/other.txt"], None, r"data differs.*--init-from"),
    ("resume-missing-data", "run", ["--resume", "--data", "DATA/nope.txt"], None, r"not found.*nope\.txt"),
    ("resume-and-init-from", "run", ["--resume", "--init-from", "RUN/ckpt.safetensors"], None,
     r"--resume .*--init-from .*one of them"),
    ("schedule-unknown", "fresh", ["--schedule", "linear"], None, r"--schedule must be cosine or wsd, got 'linear'"),
    ("decay-frac-zero", "fresh", ["--schedule", "wsd", "--decay-frac", "0"], None, r"--decay-frac must be in \(0, 1\]"),
    ("decay-frac-above-one", "fresh", ["--decay-frac", "1.5"], None, r"--decay-frac must be in \(0, 1\], got 1.5"),
    ("final-lr-ratio-negative", "fresh", ["--final-lr-ratio", "-0.1"], None, r"--final-lr-ratio must be in \[0, 1\]"),
    ("final-lr-ratio-nan", "fresh", ["--final-lr-ratio", "nan"], None,
     r"--final-lr-ratio must be in \[0, 1\], got nan"),
    ("target-loss-zero", "fresh", ["--target-loss", "0"], None, r"--target-loss must be a finite number > 0"),
    ("target-loss-inf", "run", ["--resume", "--target-loss", "inf"], None, r"--target-loss must be a finite number"),
    ("resume-changes-schedule", "run", ["--resume", "--schedule", "wsd"], None, r"--schedule cannot change on --resume"),
    ("resume-changes-eval-full", "run", ["--resume", "--eval-full"], None,
     r"--eval-full cannot change on --resume"),
    ("init-from-missing", "fresh", ["--init-from", "DATA/nope.safetensors"], None, r"no checkpoint.*nope\.safetensors"),
    ("init-from-corrupt", "fresh", ["--init-from", "RUN/ckpt.safetensors"], _flip_tensor_bits, r"corrupt"),
    ("init-from-other-tokenizer", "fresh", ["--init-from", "RUN/ckpt.safetensors", "--tokenizer", "bpe",
     "--vocab-size", "512"], None, r"--init-from: the checkpoint .* trained with the char tokenizer"),
    ("init-from-other-shape", "fresh", ["--init-from", "RUN/ckpt.safetensors", "--d-model", "64"], None,
     r"--init-from: the checkpoint's model is \[32, 2, 1, 32\]"),
    ("init-from-other-layout", "fresh", ["--init-from", "RUN/ckpt.safetensors", "--untied-head"], None,
     r"--init-from: the checkpoint's model has --untied-head off, this run asks for it on"),
]


def bad_input_case(tmp_path: Path, finished_run: Path, case: tuple) -> tuple[list[str], list[Path]]:
    """Set up one BAD_INPUT case; returns the command line and the directories that must not change."""
    _, where, args, setup, _ = case
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "empty.txt", b"")
    _write(data / "latin1.txt", "First Citizen: caf\u00e9\n".encode("latin-1") * 10)
    assert len(_write(data / "short.txt", b"To be, or not to be:").read_text()) == 20  # block is 32
    _write(data / "binary.txt", b"PK\x03\x04\x00\x00" + bytes(range(256)))
    (data / "emptydir").mkdir()
    _write(data / "other.txt", CORPUS_FILE.read_bytes()[:20_000])
    if "DATA/big.txt" in args:  # validation text for a block of 300,000 characters
        _write(data / "big.txt", CORPUS_FILE.read_bytes() * 3)  # (under 4 MiB: no progress bar)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if setup is not None:
        setup(run)
    if where == "fresh":
        out = tmp_path / "fresh"
        out.mkdir()
        _write(out / "notes.txt", b"an earlier attempt\n")
        _write(out / "metrics.jsonl", b'{"step": 0, "train_loss": 4.2}\n')
    else:
        out = run
    argv = [a.replace("DATA", str(data)).replace("RUN", str(run)) for a in args]
    recipe = [] if "--resume" in argv else [*RECIPE, "--max-iters", "20"]
    return [*recipe, "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out), *argv], [run, out]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_one_line_error_and_changes_nothing(
    tmp_path: Path, finished_run: Path, case: tuple, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, watched = bad_input_case(tmp_path, finished_run, case)
    before = {d: snapshot(d) for d in watched}
    monkeypatch.setenv("LMCORE_DATA_DIR", ENV["LMCORE_DATA_DIR"])
    monkeypatch.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])
    capsys.readouterr()
    code = lmcore.train.main(argv)
    assert_one_line_error(code, capsys.readouterr().err, case[-1])
    assert {d: snapshot(d) for d in watched} == before


CLI_CASES = ["non-utf8-data", "corrupt-checkpoint-tensor", "negative-batch-size", "resume-changes-lr"]


@pytest.mark.parametrize("case", [c for c in BAD_INPUT if c[0] in CLI_CASES], ids=CLI_CASES)
def test_bad_input_on_the_command_line(tmp_path: Path, finished_run: Path, case: tuple) -> None:
    argv, watched = bad_input_case(tmp_path, finished_run, case)
    before = {d: snapshot(d) for d in watched}
    done = cli(*argv)
    assert done.returncode == 2
    assert_one_line_error(done.returncode, done.stderr, case[-1])
    assert {d: snapshot(d) for d in watched} == before


def test_ctrl_c_outside_the_training_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lmcore.run, "resolve_corpus", interrupted)  # Ctrl-C while the corpus loads
    capsys.readouterr()
    try:
        code = lmcore.train.main([*RECIPE, *QUIET, "--out-dir", str(tmp_path / "run")])
    except KeyboardInterrupt:  # (uncaught, it would stop the whole test session)
        pytest.fail("KeyboardInterrupt escaped lmcore.train.main")
    assert code == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert not (tmp_path / "run").exists()


def test_init_from_fine_tunes_from_step_zero(tmp_path: Path, finished_run: Path) -> None:
    base_tensors, base_meta = load_run(finished_run / "ckpt.safetensors")
    out = tmp_path / "finetune"
    train(out, "--max-iters", "10", "--init-from", str(finished_run / "ckpt.safetensors"))
    log = metrics(out)
    # Step 0 evaluates the base model's weights: the same val batches give the base's last val loss.
    assert log[0]["step"] == 0
    assert log[0]["val_loss"] == [r for r in metrics(finished_run) if "val_loss" in r][-1]["val_loss"]
    _, meta = load_run(out / "ckpt.safetensors")
    assert meta["iter_num"] == 10 and meta["adam_step"] == 10  # a new run, a new optimizer
    assert meta["tokenizer"] == base_meta["tokenizer"]
    assert [r["step"] for r in log][:3] == [0, 5, 10]
    # And with no steps, the fine-tune's weights are the base's.
    train(tmp_path / "zero", "--max-iters", "0", "--lr-decay-iters", "10",
          "--init-from", str(finished_run / "ckpt.safetensors"))
    assert_same_tensors(safetensors.numpy.load_file(str(tmp_path / "zero" / "model.safetensors")),
                        base_tensors["param"])


def test_block_option_flags_train_and_resume_bit_for_bit(tmp_path: Path) -> None:
    """The block options as flags: stored in the checkpoint, kept by --resume (which stays bit-exact),
    and the final weights have the options' layout (an untied head, no wpe, no norm biases)."""
    n = 10
    plan = ["--rope", "--rmsnorm", "--qk-norm", "--relu2", "--untied-head", "--zero-init", "--logit-softcap", "15",
            "--lr-decay-iters", str(2 * n)]
    train(tmp_path / "whole", *plan, "--max-iters", str(2 * n))
    train(tmp_path / "split", *plan, "--max-iters", str(n))
    resume(tmp_path / "split", "--max-iters", str(2 * n))
    assert_same_weights(tmp_path / "whole", tmp_path / "split")
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    _, meta = load_run(tmp_path / "whole" / "ckpt.safetensors")
    cfg = RunConfig.from_dict(meta["config"])
    assert (cfg.rope, cfg.rmsnorm, cfg.qk_norm, cfg.relu2, cfg.untied_head, cfg.zero_init) == (True,) * 6
    assert cfg.logit_softcap == 15.0
    weights = safetensors.numpy.load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert weights["lm_head.weight"].shape == (65, 32) and weights["lm_head.weight"].any()  # trained off zero
    assert "transformer.wpe.weight" not in weights and not any(k.endswith("ln_1.bias") for k in weights)
    assert "transformer.h.0.attn.q_norm.weight" in weights
    assert metrics(tmp_path / "whole")[-1]["train_loss"] < metrics(tmp_path / "whole")[0]["train_loss"]
    # An option cannot change on --resume.
    code = run_main(["--resume", "--no-rope", *QUIET, "--out-dir", str(tmp_path / "split"), "--max-iters", "30"])
    assert code == 2


def test_block_option_flags_parse() -> None:
    args = lmcore.train.parse_args(["--rope", "--no-rmsnorm", "--logit-softcap", "30"])
    assert (args.rope, args.rmsnorm, args.qk_norm, args.logit_softcap) == (True, False, None, 30.0)
    assert RunConfig.from_dict(lmcore.run.explicit_settings(args)).rope is True
    assert not any(getattr(RunConfig(), n) for n in ("rope", "rmsnorm", "qk_norm", "relu2", "untied_head",
                                                    "zero_init", "logit_softcap"))  # presets: all off
    args = lmcore.train.parse_args(["--swiglu", "--no-bias"])
    assert (args.swiglu, args.no_bias) == (True, True)
    assert lmcore.train.parse_args(["--no-bias", "--bias"]).no_bias is False


def test_the_llama_block_trains_and_resumes_bit_for_bit_with_muon(tmp_path: Path) -> None:
    """--swiglu and --no-bias (Qwen3's block with --qk-norm), Muon orthogonalising the fused gate and up."""
    n = 10
    plan = ["--rope", "--rmsnorm", "--qk-norm", "--swiglu", "--no-bias", "--untied-head", "--optimizer", "muon",
            "--lr-decay-iters", str(2 * n)]
    train(tmp_path / "whole", *plan, "--max-iters", str(2 * n))
    train(tmp_path / "split", *plan, "--max-iters", str(n))
    resume(tmp_path / "split", "--max-iters", str(2 * n))
    assert_same_weights(tmp_path / "whole", tmp_path / "split")
    weights = safetensors.numpy.load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert weights["transformer.h.0.mlp.c_fc.weight"].shape == (256, 32) and not any(k.endswith("c_fc.bias") for k in weights)
    assert metrics(tmp_path / "whole")[-1]["train_loss"] < metrics(tmp_path / "whole")[0]["train_loss"]


# --- 7. what a run leaves behind ---


def test_checkpoint_and_output_files(finished_run: Path) -> None:
    assert {"model.safetensors", "ckpt.safetensors", "metrics.jsonl", "loss.png"} <= set(os.listdir(finished_run))
    assert (finished_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    tensors, meta = load_run(finished_run / "ckpt.safetensors")
    for key in ("config", "iter_num", "adam_step", "rng_state", "sampler", "tokenizer", "dataset"):
        assert key in meta, key
    cfg = RunConfig.from_dict(meta["config"])
    assert (cfg.d_model, cfg.n_head, cfg.n_layer, cfg.block_size, cfg.batch_size) == (32, 2, 1, 32, 8)
    assert (cfg.max_iters, cfg.lr_decay_iters, cfg.warmup_iters, cfg.eval_interval) == (20, 20, 10, 20)
    assert meta["iter_num"] == 20 and meta["adam_step"] == 20
    assert 0 <= int(meta["rng_state"]) < 2**64
    assert meta["sampler"]["batches_drawn"] == 20
    assert meta["tokenizer"]["vocab_size"] == meta["vocab_size"] == 65
    assert meta["dataset"]["name"] == "tinyshakespeare"
    assert meta["dataset"]["sha256"] == TINYSHAKESPEARE_SHA256
    weights = safetensors.numpy.load_file(str(finished_run / "model.safetensors"))
    assert weights.keys() == tensors["param"].keys() == tensors["adam_m"].keys() == tensors["adam_v"].keys()
    assert_same_tensors(weights, tensors["param"])
    assert all(w.dtype == np.float32 for w in weights.values())

    lines = (finished_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20]
    for r in records:
        for key in ("step", "train_loss", "lr", "tok_s", "rss_mb"):
            assert key in r, (key, r)
        assert math.isfinite(r["train_loss"]) and r["rss_mb"] > 0
        assert r["lr"] == lr_at(max(0, r["step"] - 1), cfg)  # the rate used by the step just taken
        assert ("val_loss" in r) == ("val_bpc" in r) == (r["step"] % cfg.eval_interval == 0)
        if "val_loss" in r:  # characters are tokens: bits per char is the loss in bits
            assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
        assert r["tok_s"] > 0 if r["step"] > 0 else r["tok_s"] is None  # no rate before any step


def test_eval_steps_off_the_log_interval_are_logged_whole(tmp_path: Path) -> None:
    train(tmp_path / "run", "--max-iters", "14", "--eval-interval", "7", "--log-interval", "5")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 5, 7, 10, 14]
    for r in records[1:]:
        assert {"step", "train_loss", "lr", "grad_norm", "tok_s", "rss_mb"} <= r.keys(), r
    assert [r["step"] for r in records if "val_loss" in r] == [0, 7, 14]


# --- 8. byte-level BPE on a directory of text files ---


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two .txt files: the first 80,000 characters of tinyshakespeare, cut in two after a line."""
    data = tmp_path_factory.mktemp("bpe-data")
    text = CORPUS_FILE.read_text(encoding="utf-8")[:80_000]
    cut = text.index("\n", 50_000) + 1
    (data / "part1.txt").write_text(text[:cut], encoding="utf-8")
    (data / "part2.txt").write_text(text[cut:], encoding="utf-8")
    return data


BPE = ["--tokenizer", "bpe", "--vocab-size", "300", "--lr-decay-iters", "20"]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory, bpe_data: Path) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "run"
    train(out, "--data", str(bpe_data), *BPE, "--max-iters", "20")
    return out


def test_bpe_run_stores_its_tokenizer_and_reports_bits_per_char(bpe_run: Path, bpe_data: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])  # (the test session's token cache)
    _, meta = load_run(bpe_run / "ckpt.safetensors")
    assert meta["tokenizer"]["type"] == "bpe" and meta["tokenizer"]["vocab_size"] == meta["vocab_size"] == 300
    assert meta["dataset"]["name"] == bpe_data.name and meta["dataset"]["path"] == str(bpe_data)
    corpus = resolve_corpus(None, bpe_data)
    tokens = tokenize(corpus, tokenizer_from_dict(meta["tokenizer"]))
    assert corpus.text == CORPUS_FILE.read_text(encoding="utf-8")[:80_000]
    assert tokens.val_chars == 8_000 and len(tokens.val) < 6_000  # BPE tokens hold several characters
    evals = [r for r in metrics(bpe_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 20]
    for r in evals:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] * len(tokens.val) / 8_000 / math.log(2), rel=1e-12)


def test_bpe_run_resumes_bit_for_bit(tmp_path: Path, bpe_run: Path, bpe_data: Path) -> None:
    out = tmp_path / "split"
    train(out, "--data", str(bpe_data), *BPE, "--max-iters", "10")
    resume(out, "--max-iters", "20", "--tokenizer", "bpe", "--vocab-size", "300")  # (the same tokenizer: fine)
    assert_same_weights(bpe_run, out)
    assert_same_checkpoint(bpe_run, out)
    assert losses_after(out, 10) == losses_after(bpe_run, 10)  # (the first run evaluated at its end, step 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--resume", "--tokenizer", "char"], r"trained with the bpe tokenizer, not --tokenizer char"),
     (["--resume", "--tokenizer", "bpe", "--vocab-size", "512"], r"has a 300-token vocabulary, not --vocab-size 512"),
     (["--init-from", "RUN/ckpt.safetensors", "--tokenizer", "char", "--max-iters", "5"],
      r"--init-from: the checkpoint .* trained with the bpe tokenizer, not --tokenizer char")],
    ids=["resume-char", "resume-other-vocab", "init-from-char"],
)
def test_bpe_checkpoint_refuses_another_tokenizer(tmp_path: Path, bpe_run: Path, args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(bpe_run, run)
    out = run if "--resume" in args else tmp_path / "fresh"
    before = snapshot(run)
    capsys.readouterr()
    code = run_main([*QUIET, "--out-dir", str(out), *(a.replace("RUN", str(run)) for a in args)])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert snapshot(run) == before and not (tmp_path / "fresh").exists()
