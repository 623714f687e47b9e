"""The signals that stop a training run cleanly: while the loop runs they only note themselves, so
it can finish its step and save a checkpoint."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

# Signals that stop training with a checkpoint, as Ctrl-C does: SIGTERM is how kill, systemd,
# Kubernetes and Slurm stop a job, SIGHUP a closed terminal, SIGUSR1 Slurm's usual early warning.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))


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
