"""``python -m lmcore.train``: a resumed run is the same run bit for bit (after a clean stop, in ten
separate processes, after SIGKILL, after Ctrl-C, with a longer planned schedule), and a checkpoint
holds the whole state. Bad input, ``--init-from``, the block option flags and BPE runs are
test_train_input.py's.

Runs use the tiny preset for a few dozen steps on one thread (two where noted), in-process (``lmcore.train.main``)
where that is enough, as subprocesses where a separate process or a signal matters.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import lmcore.train
import lmcore.training.loop
import lmcore.training.run
import lmcore.training.saving
from cli_helpers import (
    QUIET, RECIPE, assert_same_checkpoint, assert_same_tensors, assert_same_weights, cli, iter_num,
    losses_after, metrics, requires_corpus, resume, run_main, spawn, train, wait_for_checkpoint,
)
from lmcore.checkpoint.file import load_checkpoint
from lmcore.checkpoint.state import load_run, new_model
from lmcore.config import RunConfig
from lmcore.training.metrics import read_metrics
from lmcore.training.schedule import lr_at

TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

pytestmark = requires_corpus


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
    real_save = lmcore.training.saving.save_run
    calls = []

    def save_under_fire(path: Path, *args: Any) -> None:
        calls.append(path)
        if len(calls) == 2:  # the second interval checkpoint: signals before and during its write
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGHUP)
        real_save(path, *args)

    monkeypatch.setattr(lmcore.training.saving, "save_run", save_under_fire)
    out = tmp_path / "run"
    argv = [*RECIPE, *QUIET, "--max-iters", "40", "--out-dir", str(out)]
    assert run_main(argv) == 128 + signal.SIGTERM
    assert iter_num(out) == 20 and len(calls) == 3  # stopped at the checkpoint of step 20, saved again
    monkeypatch.setattr(lmcore.training.saving, "save_run", real_save)
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
    real = lmcore.training.loop.validation
    calls = []

    def signalled(run: Any, kept: str, stop: Any = None) -> dict[str, float]:
        calls.append(run.iter_num)
        if run.iter_num == 20 and calls.count(20) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives before the evaluation's first batch
        return real(run, kept, stop)

    monkeypatch.setattr(lmcore.training.loop, "validation", signalled)
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
