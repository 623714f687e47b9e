"""Safe, atomic checkpoints for lmcore, stored as single safetensors files.

A training checkpoint is ONE safetensors file: tensors under grouped names
(``param/<name>``, ``adam_m/<name>``, ``adam_v/<name>``, ...) plus a JSON
document (step, config, tokenizer, sampler state, ...) stored as the string
``__metadata__["lmcore"]``, written atomically (``lmcore.atomic``): a crash
leaves either the old checkpoint or the new one, never a torn file.
Nothing here uses pickle: loading a checkpoint cannot execute code. Every header entry (dtype,
shape, data offsets, unique names) is checked before any tensor is read, and any problem with a
file is a ``CheckpointError`` with a one-line message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from lmcore.atomic import atomic_write_bytes
from lmcore.errors import Error

FORMAT_VERSION = 1
METADATA_KEY = "lmcore"
GROUP_SEP = "/"
_HEADER_LEN_BYTES = 8  # safetensors: little-endian u64 header size, then JSON header


class CheckpointError(Error):
    """A checkpoint cannot be written or read; the message names the file and the problem."""


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


# The safetensors dtypes numpy can hold, and their sizes in bytes.
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "U32": 4, "I32": 4, "F32": 4,
                "U64": 8, "I64": 8, "F64": 8}
_MAX_BYTES = 2**64 - 1  # a tensor's byte size must fit the format's u64 offsets


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a checkpoint with two tensors of one name is corrupt.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def short_repr(value: Any, limit: int = 60) -> str:
    """A short one-line repr of a value read from a file (names can hold newlines, or be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_json(text: bytes | str, what: str, path: Path) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        key = short_repr(e.args[0])
        raise CheckpointError(f"checkpoint {what} is corrupt (key {key} appears twice): {path}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None


def _is_count(x: Any) -> bool:
    return type(x) is int and x >= 0  # not bool, not float


def _check_tensor_table(header: dict[str, Any], data_len: int, path: Path) -> None:
    """Check every tensor entry before any data is read: a known dtype, a shape of non-negative
    integers whose byte size fits in 64 bits and equals its span, offsets inside the file, and
    spans that tile the data exactly (no gaps, no overlaps, no bytes outside any tensor)."""
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"checkpoint header is corrupt (__metadata__ is not a map of strings): {path}")
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"checkpoint tensor {short_repr(name)}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where} has a corrupt header entry {short_repr(entry)}: {path}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not (isinstance(dtype, str) and dtype in _DTYPE_SIZES):
            raise CheckpointError(f"{where} has an unknown dtype {short_repr(dtype)}: {path}")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise CheckpointError(f"{where} has an invalid shape {short_repr(shape)}: {path}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{where} has invalid data offsets {short_repr(offsets)}: {path}")
        start, end = offsets
        nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
        if nbytes > _MAX_BYTES:
            raise CheckpointError(f"{where} has a shape whose size overflows ({short_repr(shape)}, {dtype}): {path}")
        if end > data_len:
            raise CheckpointError(f"{where}: data offsets [{start}, {end}) lie outside the file's "
                                  f"{data_len} data bytes (truncated or corrupt): {path}")
        if end - start != nbytes:
            raise CheckpointError(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes, its data offsets "
                                  f"span {end - start} (corrupt): {path}")
        spans.append((start, end, name))
    covered = 0
    for start, end, name in sorted(spans):
        if start != covered:
            problem = "overlaps another tensor" if start < covered else f"leaves a gap of {start - covered} bytes"
            raise CheckpointError(f"checkpoint tensor {short_repr(name)}: its data {problem} (corrupt): {path}")
        covered = end
    if covered != data_len:
        raise CheckpointError(f"checkpoint has {data_len - covered} bytes after its last tensor (corrupt): {path}")


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
    header = _parse_json(raw[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + header_len], "header", path)
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint header is corrupt (not a JSON object): {path}")
    _check_tensor_table(header, len(raw) - _HEADER_LEN_BYTES - header_len, path)
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
    metadata = _parse_json(stored, f"'{METADATA_KEY}' metadata", path)
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
