"""What the command-line scripts share: the error a user can fix, warnings printed as one-line
``warning: ...`` messages, the thread count, and the signals that stop a training run cleanly."""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import lmcore


class UsageError(Exception):
    """A request that cannot be honoured; the message says what to do instead."""


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
        lmcore.set_num_threads(min(threads, 1 << 30))  # (more than any machine's cores: capped alike)


class Stop:
    """The first stop signal received (its number), or None."""

    signal: int | None = None


class Interrupted(Exception):
    """A stop signal arrived during work that is given up rather than finished (an evaluation)."""


@contextlib.contextmanager
def stop_signals() -> Iterator[Stop]:
    """While the block runs, the stop signals only note themselves in the yielded ``Stop`` (the
    first one counts; more, say during the checkpoint that follows, change nothing), so the loop
    can finish its step and save. The previous handlers come back afterwards."""
    stop = Stop()

    def note(signum: int, frame: Any) -> None:
        stop.signal = stop.signal or signum

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
