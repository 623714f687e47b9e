"""A training run: everything the loop needs, in one object with named fields, and how it is made
from the command line's flags: fresh, resumed from ``--out-dir``'s checkpoint, or fine-tuned from
``--init-from``. The resume policy lives here: only ``--max-iters`` may change, the data and the
tokenizer must be the checkpoint's, and a batch too large for memory is refused before anything is
written. A chat fine-tuning run (``--sft``) reads conversations instead of a text
(``sft_data.py``) and draws packed windows; everything else is the same run."""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import lmcore
from lmcore.chat_template import add_chat_tokens
from lmcore.checkpoint import CheckpointError
from lmcore.cli import UsageError, printed_warnings
from lmcore.config import PRESETS, SPEEDRUN_TARGET, RunConfig
from lmcore.corpus import Corpus, DataError
from lmcore.datasets import resolve_corpus
from lmcore.distributed import Group
from lmcore.hf_import import is_hf_dir, load_hf
from lmcore.run_state import CHECKPOINT_NAME, load_run, model_from_checkpoint, new_model
from lmcore.sampler import BatchSampler, WindowSampler
from lmcore.sft_data import ChatData, ChatWindows, chat_windows, check_chat_flags, load_chats
from lmcore.token_cache import TokenizedCorpus, build_tokenizer, tokenize
from lmcore.tokenizer import Tokenizer, check_bpe_vocab_size
from lmcore.vocab_extend import extend_vocab

# Flags that may differ from the checkpoint when resuming; everything else is the recipe.
RESUMABLE_CHANGES = {"max_iters"}
DEFAULT_BPE_VOCAB = 512


