"""The learning-rate schedules of ``config.SCHEDULES``: a linear warmup, then cosine to ``min_lr`` or
warmup-stable-decay, then flat from ``lr_decay_iters`` on."""

from __future__ import annotations

import math

from lmcore.config import RunConfig


def lr_at(it: int, cfg: RunConfig) -> float:
    """Learning rate for iteration ``it`` (0-based): warmup, then the schedule (cosine to min_lr, or
    wsd's stable and decay phases), then flat at its final value from ``lr_decay_iters`` on."""
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.schedule == "wsd":
        return _wsd(it, decay_iters, cfg)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def _wsd(it: int, decay_iters: int, cfg: RunConfig) -> float:
    """Warmup-stable-decay after the warmup: flat at lr, then linear from lr (at the decay's start,
    the last ``decay_frac`` of ``decay_iters``, but not before the warmup ends) down to
    lr * final_lr_ratio at ``decay_iters``, and flat after it."""
    final = cfg.lr * cfg.final_lr_ratio
    if it >= decay_iters:
        return final
    start = max(cfg.warmup_iters, decay_iters - round(cfg.decay_frac * decay_iters))
    if it < start:
        return cfg.lr
    return cfg.lr + (it - start) / (decay_iters - start) * (final - cfg.lr)
