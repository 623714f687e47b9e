"""A training run: everything the loop needs, in one object with named fields, and how it is made
from the command line's flags: fresh, resumed from ``--out-dir``'s checkpoint, or fine-tuned from
``--init-from``. The resume policy lives here: only ``--max-iters`` may change, the data and the
tokenizer must be the checkpoint's, and a batch too large for memory is refused before anything is
written. A chat fine-tuning run (``--sft``) reads conversations instead of a text and draws
packed windows (``training/data.py``); everything else is the same run."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lmcore
from lmcore.checkpoint.file import CheckpointError
from lmcore.checkpoint.state import CHECKPOINT_NAME, load_run, model_from_checkpoint, new_model, param_shapes
from lmcore.cli import printed_warnings
from lmcore.config import BLOCK_OPTIONS, PRESETS, SPEEDRUN_TARGET, RunConfig
from lmcore.conversation.template import add_chat_tokens
from lmcore.data.batches import BatchSampler
from lmcore.data.corpus import DataError
from lmcore.data.datasets import DATASETS, PLAYS_DIALOGUE
from lmcore.data.tokens import build_tokenizer
from lmcore.errors import UsageError
from lmcore.interop.hf_import import is_hf_dir, load_hf
from lmcore.tokenizer import Tokenizer
from lmcore.tokenizer.bpe import check_bpe_vocab_size
from lmcore.training.data import Source, TrainingData, load_source, tokenizer_text, training_data
from lmcore.training.distributed import Group
from lmcore.training.vocab_extend import extend_vocab

# Flags that may differ from the checkpoint when resuming; everything else is the recipe.
RESUMABLE_CHANGES = {"max_iters"}
DEFAULT_BPE_VOCAB = 512
NEEDS_CHATS = f"--sft trains on conversations: pass --dataset {PLAYS_DIALOGUE} or --data FILE.jsonl"


@dataclass
class Run:
    cfg: RunConfig
    out_dir: Path
    ckpt_path: Path
    source: Source  # the text, or (--sft) the conversations
    source_where: dict[str, Any]  # how to find it again: its dataset name or absolute path
    tokenizer: Tokenizer
    data: TrainingData  # the tokens of the text, or (--sft) the packed windows
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
            "data": self.source.sha256,
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
        c = self.source
        return {
            "config": self.cfg.to_dict(),
            "iter_num": self.iter_num,
            "vocab_size": self.tokenizer.vocab_size,
            "sampler": self.sampler.state_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "dataset": {"name": c.name, "sha256": c.sha256, "source": c.source, **self.source_where},
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


def check_chat_flags(sft: bool, dataset: str | None, path: str | None) -> None:
    """``--sft`` needs conversations, and conversations need ``--sft``."""
    chats = DATASETS.get(dataset) == "conversations"
    if sft and path is None and not chats:
        raise UsageError(NEEDS_CHATS + (f" (--dataset {dataset} is plain text)" if dataset else ""))
    if not sft and path is None and chats:
        raise UsageError(f"--dataset {dataset} is conversations: train on it with --sft (and --init-from CKPT)")


def load_corpus(args: argparse.Namespace, stored: dict[str, Any] | None,
                sft: bool = False) -> tuple[Source, dict[str, Any]]:
    """The corpus named by the flags, or by the checkpoint (a resumed run must see the same text), and
    how to find it again: its dataset name or absolute path, for the checkpoint. ``sft``: the
    conversations instead."""
    dataset, path = args.dataset, args.data
    if stored is not None and dataset is None and path is None:
        dataset, path = stored.get("dataset"), stored.get("path")
    check_chat_flags(sft, dataset, path)
    with printed_warnings():
        corpus = load_source(sft, dataset, path, getattr(args, "strict", False))
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
    Hugging Face GPT-2 directory (``interop/hf_import.py``)."""
    if is_hf_dir(path):
        try:
            return load_hf(path, cfg)
        except CheckpointError as e:
            raise UsageError(f"--init-from: {e}") from None
    base, tokenizer, base_cfg, _ = model_from_checkpoint(path, weights_only=True)
    return {name: base.get_param(name) for name in base.param_names()}, tokenizer, base_cfg


@dataclass
class Start:
    """Where a run starts: its recipe, data, tokenizer and model, and (resumed) its state so far."""

    cfg: RunConfig
    source: Source
    where: dict[str, Any]
    tokenizer: Tokenizer
    model: lmcore.Model
    meta: dict[str, Any] = field(default_factory=dict)  # a resumed run's checkpoint metadata


def resumed(args: argparse.Namespace, ckpt_path: Path) -> Start:
    """The run in --out-dir, from its checkpoint: the same recipe (only --max-iters may change), data
    and tokenizer."""
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
    source, where = load_corpus(args, meta["dataset"], cfg.sft)
    model, tokenizer, _, _ = model_from_checkpoint(ckpt_path)
    check_same_tokenizer(args, tokenizer, f"the checkpoint {ckpt_path}")
    return Start(cfg, source, where, tokenizer, model, meta)