@dataclass
class Run:
    cfg: RunConfig
    out_dir: Path
    ckpt_path: Path
    corpus: Corpus | ChatData  # (--sft: the conversations)
    corpus_where: dict[str, Any]  # how to find the corpus again: its dataset name or absolute path
    tokenizer: Tokenizer
    tokens: TokenizedCorpus | ChatWindows  # (--sft: the packed windows)
    model: lmcore.Model
    sampler: BatchSampler
    iter_num: int = 0  # steps done
    best_val: float | None = None
    # The metrics record of the last step when a stop signal cut its evaluation short: a resumed
    # run evaluates and logs it first, so its log equals an uninterrupted run's.
    pending_record: dict[str, Any] | None = None
    # Wall seconds of the run before this process (a resumed run's, from its checkpoint), and when
    # this process's loop started (time.monotonic(); None: not yet).
    elapsed_before: float = 0.0
    started_at: float | None = None
    # --target-loss: a flag of this invocation, not the recipe (not stored; --resume may change it).
    target_loss: float | None = None
    # The processes training this model (one, or MPI's ranks) and how often they compare weights.
    group: Group = field(default_factory=Group)
    weight_check_interval: int = 100

    def fingerprint(self) -> dict[str, Any]:
        """What every rank of a data-parallel run must have alike before the first step."""
        return {
            "lmcore version": lmcore.__version__,
            "configuration": self.cfg.to_dict(),
            "step": self.iter_num,
            "data": self.corpus.sha256,
            "tokenizer": self.tokenizer.fingerprint(),
            "batch sampler": self.sampler.state_dict(),
            "weights checksum": self.model.param_checksum(),
            "target loss": self.target_loss,
            "weight check interval": self.weight_check_interval,
        }

    def elapsed_s(self) -> float:
        """Wall seconds of the run so far: every process's loop, evaluations and checkpoints included."""
        now = 0.0 if self.started_at is None else time.monotonic() - self.started_at
        return self.elapsed_before + now

    def checkpoint_meta(self) -> dict[str, Any]:
        """The metadata of a checkpoint of this run now (the tensors come from the model)."""
        c = self.corpus
        return {
            "config": self.cfg.to_dict(),
            "iter_num": self.iter_num,
            "vocab_size": self.tokenizer.vocab_size,
            "sampler": self.sampler.state_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "dataset": {"name": c.name, "sha256": c.sha256, "source": c.source, **self.corpus_where},
            "best_val_loss": self.best_val,
            "elapsed_s": self.elapsed_s(),
            "lmcore_version": lmcore.__version__,
            **({"pending_record": self.pending_record} if self.pending_record else {}),
        }


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields the flags set (None: not given)."""
    return {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name) is not None}


def fresh_config(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig.from_dict({**PRESETS[args.preset], **explicit_settings(args)})
    if cfg.lr_decay_iters is None:
        if cfg.max_iters < 1:  # (validate() would blame --lr-decay-iters, a flag not passed)
            raise UsageError(f"--max-iters {cfg.max_iters} plans no steps: pass --lr-decay-iters N as well, "
                             "the length of the schedule that --resume will continue")
        cfg.lr_decay_iters = cfg.max_iters  # fixed now, so a longer resumed run keeps this schedule
    return cfg


def load_corpus(args: argparse.Namespace, stored: dict[str, Any] | None,
                sft: bool = False) -> tuple[Corpus | ChatData, dict[str, Any]]:
    """The corpus named by the flags, or by the checkpoint (a resumed run must see the same text), and
    how to find it again: its dataset name or absolute path, for the checkpoint. ``sft``: the
    conversations instead."""
    dataset, path = args.dataset, args.data
    if stored is not None and dataset is None and path is None:
        dataset, path = stored.get("dataset"), stored.get("path")
    check_chat_flags(sft, dataset, path)
    with printed_warnings():
        corpus = load_chats(dataset, path, getattr(args, "strict", False)) if sft else resolve_corpus(dataset, path)
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


def init_weights(path: Path, cfg: RunConfig) -> tuple[dict[str, Any], Tokenizer, RunConfig]:
    """--init-from's parameters, tokenizer and model configuration: an lmcore checkpoint, or a
    Hugging Face GPT-2 directory (``hf_import.py``)."""
    if is_hf_dir(path):
        return load_hf(path, cfg)
    base, tokenizer, base_cfg, _ = model_from_checkpoint(path, weights_only=True)
    return {name: base.get_param(name) for name in base.param_names()}, tokenizer, base_cfg


def prepare(args: argparse.Namespace) -> Run:
    """Build everything the loop needs: a fresh run, one resumed from --out-dir's checkpoint, or a
    new one fine-tuned from --init-from. Nothing is written to --out-dir here."""
    out_dir = Path(args.out_dir or Path("out") / args.preset)
    ckpt_path = out_dir / CHECKPOINT_NAME
    iter_num, sampler_state, best_val, pending, elapsed = 0, None, None, None, 0.0
    target = getattr(args, "target_loss", None)
    if target is None and args.preset == "speedrun":
        target = SPEEDRUN_TARGET
    if target is not None and not (math.isfinite(target) and target > 0):
        raise UsageError(f"--target-loss must be a finite number > 0, got {target}")
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
        corpus, where = load_corpus(args, meta["dataset"], cfg.sft)
        model, tokenizer, _, _ = model_from_checkpoint(ckpt_path)
        check_same_tokenizer(args, tokenizer, f"the checkpoint {ckpt_path}")
        iter_num, sampler_state, best_val = int(meta["iter_num"]), meta["sampler"], meta.get("best_val_loss")
        pending, elapsed = meta.get("pending_record"), float(meta.get("elapsed_s", 0.0))
    else:
        if ckpt_path.exists():
            raise UsageError(f"{out_dir} already holds a checkpoint; pass --resume to continue it, or choose another --out-dir")
        cfg = fresh_config(args)
        cfg.validate()
        corpus, where = load_corpus(args, None, cfg.sft)
        if args.init_from:
            base_params, tokenizer, base_cfg = init_weights(Path(args.init_from), cfg)
            base_vocab = tokenizer.vocab_size  # (the rows of its embedding, before any chat markers)
            check_same_tokenizer(args, tokenizer, f"--init-from: the checkpoint {args.init_from}")
            shape = ("d_model", "n_head", "n_layer", "block_size")
            if any(getattr(base_cfg, k) != getattr(cfg, k) for k in shape):
                raise UsageError(f"--init-from: the checkpoint's model is {[getattr(base_cfg, k) for k in shape]} "
                                 f"({', '.join(shape)}), this run asks for {[getattr(cfg, k) for k in shape]}")
            for k in ("rope", "rmsnorm", "qk_norm", "swiglu", "no_bias", "untied_head"):  # the options that change the parameters
                if getattr(base_cfg, k) != getattr(cfg, k):
                    flag = "--" + k.replace("_", "-")
                    raise UsageError(f"--init-from: the checkpoint's model has {flag} {'on' if getattr(base_cfg, k) else 'off'}, "
                                     f"this run asks for it {'on' if getattr(cfg, k) else 'off'} (it changes the parameters)")
            if cfg.sft:  # the chat markers; a checkpoint without them grows rows for them
                tokenizer = add_chat_tokens(tokenizer)
            model = new_model(cfg, tokenizer.vocab_size)
            params = extend_vocab(base_params, base_vocab, tokenizer.vocab_size)
            for name in model.param_names():
                model.set_param(name, params[name])
        else:
            kind = args.tokenizer or "char"
            vocab_size = (args.vocab_size or DEFAULT_BPE_VOCAB) if kind == "bpe" else None
            with printed_warnings():
                text = corpus.text_corpus() if isinstance(corpus, ChatData) else corpus
                tokenizer = build_tokenizer(text, kind, vocab_size)
            if cfg.sft:
                tokenizer = add_chat_tokens(tokenizer)
            model = new_model(cfg, tokenizer.vocab_size)
    tokens: TokenizedCorpus | ChatWindows
    if isinstance(corpus, ChatData):
        with printed_warnings():
            if corpus.skipped:
                warnings.warn(corpus.skipped, stacklevel=1)
            tokens = chat_windows(corpus, tokenizer, cfg.block_size, getattr(args, "strict", False))
    else:
        with printed_warnings():
            tokens = tokenize(corpus, tokenizer)
        for split, data in (("training", tokens.train), ("validation", tokens.val)):
            if len(data) < cfg.block_size + 1:
                raise DataError(f"the {split} split has {len(data)} tokens, fewer than one block of {cfg.block_size} + 1")
    try:  # a batch too large for this machine is refused here, before anything is written
        model.reserve(cfg.batch_size, cfg.block_size)
    except (lmcore.LmcoreError, OverflowError) as e:
        raise UsageError(f"--batch-size {cfg.batch_size} with --block-size {cfg.block_size}: {e}") from None
    sampler = (WindowSampler(tokens.train_x, tokens.train_y, cfg.batch_size, seed=cfg.seed)
               if isinstance(tokens, ChatWindows) else BatchSampler(tokens.train, cfg.block_size, cfg.batch_size, seed=cfg.seed))
    if sampler_state is not None:
        try:
            sampler.load_state_dict(sampler_state)
        except (DataError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} has an invalid batch sampler state: {e}") from None
    return Run(cfg=cfg, out_dir=out_dir, ckpt_path=ckpt_path, corpus=corpus, corpus_where=where,
               tokenizer=tokenizer, tokens=tokens, model=model, sampler=sampler, iter_num=iter_num,
               best_val=best_val, pending_record=pending, elapsed_before=elapsed, target_loss=target)
