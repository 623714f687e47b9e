"""Safe, atomic checkpoints for lmcore, stored as single safetensors files.

A training checkpoint is ONE safetensors file: tensors under grouped names
(``param/<name>``, ``adam_m/<name>``, ``adam_v/<name>``, ...) plus a JSON
document (step, config, tokenizer, sampler state, ...) stored as the string
``__metadata__["lmcore"]``.  Files are written to a temporary file in the same
directory, fsync'd, renamed over the target and the directory fsync'd, so a
crash leaves either the old checkpoint or the new one, never a torn file.
Nothing here uses pickle: loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

FORMAT_VERSION = 1
METADATA_KEY = "lmcore"
GROUP_SEP = "/"
_HEADER_LEN_BYTES = 8  # safetensors: little-endian u64 header size, then JSON header


class CheckpointError(Exception):
    """A checkpoint cannot be written or read; the message names the file and the problem."""


# --- atomic file writing (also used by lmcore.data for the corpus cache) ---


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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open (not mkstemp) so the file gets the usual umask-based permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_and_sync(f, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


# --- serialisation ---


def _serialise(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None, path: Path) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, np.ndarray):
            raise CheckpointError(f"tensor {name!r} is not a numpy array ({type(t).__name__}): {path}")
        arrays[name] = np.ascontiguousarray(t)
    try:
        return safetensors.numpy.save(arrays, metadata=metadata)
    except (SafetensorError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot serialise tensors ({e}): {path}") from None


def _read_validated(path: Path) -> tuple[bytes, dict[str, Any]]:
    """Read a safetensors file and check its header before trusting it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint ({e.strerror}): {path}") from None
    if not raw:
        raise CheckpointError(f"checkpoint is empty (0 bytes, truncated): {path}")
    if len(raw) < _HEADER_LEN_BYTES:
        raise CheckpointError(f"checkpoint is truncated ({len(raw)} bytes, no header): {path}")
    header_len = int.from_bytes(raw[:_HEADER_LEN_BYTES], "little")
    if _HEADER_LEN_BYTES + header_len > len(raw):
        raise CheckpointError(
            f"checkpoint header length {header_len} exceeds file size {len(raw)} (truncated or corrupt): {path}"
        )
    try:
        header = json.loads(raw[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint header is corrupt (not a JSON object): {path}")
    return raw, header


def _load_tensors(raw: bytes, path: Path) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load(raw)
    except (SafetensorError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint is corrupt ({e}): {path}") from None


# --- public API ---


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Atomically write tensors plus a JSON metadata document to one safetensors file."""
    path = Path(path)
    doc = {**metadata, "format_version": FORMAT_VERSION}
    try:
        meta_json = json.dumps(doc)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable ({e}): {path}") from None
    atomic_write_bytes(path, _serialise(tensors, {METADATA_KEY: meta_json}, path))


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; returns ``(tensors, metadata)``."""
    path = Path(path)
    raw, header = _read_validated(path)
    meta = header.get("__metadata__")
    stored = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if stored is None:
        raise CheckpointError(f"file has no '{METADATA_KEY}' metadata, so it is not an lmcore checkpoint: {path}")
    try:
        metadata = json.loads(stored)
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint '{METADATA_KEY}' metadata is not a JSON object: {path}")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version!r} is not supported (this lmcore reads {FORMAT_VERSION}): {path}"
        )
    return _load_tensors(raw, path), metadata


def save_weights(
    path: str | os.PathLike[str], params: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write plain ``model.safetensors`` weights (names unprefixed, any safetensors reader)."""
    path = Path(path)
    atomic_write_bytes(path, _serialise(params, metadata, path))


def load_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a plain weights file (or any safetensors file) with the same validation as checkpoints."""
    path = Path(path)
    raw, _ = _read_validated(path)
    return _load_tensors(raw, path)


def flatten_groups(groups: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{"param": {"wte": a}}`` -> ``{"param/wte": a}``: the layout stored in checkpoints."""
    out: dict[str, np.ndarray] = {}
    for group, tensors in groups.items():
        if GROUP_SEP in group:
            raise CheckpointError(f"checkpoint group name {group!r} must not contain {GROUP_SEP!r}")
        out.update({f"{group}{GROUP_SEP}{name}": t for name, t in tensors.items()})
    return out


def split_groups(tensors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of ``flatten_groups``: split names at the first ``/``."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, t in tensors.items():
        group, sep, name = key.partition(GROUP_SEP)
        if not sep:
            raise CheckpointError(f"checkpoint tensor {key!r} has no '<group>/' prefix")
        groups.setdefault(group, {})[name] = t
    return groups
