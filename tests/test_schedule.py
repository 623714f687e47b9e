"""The learning-rate schedules: cosine exactly as before, warmup-stable-decay at its key steps, their
settings checked with the flags' names, and a checkpoint of an earlier lmcore (without them) read as
the cosine run it was. (A resumed wsd run keeping its schedule: tests/test_eval.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cli_helpers import requires_corpus, resume, train
from lmcore.checkpoint.file import load_checkpoint, save_checkpoint
from lmcore.checkpoint.state import DIGEST_KEY, model_from_checkpoint, state_digest
from lmcore.config import LATER_FIELDS, RunConfig
from lmcore.training.metrics import read_metrics
from lmcore.training.schedule import lr_at


def cosine_before_wsd(it: int, cfg: RunConfig) -> float:
    """``lr_at`` as it was before schedules could be chosen, verbatim."""
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


@pytest.mark.parametrize("settings", [
    dict(),
    dict(lr=3e-3, min_lr=0.0, warmup_iters=0, lr_decay_iters=None, max_iters=777),
    dict(lr=1e-3, min_lr=1e-4, warmup_iters=50, lr_decay_iters=20),
    dict(lr=6e-4, min_lr=6e-5, warmup_iters=7, lr_decay_iters=1003, decay_frac=0.5, final_lr_ratio=0.0),
])
def test_cosine_is_bit_identical_to_before(settings: dict) -> None:
    cfg = RunConfig(**settings)
    assert cfg.schedule == "cosine"
    for it in range(0, 12_000, 7):
        assert lr_at(it, cfg) == cosine_before_wsd(it, cfg), it  # (==: the same floats, not close ones)


def test_wsd_at_its_key_steps() -> None:
    cfg = RunConfig(schedule="wsd", lr=1e-3, min_lr=0.5, warmup_iters=10, lr_decay_iters=1000, max_iters=2000,
                    decay_frac=0.2, final_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)  # the warmup is cosine's
    assert lr_at(9, cfg) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, cfg) == cfg.lr  # warmup's end: the peak
    assert all(lr_at(it, cfg) == cfg.lr for it in range(10, 801))  # stable until the decay starts at 1000 - 200
    assert lr_at(900, cfg) == pytest.approx(1e-3 * (1 - 0.9 * 0.5))  # halfway down, linearly
    decay = [lr_at(it, cfg) for it in range(800, 1001)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=1e-9)  # a straight line
    assert lr_at(999, cfg) > 1e-4
    assert lr_at(1000, cfg) == pytest.approx(1e-4, rel=1e-12)  # lr x final_lr_ratio at lr_decay_iters
    assert all(lr_at(it, cfg) == lr_at(1000, cfg) for it in (1001, 1500, 1999, 10**6))  # and flat after
    # min_lr is the cosine's: wsd does not use it


def test_wsd_edges() -> None:
    # No --lr-decay-iters: the decay ends at max_iters; decay_frac 1 with no warmup decays from step 0.
    cfg = RunConfig(schedule="wsd", lr=1.0, warmup_iters=0, lr_decay_iters=None, max_iters=100, decay_frac=1.0,
                    final_lr_ratio=0.0)
    assert [lr_at(it, cfg) for it in (0, 25, 50, 100, 101)] == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    # A decay longer than what follows the warmup starts when the warmup ends, not inside it.
    cfg = RunConfig(schedule="wsd", lr=1.0, warmup_iters=60, lr_decay_iters=100, decay_frac=0.5, final_lr_ratio=0.2)
    assert lr_at(59, cfg) == pytest.approx(60 / 61) and lr_at(60, cfg) == 1.0
    assert lr_at(80, cfg) == pytest.approx(0.6) and lr_at(100, cfg) == pytest.approx(0.2)
    # A warmup past the decay's end: the final rate right after it, as the cosine does.
    cfg = RunConfig(schedule="wsd", lr=1.0, warmup_iters=50, lr_decay_iters=20, final_lr_ratio=0.3)
    assert lr_at(49, cfg) == pytest.approx(50 / 51) and lr_at(50, cfg) == pytest.approx(0.3)
    # A decay_frac too small for one step: stable to the end, then the final rate.
    cfg = RunConfig(schedule="wsd", lr=1.0, warmup_iters=0, lr_decay_iters=10, decay_frac=0.01, final_lr_ratio=0.5)
    assert [lr_at(it, cfg) for it in (0, 9, 10)] == [1.0, 1.0, 0.5]


@pytest.mark.parametrize("settings, message", [
    (dict(schedule="linear"), r"^--schedule must be cosine or wsd, got 'linear'$"),
    (dict(schedule=1), r"^--schedule must be a name, got 1$"),
    (dict(decay_frac=0.0), r"^--decay-frac must be in \(0, 1\], got 0.0$"),
    (dict(decay_frac=1.01), r"^--decay-frac must be in \(0, 1\], got 1.01$"),
    (dict(decay_frac=float("nan")), r"^--decay-frac must be in \(0, 1\], got nan$"),
    (dict(decay_frac="0.2"), r"^--decay-frac must be a number"),
    (dict(final_lr_ratio=-0.5), r"^--final-lr-ratio must be in \[0, 1\], got -0.5$"),
    (dict(final_lr_ratio=float("inf")), r"^--final-lr-ratio must be in \[0, 1\], got inf$"),
    (dict(eval_full=1), r"^--eval-full must be true or false, got 1$"),
    (dict(eval_full=None), r"^--eval-full must be true or false, got None$"),
])
def test_bad_schedule_settings_are_refused_by_flag_name(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig(**settings).validate()


def test_edge_settings_are_accepted() -> None:
    RunConfig(schedule="wsd", decay_frac=1, final_lr_ratio=0).validate()
    RunConfig(schedule="wsd", decay_frac=1e-9, final_lr_ratio=1.0, eval_full=True).validate()


@requires_corpus
def test_a_checkpoint_from_before_schedules_is_a_cosine_run(tmp_path: Path) -> None:
    """A checkpoint written before these settings existed lacks them (and elapsed_s): it loads, as the
    cosine run with sampled evaluations it was, from 0 seconds."""
    out = tmp_path / "old"
    train(out, "--max-iters", "10")
    path = out / "ckpt.safetensors"
    tensors, meta = load_checkpoint(path)
    for name in LATER_FIELDS:
        del meta["config"][name]
    del meta["elapsed_s"], meta[DIGEST_KEY], meta["format_version"]
    save_checkpoint(path, tensors, {**meta, DIGEST_KEY: state_digest(tensors, meta)})
    _, _, cfg, loaded = model_from_checkpoint(path)
    assert "schedule" not in loaded["config"] and "elapsed_s" not in loaded
    assert (cfg.schedule, cfg.eval_full) == ("cosine", False)
    resume(out, "--max-iters", "20")
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["step"] > 10] == [15, 20]
    assert all(0 <= r["elapsed_s"] for r in records)
    _, meta = load_checkpoint(path)
    assert meta["config"]["schedule"] == "cosine" and meta["elapsed_s"] > 0
