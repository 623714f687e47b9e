"""Atomic file writes: a temporary file in the same directory, fsynced, renamed over the target,
and the directory fsynced, so a crash leaves the old file or the new one, never a torn one.
Checkpoints, the corpus download and the token cache all write through here."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _write_and_sync(f: BinaryIO, data: bytes) -> None:
    # Separate so tests can simulate a crash part-way through a write.
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; POSIX only (Windows cannot open dirs).
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}.tmp"


def remove_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of writes to ``path`` that never finished (the writer was killed);
    returns them. Only for a directory no other process is writing to."""
    path = Path(path)
    stale = sorted(path.parent.glob(_temp_name(path, "*").name))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write ``path`` through: synced and renamed over ``path`` when the block ends, deleted
    if it raises, so readers see the old file or the new one, whole."""
    path = Path(path)
    tmp = _temp_name(path, f"{os.getpid()}.{secrets.token_hex(4)}")
    # os.open (not mkstemp) so the file gets the usual umask-based permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    with atomic_writer(path) as f:
        _write_and_sync(f, data)
