"""Training survives faults: a NaN or Inf stops it at a named step with the last good checkpoint
kept; a failing checkpoint write (disk full, read-only directory) leaves the previous checkpoint
byte for byte and says so, as does a failing metrics log or final weights write; and SIGKILL at
random moments (often in the middle of a checkpoint write), again and again, loses nothing:
every resumed run ends with the weights of a run never interrupted, bit for bit.

In-process runs (``lmcore.train.main``) where a monkeypatch simulates the fault; child processes
where a real signal matters. Tiny preset, one thread.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import lmcore
import lmcore.train
import lmcore.training.run
from cli_helpers import (
    QUIET, RECIPE, assert_same_checkpoint, assert_same_weights, iter_num, metrics, requires_corpus, resume,
    run_main, spawn, train,
)
from lmcore import atomic
from lmcore.checkpoint.state import model_from_checkpoint
from lmcore.training.metrics import MetricsLog, read_metrics

pytestmark = requires_corpus

PLAN = ["--lr-decay-iters", "40"]  # a 40-step schedule, run to step 20 first


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 steps, never interrupted."""
    out = tmp_path_factory.mktemp("whole") / "run"
    train(out, *PLAN, "--max-iters", "40")
    return out


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run stopped cleanly at step 20 (read-only: copy it first)."""
    out = tmp_path_factory.mktemp("half") / "run"
    train(out, *PLAN, "--max-iters", "20")
    return out


def copy_of(run: Path, tmp_path: Path) -> tuple[Path, bytes]:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out, (out / "ckpt.safetensors").read_bytes()


def failing_resume(out: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Resume to step 40, expecting exit 2 with one error line (after the progress lines); returns it."""
    capsys.readouterr()
    code = run_main(["--resume", *QUIET, "--out-dir", str(out), "--max-iters", "40", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def assert_finishes_like_whole(out: Path, whole: Path) -> None:
    assert not list(out.glob(".*.tmp"))
    resume(out, "--max-iters", "40")
    assert_same_weights(whole, out)
    assert_same_checkpoint(whole, out)
    assert metrics(out) == metrics(whole)


# --- NaN and Inf ---


class FaultyModel:
    """A real model whose `call`-th train_step (or the evaluation after it) goes non-finite."""

    def __init__(self, model: lmcore.Model, call: int, where: str) -> None:
        self._model, self._call, self._where, self._calls = model, call, where, 0

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, float]:
        self._calls += 1
        if self._calls == self._call and self._where != "val-loss":
            message = {"loss": "loss is NaN", "gradient": "gradient norm is inf"}[self._where]
            raise lmcore.LmcoreError(f"non-finite value: {message}")  # what the engine says (and changes nothing)
        return self._model.train_step(x, y, lr)

    def forward(self, *args: Any) -> tuple[np.ndarray, float | None]:
        logits, loss = self._model.forward(*args)
        return logits, float("nan") if self._calls >= self._call and self._where == "val-loss" else loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@pytest.mark.parametrize("where, call, message, kept", [
    ("loss", 7, r"training stopped at step 27: non-finite value: loss is NaN", 20),
    ("gradient", 3, r"training stopped at step 23: non-finite value: gradient norm is inf", 20),
    ("val-loss", 20, r"training stopped at step 40: the validation loss is nan", 30),  # (evaluated at 40)
], ids=["loss", "gradient", "val-loss"])
def test_non_finite_step_stops_keeps_the_last_good_checkpoint_and_resumes(
    tmp_path: Path, half: Path, whole: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    where: str, call: int, message: str, kept: int,
) -> None:
    out, before = copy_of(half, tmp_path)
    real = lmcore.training.run.model_from_checkpoint

    def faulty(*args: Any, **kwargs: Any) -> tuple:
        model, *rest = real(*args, **kwargs)
        return (FaultyModel(model, call, where), *rest)

    with monkeypatch.context() as mp:
        mp.setattr(lmcore.training.run, "model_from_checkpoint", faulty)
        error = failing_resume(out, capsys)
    assert re.search(message, error), error
    assert error.endswith(f"the checkpoint of step {kept} ({out / 'ckpt.safetensors'}) is intact; "
                          "--resume continues from it")
    assert iter_num(out) == kept
    if kept == 20:
        assert (out / "ckpt.safetensors").read_bytes() == before
    assert_finishes_like_whole(out, whole)


def test_a_diverging_run_stops_at_the_first_non_finite_step(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """No simulation: a learning rate of 1e6 overflows the loss at step 4; step 2's checkpoint is kept,
    and a resume from it stops at the same step, leaving it as it was."""
    out = tmp_path / "run"
    argv = [*RECIPE, *QUIET, "--out-dir", str(out), "--lr", "1e6", "--warmup-iters", "0", "--ckpt-interval", "2",
            "--max-iters", "30"]
    for attempt in range(2):
        capsys.readouterr()
        code = run_main(argv if attempt == 0 else ["--resume", *QUIET, "--out-dir", str(out)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2
        assert err == (f"error: training stopped at step 4: non-finite value: loss is NaN; the checkpoint of step 2 "
                       f"({out / 'ckpt.safetensors'}) is intact; --resume continues from it")
        assert iter_num(out) == 2
        if attempt == 0:
            before = (out / "ckpt.safetensors").read_bytes()
    assert (out / "ckpt.safetensors").read_bytes() == before


def test_weights_that_overflow_are_never_saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate of 1e38 sends the weights to infinity in the first update (its loss was finite):
    the checkpoint of that step is refused, so no unloadable checkpoint is ever left behind."""
    out = tmp_path / "run"
    capsys.readouterr()
    code = run_main([*RECIPE, *QUIET, "--out-dir", str(out), "--lr", "1e38", "--warmup-iters", "0",
                     "--ckpt-interval", "1", "--max-iters", "10"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: training stopped at step 1: not saving a non-finite training state "
                        r"\(param/\S+ holds -?inf\); no checkpoint has been written yet", err), err
    assert not (out / "ckpt.safetensors").exists()


# --- a checkpoint write that fails ---


def disk_full(mp: pytest.MonkeyPatch, out: Path) -> None:
    def write_half(f: Any, data: bytes) -> None:
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mp.setattr(atomic, "_write_and_sync", write_half)


def read_only_directory(mp: pytest.MonkeyPatch, out: Path) -> None:
    out.chmod(0o555)  # enough for a normal user; root writes anyway, so creating files fails too:
    real_open = os.open

    def refuse_in(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path).parent == out and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    mp.setattr(os, "open", refuse_in)


def rename_fails(mp: pytest.MonkeyPatch, out: Path) -> None:
    real_replace = os.replace

    def refuse(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == "ckpt.safetensors":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real_replace(src, dst, *args, **kwargs)

    mp.setattr(os, "replace", refuse)


@pytest.mark.parametrize("fault, reason", [(disk_full, "No space left on device"),
                                           (read_only_directory, "Read-only file system"),
                                           (rename_fails, "Input/output error")],
                         ids=["disk-full", "read-only-directory", "rename-fails"])
def test_failing_checkpoint_write_keeps_the_previous_one_and_says_so(
    tmp_path: Path, half: Path, whole: Path, capsys: pytest.CaptureFixture[str],
    fault: Callable[[pytest.MonkeyPatch, Path], None], reason: str,
) -> None:
    out, before = copy_of(half, tmp_path)
    try:
        with pytest.MonkeyPatch.context() as mp:
            fault(mp, out)
            error = failing_resume(out, capsys)
    finally:
        out.chmod(0o755)
    assert error == (f"error: checkpoint of step 30 not written ({reason}); the checkpoint of step 20 "
                     f"({out / 'ckpt.safetensors'}) is intact; --resume continues from it")
    assert (out / "ckpt.safetensors").read_bytes() == before
    assert_finishes_like_whole(out, whole)


def test_failing_first_checkpoint_write_says_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    disk_full(monkeypatch, out)
    capsys.readouterr()
    assert run_main([*RECIPE, *QUIET, "--out-dir", str(out), "--max-iters", "20"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: checkpoint of step 10 not written (No space left on device); no checkpoint has been written yet")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


# --- a failing metrics log or final weights write ---


def test_failing_metrics_write_stops_keeps_the_checkpoint_and_resumes(
    tmp_path: Path, half: Path, whole: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out, before = copy_of(half, tmp_path)
    real_log = MetricsLog.log

    def full_at_step_25(self: MetricsLog, record: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        if {**(record or {}), **fields}.get("step") == 25:
            self._f.write('{"step": 25, "train_lo')  # the torn line a full disk leaves behind
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_log(self, record, **fields)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MetricsLog, "log", full_at_step_25)
        error = failing_resume(out, capsys)
    assert error == (f"error: training stopped at step 25: metrics log {out / 'metrics.jsonl'} not written (No space "
                     f"left on device); the checkpoint of step 20 ({out / 'ckpt.safetensors'}) is intact; --resume "
                     "continues from it")
    assert (out / "ckpt.safetensors").read_bytes() == before
    assert_finishes_like_whole(out, whole)  # the torn line is dropped, the log ends like the whole run's


def test_failing_final_weights_write_says_so_and_a_resume_writes_them(
    tmp_path: Path, half: Path, whole: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out, _ = copy_of(half, tmp_path)
    weights = out / "model.safetensors"
    old_weights = weights.read_bytes()  # step 20's, from the run that stopped there
    real_replace = os.replace

    def full_for_weights(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst) == weights:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", full_for_weights)
        error = failing_resume(out, capsys)
    assert error == (f"error: final weights not written (No space left on device): {weights}; the checkpoint of "
                     f"step 40 ({out / 'ckpt.safetensors'}) is intact; --resume continues from it")
    assert weights.read_bytes() == old_weights  # the old file, whole: never half of a new one
    assert iter_num(out) == 40
    assert_finishes_like_whole(out, whole)  # nothing left to train: the resume only writes the weights


# --- SIGKILL at random moments, over and over ---

# Checkpoints every 2 steps, so a good share of the time goes into writing them and many kills land
# mid-write; dropout on, so the generator's state must survive too. The plan is far longer than the
# kills leave time for; the last resume sets where the run ends.
KILL_RECIPE = ["--tiny", "--dropout", "0.1", "--eval-interval", "250", "--eval-iters", "2", "--ckpt-interval", "2",
               "--log-interval", "5", "--warmup-iters", "10", "--lr-decay-iters", "5000"]
KILLS, MAX_KILLS, NEVER = 24, 60, "1000000"


def wait_for_new_file(proc: subprocess.Popen[str], path: Path, old_inode: int | None, timeout: float = 120) -> None:
    """Until `path` is another file than the one of inode `old_inode` (or exists, if None)."""
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_ino == old_inode:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no new {path.name} in {timeout} s"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(1125)
    out = tmp_path / "killed"
    ckpt = out / "ckpt.safetensors"
    kills = mid_write = recomputed = saved = 0
    while kills < KILLS or (mid_write == 0 and kills < MAX_KILLS):
        args = ["--resume"] if ckpt.exists() else KILL_RECIPE
        before = ckpt.stat().st_ino if ckpt.exists() else None
        proc = spawn(out, *args, "--max-iters", NEVER, recipe=False,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Each life first saves a checkpoint of its own (a new file: writes replace it whole), so
        # the run moves on however slow the machine is; then it dies at a random moment.
        wait_for_new_file(proc, ckpt, before)
        time.sleep(rng.uniform(0.1, 1.2))
        assert proc.poll() is None, f"the run ended on its own (exit {proc.returncode}) before kill {kills + 1}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        kills += 1
        mid_write += bool(list(out.glob(".ckpt.safetensors.*.tmp")))  # a write it did not finish
        if not ckpt.exists():
            continue
        model, _, _, meta = model_from_checkpoint(ckpt)  # whole and loadable, parameters and optimizer
        assert meta["iter_num"] % 2 == 0 and meta["iter_num"] >= saved, "a checkpoint went back in time"
        logged = max((r["step"] for r in read_metrics(out / "metrics.jsonl")), default=0)
        assert logged - meta["iter_num"] <= 2, "the kill cost more than the steps since the last checkpoint"
        recomputed += max(0, logged - meta["iter_num"])
        saved = meta["iter_num"]

    end = str(saved + 10)
    resume(out, "--max-iters", end)
    train(tmp_path / "whole", *KILL_RECIPE, "--max-iters", end, recipe=False)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert_same_checkpoint(tmp_path / "whole", out)
    assert metrics(out) == metrics(tmp_path / "whole")
    assert not list(out.glob(".*.tmp")), "temporary files of killed writes are cleaned up"
    print(f"\nSIGKILL: {kills} kills survived ({mid_write} in the middle of a checkpoint write), "
          f"{saved} steps checkpointed before the last resume to {end}; logged steps redone: {recomputed}")
