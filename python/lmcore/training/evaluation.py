"""Evaluation during training: the mean loss over ``eval_iters`` fixed batches of a split, drawn by
a sampler of its own (the training stream is untouched), over every window of a split
(``full_loss``, ``--eval-full``), or over every reply token of packed windows (``masked_loss``:
token-weighted, ``--sft``); which one a run uses is its data's (``training/data.py``). And the best
validation loss so far."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

import lmcore
from lmcore.config import RunConfig
from lmcore.data.batches import BatchSampler
from lmcore.errors import TrainingError
from lmcore.training.signals import Interrupted, Stop

if TYPE_CHECKING:  # (the run holds its data, whose losses are these functions)
    from lmcore.training.run import Run


def estimate_loss(model: lmcore.Model, data: np.ndarray, cfg: RunConfig, seed: int, stop: Stop | None = None) -> float:
    """Mean loss over ``eval_iters`` fixed batches of ``data``; a stop signal (``stop``) ends it
    with ``Interrupted`` between two batches."""
    sampler = BatchSampler(data, cfg.block_size, cfg.batch_size, seed=seed)
    total = 0.0
    for _ in range(cfg.eval_iters):
        if stop is not None and stop.signal is not None:
            raise Interrupted
        total += model.forward(*sampler.next_batch())[1]
    return total / cfg.eval_iters


def full_loss(model: lmcore.Model, data: np.ndarray, block_size: int, batch_size: int,
              stop: Stop | None = None) -> float:
    """The mean loss over every token of ``data`` after the first, each predicted exactly once.

    Window k holds tokens [k*T, k*T + T] (T = ``block_size``): x its first T, y its last T, so the
    inputs of two windows never overlap and every target is counted once; the tail (fewer than T
    targets left) is a shorter last window. The mean is token-weighted (a short window counts for
    its tokens only). ``batch_size`` windows go through the model at a time, always the same ones,
    so the same model gives the same number. A stop signal ends it with ``Interrupted`` between
    two batches."""
    n_targets = len(data) - 1
    full, tail = divmod(n_targets, block_size)
    starts = np.arange(full, dtype=np.int64) * block_size
    offsets = np.arange(block_size + 1, dtype=np.int64)
    total = 0.0
    for first in range(0, full, batch_size):
        if stop is not None and stop.signal is not None:
            raise Interrupted
        windows = np.asarray(data[starts[first:first + batch_size, None] + offsets], dtype=np.int64)
        total += model.forward(windows[:, :-1], windows[:, 1:])[1] * windows.shape[0] * block_size
    if tail:
        if stop is not None and stop.signal is not None:
            raise Interrupted
        window = np.asarray(data[full * block_size:], dtype=np.int64)[None, :]
        total += model.forward(window[:, :-1], window[:, 1:])[1] * tail
    return total / n_targets


def masked_loss(model: lmcore.Model, x: np.ndarray, y: np.ndarray, batch_size: int,
                stop: Stop | None = None) -> float:
    """The mean loss over every counted target (not ``IGNORE_ID``) of the windows ``x``, ``y``:
    the sum of the per-token losses divided by their number, so a window counts for its counted
    tokens (a mean of per-window or per-batch means would weigh a window with one reply token
    as much as one full of them). ``batch_size`` windows at a time, in order; a stop signal ends
    it with ``Interrupted`` between two batches."""
    total, count = 0.0, 0
    for first in range(0, len(x), batch_size):
        if stop is not None and stop.signal is not None:
            raise Interrupted
        xb, yb = x[first:first + batch_size].astype(np.int64), y[first:first + batch_size].astype(np.int64)
        n = int((yb != lmcore.IGNORE_ID).sum())
        if n:  # (forward's loss is the mean over the batch's counted targets)
            total += model.forward(xb, yb)[1] * n
            count += n
    if count == 0:
        raise ValueError("no counted target to measure a loss on")
    return total / count


def validation(run: Run, kept: str, stop: Stop | None = None) -> dict[str, float]:
    """The validation loss and bits per character at the run's step, noting the best in the run; a
    non-finite loss stops training (``kept`` says which checkpoint survives)."""
    val = run.data.validation_loss(run.model, run.cfg, stop)
    if not math.isfinite(val):
        raise TrainingError(f"training stopped at step {run.iter_num}: the validation loss is {val}; {kept}")
    run.best_val = val if run.best_val is None else min(run.best_val, val)
    return {"val_loss": val, "val_bpc": run.data.bits_per_char(val)}


def training_loss(run: Run, stop: Stop | None = None) -> float:
    """The training split's loss on fixed batches (step 0's record, before any step)."""
    return run.data.training_loss(run.model, run.cfg, stop)
