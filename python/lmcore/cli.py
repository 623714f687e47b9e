"""What the command lines share: the errors every command reports as one ``error: ...`` line, the
flags that name a checkpoint, ``--threads`` and the sampling flags (one declaration for
``generate`` and ``chat``), and warnings printed as ``warning: ...`` lines."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import lmcore
from lmcore.errors import Error

# What a command reports as a one-line ``error: ...`` (anything else is a bug, and gets a traceback).
REPORTED_ERRORS = (Error, ValueError, lmcore.LmcoreError, OSError, MemoryError, OverflowError)


def report(error: BaseException) -> int:
    """Print ``error`` as the command's one line; the exit status of a failed command."""
    print(f"error: {error}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def printed_warnings() -> Iterator[None]:
    """Warnings raised in the block, printed as ``warning: ...`` lines (unless the block fails)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="engine threads (default: the cores this process may use; more are capped to them)")


def use_threads(threads: int | None) -> None:
    """Apply ``--threads``: at least 1; more than the cores this process may use is capped to
    them, with a warning."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    with printed_warnings():
        lmcore.set_num_threads(min(threads, 1 << 30))  # (more than any machine's cores: capped alike)


def add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    """``--out-dir`` or ``--checkpoint``: the model a command loads (``checkpoint.state.find_checkpoint``)."""
    p.add_argument("--out-dir", help="a training output directory (uses its checkpoint)")
    p.add_argument("--checkpoint", help="a checkpoint file (instead of --out-dir)")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """How each token is drawn: the flags of every command that writes text."""
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; 0 means greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens only (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample among the most likely tokens whose probabilities sum to P, in (0, 1] (default: all)")


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags as ``generate``'s and ``ChatSession``'s keywords."""
    top_k = args.top_k if args.top_k is None or args.top_k <= 1 << 31 else 1 << 31  # (more than any vocabulary: all)
    return {"temperature": args.temperature, "top_k": top_k, "top_p": args.top_p}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
