"""What the command-line scripts share: warnings printed as one-line ``warning: ...`` messages,
the thread count, and the signals that stop a training run cleanly."""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings
from collections.abc import Iterator

import lmcore

# Signals that stop training with a checkpoint, as Ctrl-C does: SIGTERM is how kill, systemd,
# Kubernetes and Slurm stop a job, SIGHUP a closed terminal, SIGUSR1 Slurm's usual early warning.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))


@contextlib.contextmanager
def printed_warnings() -> Iterator[None]:
    """Warnings raised in the block, printed as ``warning: ...`` lines (unless the block fails)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def use_threads(threads: int | None) -> None:
    """Apply ``--threads``: at least 1; more than the cores this process may use is capped to
    them, with a warning."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    with printed_warnings():
        lmcore.set_num_threads(threads)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
