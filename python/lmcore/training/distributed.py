"""Data-parallel training over MPI: one model trained by K processes (``mpirun -n K python -m
lmcore.train ...``), each computing the gradients of its B/K rows of the global batch.

Every rank draws the same global batch (the sampler and its checkpointed state are global) and
takes its own rows; the flat gradients, the loss and a stop flag travel in one buffer, summed by
one in-place all-reduce per step and divided by K; then the norm, clipping and the optimizer's
update run alike on every rank, so the ranks hold the same weights (checked by an all-gathered
checksum now and then). Rank 0 alone prints and writes.

MPI is used only when the environment says the process was started by an MPI launcher: a plain
``python -m lmcore.train`` never imports mpi4py, and needs none installed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

import lmcore
from lmcore.errors import Error, UsageError
from lmcore.training.signals import STOP_SIGNALS

# Set by the launchers in every rank's environment: Open MPI's mpirun, and MPICH's (hydra) or
# any PMI launcher's. Their absence means a single process.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")

# Seconds a rank waits in a collective before it gives the whole job up (a rank that died or
# hangs); the launcher then stops the others. Generous: rank 0 writes checkpoints meanwhile.
DEFAULT_TIMEOUT_S = 600.0


class RankError(Error):
    """A failure every rank raises alike (a mismatch, a non-finite step): rank 0 reports it."""


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in SIZE_VARIABLES)


class Group:
    """The ranks training one model. This base is a single process: every collective is trivial
    and a step is ``Model.train_step``, exactly as without MPI."""

    rank = 0
    size = 1

    @property
    def stderr(self) -> Any:
        """Where this rank's errors go (the other ranks' sys.stderr may be silenced)."""
        return sys.stderr

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch."""
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def check_config(self, cfg: Any) -> None:
        """Refuse what the ranks cannot share (``cfg``, the run's RunConfig): a batch they do not
        divide; dropout (every rank would draw the same masks for its rows from its copy of the one
        dropout stream); --sft (a rank's loss is the mean over its own counted reply tokens, whose
        number differs between ranks, so the mean of the ranks' means is not the batch's)."""
        if cfg.batch_size % self.size:
            raise RankError(f"--batch-size {cfg.batch_size} is not divisible by the {self.size} MPI ranks: "
                            "each rank takes an equal share of the global batch")
        if cfg.dropout > 0 and self.size > 1:
            raise RankError(f"--dropout {cfg.dropout:g} is not supported on more than one MPI rank yet: the ranks "
                            "would draw the same dropout masks; use --dropout 0")
        if cfg.sft and self.size > 1:
            raise RankError("--sft is not supported on more than one MPI rank yet: the ranks' reply tokens differ "
                            "in number, so their mean losses cannot simply be averaged; fine-tune on one process")

    def startup(self, error: str | None, fingerprint: dict[str, Any]) -> None:
        """Before any step: every rank's start-up went well and they agree on ``fingerprint``."""

    def step(self, model: lmcore.Model, x: np.ndarray, y: np.ndarray, lr: float,
             stop_signal: int | None) -> tuple[float, float, int | None]:
        """One optimizer step on the global batch ``(x, y)``, this rank's ``stop_signal`` (or None)
        told to the others: (loss, gradient norm, a stop signal another rank received, or None)."""
        loss, grad_norm = model.train_step(x, y, lr)
        return loss, grad_norm, None

    def check_weights(self, model: lmcore.Model, step: int) -> None:
        """Raise if the ranks' weights differ."""


def connect(timeout_s: float | None = None) -> Group:
    """The group of this process: MPI's world when an MPI launcher started it (of any size, one
    included), else a single process, without importing mpi4py."""
    if not launched_by_mpi():
        return Group()
    try:
        from mpi4py import MPI  # noqa: PLC0415 (only under an MPI launcher)
    except ImportError as e:
        raise UsageError(f"started by an MPI launcher but mpi4py cannot be imported ({e}); "
                         "bash scripts/setup.sh installs it") from None
    if timeout_s is None:
        timeout_s = float(os.environ.get("LMCORE_MPI_TIMEOUT", DEFAULT_TIMEOUT_S))
    return MpiGroup(MPI, MPI.COMM_WORLD, timeout_s)


