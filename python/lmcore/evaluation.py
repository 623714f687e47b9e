"""Evaluation during training: the mean loss over ``eval_iters`` fixed batches of a split, drawn by
a sampler of its own (the training stream is untouched), and the best validation loss so far."""

from __future__ import annotations

import math

import numpy as np

import lmcore
from lmcore.cli import Interrupted, Stop, UsageError
from lmcore.config import RunConfig
from lmcore.run import Run
from lmcore.sampler import BatchSampler


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


def validation(run: Run, kept: str, stop: Stop | None = None) -> dict[str, float]:
    """The validation loss and bits per character at the run's step, noting the best in the run; a
    non-finite loss stops training (``kept`` says which checkpoint survives)."""
    val = estimate_loss(run.model, run.tokens.val, run.cfg, run.cfg.seed + 1, stop)
    if not math.isfinite(val):
        raise UsageError(f"training stopped at step {run.iter_num}: the validation loss is {val}; {kept}")
    run.best_val = val if run.best_val is None else min(run.best_val, val)
    return {"val_loss": val, "val_bpc": run.tokens.bits_per_char(val)}


def training_loss(run: Run, stop: Stop | None = None) -> float:
    """The training split's loss on fixed batches (step 0's record, before any step)."""
    return estimate_loss(run.model, run.tokens.train, run.cfg, run.cfg.seed + 2, stop)
