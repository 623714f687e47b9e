"""Data-parallel training on MPI (issue 15), 2 ranks on this machine: equal to one process, the ranks
in step, exact resume, faults found at start-up, a killed rank stopping the job. Each test starts
mpirun in a child process and keeps to a few seconds of --tiny training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from cli_helpers import ENV, QUIET, RECIPE, assert_same_checkpoint, assert_same_weights, requires_corpus
from mpi_helpers import (
    MPI_ENV,
    mpi_spawn,
    mpi_train,
    mpirun_args,
    rank_pid,
    requires_mpi,
    train_args,
    worst_weight_error,
)

FLOAT64_SCRIPT = str(Path(__file__).with_name("mpi_float64_run.py"))
SHORT = ["--max-iters", "50", "--eval-interval", "50"]


def single(out_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same run in one plain process (no MPI in its environment)."""
    return subprocess.run(train_args(out_dir, *args), env=ENV, capture_output=True, text=True, encoding="utf-8",
                          timeout=300)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_single_process_training_never_imports_mpi4py() -> None:
    code = ("import sys, lmcore, lmcore.train, lmcore.training.distributed as d; "
            "g = d.connect(); assert g.size == 1 and g.is_root; assert 'mpi4py' not in sys.modules, 'imported'")
    env = {k: v for k, v in ENV.items() if k not in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


@requires_mpi
@requires_corpus
def test_two_ranks_equal_one_process_in_float32(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    ok(single(one, *SHORT))
    proc = ok(mpi_train(2, two, *SHORT))
    assert proc.stdout.count("done: 50 steps") == 1  # rank 0 alone prints
    assert "2 MPI ranks" in proc.stdout
    a = safetensors.numpy.load_file(str(one / "model.safetensors"))
    b = safetensors.numpy.load_file(str(two / "model.safetensors"))
    assert worst_weight_error(a, b)[0] <= 1e-5, worst_weight_error(a, b)  # every weight within 1e-5 relative
    # Only rank 0 wrote: one metrics log with one line per logged step.
    steps = [line for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len((one / "metrics.jsonl").read_text().splitlines())


@requires_mpi
def test_two_ranks_equal_one_process_in_float64_and_stay_in_step(tmp_path: Path) -> None:
    ref, dp = tmp_path / "one.npz", tmp_path / "two.npz"
    subprocess.run([sys.executable, FLOAT64_SCRIPT, str(ref), "20"], env=ENV, check=True, timeout=120)
    proc = subprocess.run(mpirun_args(2, sys.executable, FLOAT64_SCRIPT, str(dp), "20"), env=MPI_ENV,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The nudged weight was caught by the checksum, naming the rank.
    assert "caught: the ranks' weights differ after step 20 (rank 1 differ" in proc.stdout
    a, b = np.load(ref), np.load(dp)
    # Every weight (and the losses and gradient norms) within 1e-10 relative.
    weights = lambda npz: {name: npz[name] for name in npz.files}  # noqa: E731
    assert worst_weight_error(weights(a), weights(b))[0] <= 1e-10, worst_weight_error(weights(a), weights(b))


@requires_mpi
@requires_corpus
def test_resume_on_the_same_ranks_is_bit_exact(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    ok(mpi_train(2, whole, "--max-iters", "20", "--lr-decay-iters", "20"))
    ok(mpi_train(2, parts, "--max-iters", "10", "--lr-decay-iters", "20"))
    ok(mpi_train(2, parts, "--resume", "--max-iters", "20", recipe=False))
    assert_same_checkpoint(whole, parts)
    assert_same_weights(whole, parts)


@requires_mpi
@requires_corpus
def test_a_batch_the_ranks_do_not_divide_is_refused(tmp_path: Path) -> None:
    proc = mpi_train(2, tmp_path / "out", "--batch-size", "7")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: start-up failed on rank 0: --batch-size 7 is not divisible by the 2 MPI ranks: "
                      "each rank takes an equal share of the global batch; rank 1: --batch-size 7 is not "
                      "divisible by the 2 MPI ranks: each rank takes an equal share of the global batch"], proc.stderr
    assert not (tmp_path / "out").exists()


def mpmd(out: Path, first: list[str], second: list[str]) -> subprocess.CompletedProcess[str]:
    """Rank 0 runs ``first`` and rank 1 ``second`` (MPI's multiple-program launch)."""
    cmd = mpirun_args(1, *first)
    cmd += [":", "-n", "1", "-x", "LMCORE_DATA_DIR", "-x", "XDG_CACHE_HOME", *second]
    return subprocess.run(cmd, env=MPI_ENV, capture_output=True, text=True, encoding="utf-8", timeout=120,
                          stdin=subprocess.DEVNULL)


@requires_mpi
@requires_corpus
@pytest.mark.parametrize("case", ["flags", "version", "data"])
def test_ranks_that_differ_or_fail_are_stopped_before_any_step(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    base = train_args(out, *SHORT)
    other = {
        "flags": [*base, "--seed", "7"],
        "version": [sys.executable, "-c", "import sys, lmcore; lmcore.__version__ = '0.0.0-other'; "
                    "import lmcore.train; sys.exit(lmcore.train.main(sys.argv[1:]))", *base[3:]],
        "data": [*base, "--data", str(tmp_path / "missing.txt")],
    }[case]
    proc = mpmd(out, base, other)
    assert proc.returncode != 0
    expected = {"flags": r"the ranks disagree on configuration \(rank 0: .*rank 1: ",
                "version": "the ranks disagree on lmcore version .*rank 1: '0.0.0-other'",
                "data": "start-up failed on rank 1: .*missing.txt"}[case]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and __import__("re").search(expected, errors[0]), proc.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "ckpt.safetensors").exists()


@requires_mpi
@requires_corpus
def test_a_killed_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = mpi_spawn(2, out, "--max-iters", "100000", "--eval-interval", "100000", stderr=subprocess.PIPE,
                     stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "ckpt.safetensors").exists() or (pid := rank_pid(1, str(out))) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert stopped_after < 30, stopped_after
    assert "rank 1" in err and "signal 9" in err, err  # mpirun names the rank and how it died
    # The checkpoint is whole; --resume continues it.
    ok(mpi_train(2, out, "--resume", "--max-iters", str(_ckpt_step(out) + 5),
                 recipe=False))
    assert _ckpt_step(out) > 0


def _logged_step(out: Path) -> int:
    """The last step in the metrics log (a line being written is skipped)."""
    steps = [0]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass
    return steps[-1]


def _ckpt_step(out: Path) -> int:
    from lmcore.checkpoint.state import load_run  # noqa: PLC0415
    return int(load_run(out / "ckpt.safetensors")[1]["iter_num"])


@requires_mpi
@requires_corpus
def test_a_rank_that_hangs_ends_the_job_after_the_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = mpi_spawn(2, out, "--max-iters", "100000", "--eval-interval", "100000", stderr=subprocess.PIPE,
                     stdout=subprocess.DEVNULL, env={**MPI_ENV, "LMCORE_MPI_TIMEOUT": "3"})
    pid = None
    try:
        deadline = time.monotonic() + 120
        while not (out / "ckpt.safetensors").exists() or (pid := rank_pid(1, str(out))) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)  # alive, but never answers
        _, err = proc.communicate(timeout=60)
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "error: rank 0: no answer from the other ranks for 3 s" in err, err


@requires_mpi
@requires_corpus
@pytest.mark.parametrize(("flags", "message"), [
    (["--dropout", "0.1"], "--dropout 0.1 is not supported on more than one MPI rank"),
    (["--sft", "--dataset", "plays-dialogue"], "--sft is not supported on more than one MPI rank"),
])
def test_what_the_ranks_cannot_share_is_refused(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = mpi_train(2, tmp_path / "out", *flags)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


@requires_mpi
@requires_corpus
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_mpirun_leaves_a_resumable_run(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM to mpirun reaches every rank; the ranks stop together and rank 0 saves."""
    out = tmp_path / "out"
    proc = mpi_spawn(2, out, "--max-iters", "100000", "--eval-interval", "100000", stderr=subprocess.PIPE,
                     stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "ckpt.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        first = _ckpt_step(out)
        # Some steps past the first checkpoint: wait for a logged step beyond it (a fixed second
        # was not always enough on a busy machine, where the run was still at that step).
        while _logged_step(out) <= first:
            assert proc.poll() is None and time.monotonic() < deadline, "no step past the first checkpoint"
            time.sleep(0.05)
        proc.send_signal(sig)
        out_text, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = _ckpt_step(out)
    assert stopped > first, (first, stopped, out_text[-500:], err[-500:])  # the stop saved where it was
    ok(mpi_train(2, out, "--resume", "--max-iters", str(stopped + 5), recipe=False))
    assert _ckpt_step(out) == stopped + 5