class MpiGroup(Group):
    def __init__(self, mpi: Any, comm: Any, timeout_s: float) -> None:
        self.mpi, self.comm = mpi, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.n, self.buffer, self.grads = 0, np.zeros(0), np.zeros(0)
        self._stderr = sys.stderr  # kept: the other ranks' streams may be silenced later
        self.step_num = 0
        self.timeout_s = timeout_s
        self._waiting_since: float | None = None
        threading.Thread(target=self._watchdog, name="lmcore-mpi-watchdog", daemon=True).start()

    # --- the guard against a hang: a collective that never returns ends the job ---

    @property
    def stderr(self) -> Any:
        return self._stderr

    def _watchdog(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout_s / 4))
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.timeout_s:
                print(f"error: rank {self.rank}: no answer from the other ranks for {self.timeout_s:g} s "
                      f"after step {self.step_num} (a rank died or hangs); stopping the job",
                      file=self._stderr, flush=True)
                os._exit(3)  # the launcher sees a rank fail and stops the rest

    def _collective(self, call: Any, *args: Any) -> Any:
        self._waiting_since = time.monotonic()
        try:
            return call(*args)
        finally:
            self._waiting_since = None

    # --- start-up ---

    def startup(self, error: str | None, fingerprint: dict[str, Any]) -> None:
        reports = self._collective(self.comm.allgather, (error, fingerprint))
        failed = [f"rank {r}: {e}" for r, (e, _) in enumerate(reports) if e is not None]
        if failed:
            raise RankError("start-up failed on " + "; ".join(failed))
        mine = reports[0][1]
        for key in mine:
            values = [fp.get(key) for _, fp in reports]
            if any(v != values[0] for v in values):
                differing = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values) if v != values[0])
                raise RankError(f"the ranks disagree on {key} (rank 0: {values[0]!r}; {differing}): every rank "
                                "must run the same lmcore with the same flags and data")

    # --- one step ---

    def _buffers_for(self, model: lmcore.Model) -> None:
        """The one buffer reduced per step, made once: the gradients, then the loss and the stop
        signal."""
        if self.n != model.num_params or self.buffer.dtype != np.dtype(model.dtype):
            self.n = model.num_params
            self.buffer = np.zeros(self.n + 2, dtype=model.dtype)
            self.grads = self.buffer[:self.n]

    def step(self, model: lmcore.Model, x: np.ndarray, y: np.ndarray, lr: float,
             stop_signal: int | None) -> tuple[float, float, int | None]:
        self._buffers_for(model)
        rows = self.rows(x.shape[0])
        failure = None
        try:
            loss = model.compute_gradients(x[rows], y[rows])
            model.grads_into(self.grads)
        except lmcore.LmcoreError as e:  # a non-finite loss: still take part, so no rank hangs
            failure, loss = e, float("nan")
            self.grads.fill(0)
        self.buffer[self.n] = loss
        self.buffer[self.n + 1] = stop_signal or 0
        self._collective(self.comm.Allreduce, self.mpi.IN_PLACE, self.buffer, self.mpi.SUM)
        self.step_num += 1
        total_loss, signals = float(self.buffer[self.n]), int(self.buffer[self.n + 1])
        if not np.isfinite(total_loss):
            where = f"rank {self.rank}: {failure}" if failure else "on another rank"
            raise RankError(f"training stopped at step {self.step_num}: the loss is not finite ({where}); "
                            "the last checkpoint is intact; --resume continues from it")
        model.grads_from(self.grads, 1.0 / self.size)  # the sum of the ranks' means, to the global mean
        grad_norm = model.apply_gradients(lr)
        told = None
        if signals:  # some rank was told to stop (two ranks' signal numbers add up)
            told = signals if signals in STOP_SIGNALS else signal.SIGTERM
        return total_loss / self.size, grad_norm, told

    def check_weights(self, model: lmcore.Model, step: int) -> None:
        sums = self._collective(self.comm.allgather, model.param_checksum())
        if any(s != sums[0] for s in sums):
            differing = ", ".join(f"rank {r}" for r, s in enumerate(sums) if s != sums[0])
            raise RankError(f"the ranks' weights differ after step {step} ({differing} differ from rank 0's "
                            f"checksum {sums[0]:016x}): the run is no longer one model; resume from the last "
                            "checkpoint")
