"""``python -m lmcore.train``: train a GPT on characters or byte-level BPE tokens, resumable bit for bit.

    python -m lmcore.train --small                 # 10,000 iterations on tinyshakespeare, characters
    python -m lmcore.train --small --resume        # continue out/small where it stopped
    python -m lmcore.train --small --data DIR --tokenizer bpe --vocab-size 2048 --out-dir out/bpe
    python -m lmcore.train --small --sft --init-from out/small/ckpt.safetensors --dataset plays-dialogue \
        --out-dir out/chat                     # chat fine-tuning: the loss on the replies only

Writes to ``--out-dir`` (default ``out/<preset>``): ``ckpt.safetensors`` (the whole training
state, every ``--ckpt-interval`` steps, at the end and on Ctrl-C or SIGTERM), ``model.safetensors``
(final weights), ``metrics.jsonl`` and ``loss.png``.

This module is the command line: flags to a run (``training/run.py``), the loop
(``training/loop.py``), the one-line errors, the sample at the end. What the run trains on is
``training/data.py``'s, evaluation ``training/evaluation.py``'s, checkpoint policy
``training/saving.py``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import lmcore
from lmcore import blas
from lmcore.cli import REPORTED_ERRORS, add_threads_flag, plural, use_threads
from lmcore.config import BLOCK_OPTIONS, FIELD_HELP, PRESETS, RECIPE, RunConfig, field_kind
from lmcore.data.datasets import DATASETS, TINYSHAKESPEARE
from lmcore.errors import UsageError
from lmcore.tokenizer import TOKENIZER_KINDS
from lmcore.training.distributed import Group, RankError, connect
from lmcore.training.loop import train
from lmcore.training.run import DEFAULT_BPE_VOCAB, Run, fresh_config, prepare

__all__ = ["fresh_config", "main", "parse_args", "parser", "prepare"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.train", description=__doc__.split("\n")[0])
    preset = p.add_mutually_exclusive_group()
    for name, values in PRESETS.items():
        shape = ", ".join(f"{k}={v}" for k, v in values.items() if (k, v) not in RECIPE.items())
        preset.add_argument(f"--{name}", dest="preset", action="store_const", const=name, help=shape)
    texts, chats = (" or ".join(name for name, what in DATASETS.items() if what == kind) for kind in ("text", "conversations"))
    p.add_argument("--dataset", default=None, help=f"named dataset: {texts} (default {TINYSHAKESPEARE}); with --sft: {chats}")
    p.add_argument("--data", default=None, help="a UTF-8 text file to train on, or a directory of .txt files; "
                                                "with --sft: a JSONL file of conversations")
    p.add_argument("--strict", action="store_true",
                   help="--sft: refuse a conversation file at its first bad line or unencodable conversation "
                        "(default: skip them, counted)")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZER_KINDS), default=None,
                   help="char (default) or bpe: a byte-level BPE trained on the training split")
    p.add_argument("--vocab-size", type=int, default=None,
                   help=f"tokens of a --tokenizer bpe vocabulary (default {DEFAULT_BPE_VOCAB})")
    p.add_argument("--out-dir", default=None, help="output directory (default out/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    p.add_argument("--init-from", default=None,
                   help="fine-tune: start a new run from the weights of this checkpoint, or of a Hugging Face "
                        "GPT-2 directory (config.json, model.safetensors, tokenizer.json)")
    add_threads_flag(p)
    p.add_argument("--sample-tokens", type=int, default=300,
                   help="length of the sample printed at the end (default %(default)s; 0: none)")
    p.add_argument("--target-loss", type=float, default=None, metavar="F",
                   help="stop at the first evaluation whose validation loss is <= F (a checkpoint and the final "
                        "weights are written as at the end); not part of the recipe, so --resume may change it")
    p.add_argument("--weight-check-interval", type=int, default=100, metavar="N",
                   help="under MPI, compare the ranks' weights (an all-gathered checksum) every N steps "
                        "(default %(default)s; 0: never); not part of the recipe")
    for f in fields(RunConfig):
        flag, kind = f"--{f.name.replace('_', '-')}", field_kind(f.name)
        if kind is bool and f.name.startswith("no_"):  # --no-bias / --bias (argparse would make --no-no-bias)
            p.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=FIELD_HELP[f.name])
            p.add_argument(f"--{f.name[3:].replace('_', '-')}", dest=f.name, action="store_const", const=False,
                           help=f"undo {flag} (the default)")
        elif kind is bool:  # --eval-full / --no-eval-full; None: not given
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=FIELD_HELP[f.name])
        else:  # (a str field's values are checked by RunConfig.validate: a one-line error)
            p.add_argument(flag, dest=f.name, type=kind, default=None,
                           metavar={float: "F", int: "N", str: "NAME"}[kind], help=FIELD_HELP[f.name])
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.preset = args.preset or "small"
    return args


def print_sample(run: Run, n_tokens: int) -> None:
    if n_tokens > 0 and (sample := run.data.sample(run.model, run.tokenizer, n_tokens, run.cfg.seed)) is not None:
        print("--- sample ---" + sample)


def start(args: argparse.Namespace, group: Group) -> Run:
    """The run of this process. Under MPI every rank prepares its own and they compare them before
    any step: a rank that failed (its data unreadable, say) or differs (lmcore's version, a flag, the
    data) stops them all, named, with one message from rank 0."""
    error, run = None, None
    try:
        use_threads(args.threads)
        if args.sample_tokens < 0:
            raise UsageError(f"--sample-tokens must not be negative, got {args.sample_tokens}")
        if args.weight_check_interval < 0:
            raise UsageError(f"--weight-check-interval must not be negative, got {args.weight_check_interval}")
        run = prepare(args)
        run.group, run.weight_check_interval = group, args.weight_check_interval
        group.check_config(run.cfg)
    except REPORTED_ERRORS as e:
        if group.size == 1:  # no other rank waits for this one
            raise
        error = str(e)
    group.startup(error, run.fingerprint() if run is not None and error is None else {})
    assert run is not None
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    group: Group = Group()
    try:
        group = connect()
        if not group.is_root:  # rank 0 alone prints; the others' errors go to the saved stderr
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
        run = start(args, group)
        c, cfg, tok = run.source, run.cfg, run.tokenizer
        blas.report()
        print(f"data: {c.name} ({c.n_chars:,} chars, sha256 {c.sha256[:12]}...) from {c.source}")
        print(run.data.describe(tok))
        print(f"model: {run.model.num_params:,} parameters, d_model {cfg.d_model}, {plural(cfg.n_head, 'head')}, "
              f"{plural(cfg.n_layer, 'layer')}, block {cfg.block_size}, batch {cfg.batch_size}, vocab {tok.vocab_size}"
              + "".join(f", {n.replace('_', '-')}" + (f" {getattr(cfg, n)}" if n == "logit_softcap" else "")
                        for n in BLOCK_OPTIONS if getattr(cfg, n)))
        print(f"run: steps {run.iter_num} -> {cfg.max_iters}, output in {run.out_dir}")
        if group.size > 1:
            print(f"data parallel: {group.size} MPI ranks of {cfg.batch_size // group.size} rows each, "
                  f"{lmcore.num_threads()} threads per rank; rank 0 writes")
        code = train(run)
        if code == 0 and group.is_root:
            print_sample(run, args.sample_tokens)
        return code
    except REPORTED_ERRORS as e:
        if group.size == 1:
            print(f"error: {e}", file=sys.stderr)
        elif group.is_root or not isinstance(e, RankError):  # (a RankError is every rank's: rank 0 tells it)
            print(f"error: rank {group.rank}: {e}" if not isinstance(e, RankError) else f"error: {e}",
                  file=group.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # outside the training loop (which stops at a checkpoint on its own)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
