"""Evaluation on the whole validation split (``--eval-full``), the wall clock on every metrics line
(``elapsed_s``, continued by ``--resume``) and stopping at a target loss (``--target-loss``).

The full evaluation is checked against a direct computation (numpy's log-softmax of the model's
logits, window by window); the runs use the tiny preset for a few dozen steps on one thread."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import lmcore
import lmcore.training.evaluation
import lmcore.training.loop
from cli_helpers import (
    ENV,
    QUIET,
    RECIPE,
    assert_same_checkpoint,
    assert_same_weights,
    iter_num,
    metrics,
    requires_corpus,
    resume,
    run_main,
    train,
)
from lmcore.checkpoint.state import load_run
from lmcore.config import RunConfig
from lmcore.data.datasets import resolve_corpus
from lmcore.data.tokens import tokenize
from lmcore.tokenizer import tokenizer_from_dict
from lmcore.training.evaluation import full_loss
from lmcore.training.metrics import read_metrics
from lmcore.training.schedule import lr_at
from lmcore.training.signals import Interrupted, Stop

VOCAB, BLOCK = 11, 8


@pytest.fixture(scope="module")
def model() -> lmcore.Model:
    m = lmcore.Model(vocab_size=VOCAB, d_model=16, n_head=2, n_layer=1, block_size=BLOCK, seed=3)
    rng = np.random.default_rng(0)
    for name in m.param_names():  # trained-looking weights: the loss differs from window to window
        m.set_param(name, m.get_param(name) + rng.normal(0, 0.3, m.get_param(name).shape).astype(np.float32))
    return m


def direct_mean_loss(model: lmcore.Model, data: np.ndarray) -> tuple[float, list[int]]:
    """The mean over every target of -log p(target), one window at a time in float64, and which
    positions of ``data`` were targets."""
    nll, targets = [], []
    for start in range(0, len(data) - 1, BLOCK):
        window = data[start:start + BLOCK + 1].astype(np.int64)
        logits = model.forward(window[None, :-1])[0][0].astype(np.float64)  # (T, V)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll.extend(-logp[np.arange(len(window) - 1), window[1:]])
        targets.extend(range(start + 1, start + len(window)))
    return float(np.mean(nll)), targets


class Recorder:
    """A model that notes the targets of every batch it is asked about."""

    def __init__(self, model: lmcore.Model) -> None:
        self.model, self.batches = model, []

    def forward(self, x: np.ndarray, y: np.ndarray) -> Any:
        assert x.dtype == y.dtype == np.int64 and x.shape == y.shape and x.shape[1] <= BLOCK
        assert np.array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
        self.batches.append(y.copy())
        return self.model.forward(x, y)


@pytest.mark.parametrize("n_tokens", [BLOCK + 1, 5 * BLOCK + 1, 1000, 1003])  # 1000, 1003: a shorter last window
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_full_loss_is_the_mean_over_every_target_once(model: lmcore.Model, n_tokens: int, batch_size: int) -> None:
    data = np.random.default_rng(n_tokens).integers(0, VOCAB, n_tokens).astype(np.uint16)
    expected, targets = direct_mean_loss(model, data)
    assert targets == list(range(1, n_tokens))  # (the reference itself predicts every token once)

    recorder = Recorder(model)
    loss = full_loss(recorder, data, BLOCK, batch_size)  # type: ignore[arg-type]
    assert loss == pytest.approx(expected, rel=1e-5)
    seen = np.concatenate([y.reshape(-1) for y in recorder.batches])
    assert np.array_equal(seen, data[1:])  # every target exactly once, in order
    assert all(len(y) <= batch_size for y in recorder.batches)
    assert sum(y.shape[1] < BLOCK for y in recorder.batches) == int((n_tokens - 1) % BLOCK > 0)

    again = full_loss(model, data, BLOCK, batch_size)
    assert again == loss  # deterministic: the same model gives the same number, exactly


def test_a_stop_signal_cuts_a_full_evaluation_short(model: lmcore.Model) -> None:
    stop = Stop()
    stop.signal = 15
    data = np.zeros(100, dtype=np.uint16)
    with pytest.raises(Interrupted):
        full_loss(model, data, BLOCK, 4, stop)
    with pytest.raises(Interrupted):  # (the tail alone too)
        full_loss(model, data[:5], BLOCK, 4, stop)


# --- runs ---

FULL = ["--eval-full", "--schedule", "wsd", "--decay-frac", "0.5", "--final-lr-ratio", "0.2", "--lr-decay-iters", "40"]


def assert_clock(records: list[dict[str, Any]]) -> None:
    times = [r["elapsed_s"] for r in records]
    assert all(isinstance(t, float) and 0 < t for t in times), times
    assert times == sorted(times), times


@requires_corpus
def test_eval_full_run_resumed_is_the_same_run_and_keeps_its_schedule(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    train(tmp_path / "whole", *FULL, "--max-iters", "40")
    out = tmp_path / "split"
    train(out, *FULL, "--max-iters", "20")
    _, meta = load_run(out / "ckpt.safetensors")
    paused = meta["elapsed_s"]
    assert paused >= read_metrics(out / "metrics.jsonl")[-1]["elapsed_s"]
    time.sleep(0.2)  # (a pause between the processes is not the run's time)
    resume(out, "--max-iters", "40")  # the recipe (wsd, --eval-full) comes from the checkpoint

    assert_same_weights(tmp_path / "whole", out)
    assert_same_checkpoint(tmp_path / "whole", out)
    assert metrics(out) == metrics(tmp_path / "whole")
    records = read_metrics(out / "metrics.jsonl")
    assert_clock(records)
    assert min(r["elapsed_s"] for r in records if r["step"] > 20) >= paused  # continued, not restarted
    assert load_run(out / "ckpt.safetensors")[1]["elapsed_s"] >= records[-1]["elapsed_s"]

    cfg = RunConfig.from_dict(load_run(out / "ckpt.safetensors")[1]["config"])
    assert (cfg.schedule, cfg.eval_full, cfg.decay_frac, cfg.final_lr_ratio) == ("wsd", True, 0.5, 0.2)
    lrs = {r["step"]: r["lr"] for r in records}
    assert all(lrs[s] == lr_at(max(0, s - 1), cfg) for s in lrs)
    assert lrs[15] == cfg.lr and lrs[40] == pytest.approx(cfg.lr * (1 - 0.8 * 19 / 20))  # stable, then decaying

    # The logged validation loss is the whole split's, of the final weights, exactly as full_loss gives it.
    monkeypatch.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])
    tokens = tokenize(resolve_corpus("tinyshakespeare", None), tokenizer_from_dict(meta["tokenizer"]))
    model = lmcore.Model(**cfg.model_settings(meta["vocab_size"]))
    for name, value in safetensors.numpy.load_file(str(out / "model.safetensors")).items():
        model.set_param(name, value)
    assert records[-1]["val_loss"] == full_loss(model, tokens.val, cfg.block_size, cfg.batch_size)
    assert records[-1]["val_bpc"] == pytest.approx(records[-1]["val_loss"] / math.log(2), rel=1e-12)


@requires_corpus
def test_elapsed_s_counts_evaluations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = lmcore.training.loop.validation

    def slow(run: Any, kept: str, stop: Any = None) -> dict[str, float]:
        if run.iter_num == 10:
            time.sleep(0.3)
        return real(run, kept, stop)

    monkeypatch.setattr(lmcore.training.loop, "validation", slow)
    train(tmp_path / "run", "--max-iters", "20", "--eval-interval", "10")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20]
    assert_clock(records)
    assert records[2]["elapsed_s"] - records[1]["elapsed_s"] >= 0.3


@requires_corpus
def test_target_loss_stops_at_the_first_evaluation_below_it(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    plan = [*RECIPE, "--eval-interval", "10", "--max-iters", "40", "--threads", "1", "--sample-tokens", "0"]
    train(tmp_path / "whole", *plan)
    evals = [(r["step"], r["val_loss"]) for r in metrics(tmp_path / "whole") if "val_loss" in r]
    target = evals[2][1]  # step 20's loss; the run stops at the first evaluation at or below it
    stop_step = next(step for step, val in evals if val <= target)
    assert 0 < stop_step < 40

    out = tmp_path / "target"
    capsys.readouterr()
    assert run_main([*plan, "--out-dir", str(out), "--target-loss", repr(target)]) == 0
    said = capsys.readouterr()
    assert iter_num(out) == stop_step and (out / "model.safetensors").is_file()
    assert metrics(out) == [r for r in metrics(tmp_path / "whole") if r["step"] <= stop_step]
    assert f"target val loss {target:g} reached at step {stop_step} after " in said.err
    done = [line for line in said.out.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and f"done: {stop_step} steps" in done[0] and f"reached at step {stop_step}" in done[0]

    # --resume may change the target (it is not the recipe); unreachable, the run goes to --max-iters,
    # and is the same run as the one never stopped.
    capsys.readouterr()
    assert run_main(["--resume", "--out-dir", str(out), "--threads", "1", "--sample-tokens", "0",
                     "--target-loss", "0.01"]) == 0
    said = capsys.readouterr()
    assert "done: 40 steps" in said.out and "target val loss 0.01 not reached" in said.out
    assert iter_num(out) == 40
    assert_same_weights(tmp_path / "whole", out)
    assert metrics(out) == metrics(tmp_path / "whole")


@requires_corpus
def test_target_loss_reached_at_step_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    capsys.readouterr()
    train(out, "--max-iters", "20", "--target-loss", "100")
    assert "done: 0 steps" in capsys.readouterr().out
    assert iter_num(out) == 0 and (out / "model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0]



@requires_corpus
def test_a_full_evaluation_cut_short_is_done_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop signal during step 10's full evaluation stops it between two batches; the checkpoint of
    step 10 holds the step's record, and the resumed run evaluates and logs it, so its log equals a
    continuous run's (as test_train's case of sampled evaluations)."""
    real, calls = lmcore.training.evaluation.full_loss, []

    def signalled(model: Any, data: Any, block_size: int, batch_size: int, stop: Any = None) -> float:
        calls.append(0)
        batches = calls if len(calls) == 2 else None  # step 0's evaluation, then step 10's: cut short

        class Signalling:
            def forward(self, x: np.ndarray, y: np.ndarray) -> Any:
                if batches is not None:
                    batches[-1] += 1
                    if batches[-1] == 3:
                        os.kill(os.getpid(), signal.SIGTERM)
                return model.forward(x, y)
        return real(Signalling(), data, block_size, batch_size, stop)  # type: ignore[arg-type]

    plan = ["--eval-full", "--max-iters", "20", "--eval-interval", "10", "--lr-decay-iters", "20"]
    train(tmp_path / "whole", *plan)
    out = tmp_path / "run"
    monkeypatch.setattr(lmcore.training.evaluation, "full_loss", signalled)
    assert run_main([*RECIPE, *QUIET, *plan, "--out-dir", str(out)]) == 128 + signal.SIGTERM
    assert calls == [0, 3]  # three batches of step 10's evaluation, not the split's 436
    assert iter_num(out) == 10 and [r["step"] for r in metrics(out)][-1] < 10
    monkeypatch.setattr(lmcore.training.evaluation, "full_loss", real)
    resume(out)
    assert metrics(out) == metrics(tmp_path / "whole")
    assert_same_checkpoint(tmp_path / "whole", out)
    assert_clock(read_metrics(out / "metrics.jsonl"))