def fine_tuned(args: argparse.Namespace, cfg: RunConfig) -> tuple[Tokenizer, lmcore.Model]:
    """--init-from's tokenizer (with the chat markers for --sft) and a new model holding its weights;
    the shape and the block options that change the parameters must be the checkpoint's."""
    base_params, tokenizer, base_cfg = init_weights(Path(args.init_from), cfg)
    base_vocab = tokenizer.vocab_size  # (the rows of its embedding, before any chat markers)
    check_same_tokenizer(args, tokenizer, f"--init-from: the checkpoint {args.init_from}")
    shape = ("d_model", "n_head", "n_layer", "block_size")
    if any(getattr(base_cfg, k) != getattr(cfg, k) for k in shape):
        raise UsageError(f"--init-from: the checkpoint's model is {[getattr(base_cfg, k) for k in shape]} "
                         f"({', '.join(shape)}), this run asks for {[getattr(cfg, k) for k in shape]}")
    for k in BLOCK_OPTIONS:  # those that change the parameters (the engine's layout says which)
        as_base = replace(cfg, **{k: getattr(base_cfg, k)})
        if getattr(base_cfg, k) != getattr(cfg, k) and param_shapes(as_base, 1) != param_shapes(cfg, 1):
            flag = "--" + k.replace("_", "-")
            raise UsageError(f"--init-from: the checkpoint's model has {flag} {'on' if getattr(base_cfg, k) else 'off'}, "
                             f"this run asks for it {'on' if getattr(cfg, k) else 'off'} (it changes the parameters)")
    if cfg.sft:  # the chat markers; a checkpoint without them grows rows for them
        tokenizer = add_chat_tokens(tokenizer)
    model = new_model(cfg, tokenizer.vocab_size)
    params = extend_vocab(base_params, base_vocab, tokenizer.vocab_size)
    for name in model.param_names():
        model.set_param(name, params[name])
    return tokenizer, model


def fresh(args: argparse.Namespace, out_dir: Path, ckpt_path: Path) -> Start:
    """A new run: the preset and the flags, a new tokenizer and model or --init-from's."""
    if ckpt_path.exists():
        raise UsageError(f"{out_dir} already holds a checkpoint; pass --resume to continue it, or choose another --out-dir")
    cfg = fresh_config(args)
    cfg.validate()
    source, where = load_corpus(args, None, cfg.sft)
    if args.init_from:
        tokenizer, model = fine_tuned(args, cfg)
        return Start(cfg, source, where, tokenizer, model)
    kind = args.tokenizer or "char"
    vocab_size = (args.vocab_size or DEFAULT_BPE_VOCAB) if kind == "bpe" else None
    with printed_warnings():
        tokenizer = build_tokenizer(tokenizer_text(source), kind, vocab_size)
    if cfg.sft:
        tokenizer = add_chat_tokens(tokenizer)
    return Start(cfg, source, where, tokenizer, new_model(cfg, tokenizer.vocab_size))


def prepare(args: argparse.Namespace) -> Run:
    """Build everything the loop needs: a fresh run, one resumed from --out-dir's checkpoint, or a
    new one fine-tuned from --init-from. Nothing is written to --out-dir here."""
    out_dir = Path(args.out_dir or Path("out") / args.preset)
    ckpt_path = out_dir / CHECKPOINT_NAME
    target = getattr(args, "target_loss", None)
    if target is None and args.preset == "speedrun":
        target = SPEEDRUN_TARGET
    if target is not None and not (math.isfinite(target) and target > 0):
        raise UsageError(f"--target-loss must be a finite number > 0, got {target}")
    if args.resume and args.init_from:
        raise UsageError("--resume continues the run in --out-dir, --init-from starts a new one: pass one of them")
    check_tokenizer_flags(args)
    start = resumed(args, ckpt_path) if args.resume else fresh(args, out_dir, ckpt_path)
    cfg, model, meta = start.cfg, start.model, start.meta
    data = training_data(start.source, start.tokenizer, cfg.block_size, getattr(args, "strict", False))
    try:  # a batch too large for this machine is refused here, before anything is written
        model.reserve(cfg.batch_size, cfg.block_size)
    except (lmcore.LmcoreError, OverflowError) as e:
        raise UsageError(f"--batch-size {cfg.batch_size} with --block-size {cfg.block_size}: {e}") from None
    sampler = data.sampler(cfg)
    if meta:
        try:
            sampler.load_state_dict(meta["sampler"])
        except (DataError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} has an invalid batch sampler state: {e}") from None
    return Run(cfg=cfg, out_dir=out_dir, ckpt_path=ckpt_path, source=start.source, source_where=start.where,
               tokenizer=start.tokenizer, data=data, model=model, sampler=sampler, iter_num=int(meta.get("iter_num", 0)),
               best_val=meta.get("best_val_loss"), pending_record=meta.get("pending_record"),
               elapsed_before=float(meta.get("elapsed_s", 0.0)), target_loss=target)
