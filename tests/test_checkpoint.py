"""Tests for lmcore.checkpoint.file: bit-exact round trips, corruption detection, atomicity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import safetensors.numpy

from cli_helpers import join_safetensors, split_safetensors
from lmcore import atomic
from lmcore.checkpoint.file import (
    FORMAT_VERSION,
    CheckpointError,
    flatten_groups,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
    split_groups,
)

SPECIAL = [0.0, -0.0, 1.0, -1.5, np.inf, -np.inf, np.nan, 1e-45, 3.4e38]


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((4, 3)).astype(np.float32)
    w64 = rng.standard_normal((2, 5))
    params = {"wte": w32, "ln_f.weight": np.array(SPECIAL, dtype=np.float32), "head": w64}
    groups = {
        "param": params,
        "adam_m": {k: np.zeros_like(v) for k, v in params.items()},
        "adam_v": {k: np.full_like(v, 1e-8) for k, v in params.items()},
    }
    out = flatten_groups(groups)
    out["param/nan_payload"] = np.array([0x7FF8DEADBEEF0001], dtype=np.uint64).view(np.float64)
    out["step_counts"] = np.arange(6, dtype=np.int64).reshape(2, 3)
    return out


META = {"step": 1200, "config": {"n_layer": 2, "lr": 3e-4}, "tokenizer": {"chars": "ab\n"}}


def _assert_bit_exact(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, _tensors(), META)
    return path


def test_round_trip_bit_exact(saved: Path) -> None:
    tensors, meta = load_checkpoint(saved)
    _assert_bit_exact(tensors, _tensors())
    assert meta == {**META, "format_version": FORMAT_VERSION}
    assert tensors["param/wte"].flags.writeable


def test_file_is_plain_safetensors_with_json_metadata(saved: Path) -> None:
    with safetensors.safe_open(str(saved), framework="numpy") as f:
        stored = f.metadata()
    assert set(stored) == {"lmcore"}
    assert json.loads(stored["lmcore"])["step"] == 1200


def test_non_contiguous_input_is_saved_correctly(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T
    save_checkpoint(tmp_path / "c", {"param/a": a}, {})
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "c")[0]["param/a"], a)


def test_groups_round_trip() -> None:
    groups = split_groups(flatten_groups({"param": {"a.b": np.ones(2)}, "adam_m": {"a.b": np.zeros(2)}}))
    assert set(groups) == {"param", "adam_m"} and set(groups["param"]) == {"a.b"}
    with pytest.raises(CheckpointError):
        split_groups({"noprefix": np.ones(1)})
    with pytest.raises(CheckpointError):
        flatten_groups({"a/b": {}})


def test_save_weights_plain_names(tmp_path: Path) -> None:
    params = {"wte": np.ones((3, 2), np.float32), "blocks.0.attn.w": np.eye(2)}
    path = tmp_path / "model.safetensors"
    save_weights(path, params)
    _assert_bit_exact(safetensors.numpy.load_file(str(path)), params)
    _assert_bit_exact(load_weights(path), params)
    with pytest.raises(CheckpointError, match="not an lmcore checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "e")


@pytest.mark.parametrize("keep", [4, 8, 20, -1, -7])
def test_truncated_file(saved: Path, keep: int) -> None:
    raw = saved.read_bytes()
    saved.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


def test_flipped_header_bytes(saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    for i in range(8, 14):
        raw[i] ^= 0xFF
    saved.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(saved)


def test_flipped_byte_in_tensor_offsets(saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    pos = raw.index(b'"data_offsets":[', 8, 8 + header_len) + len(b'"data_offsets":[')
    raw[pos] = ord("9")  # still valid JSON, but offsets no longer tile the data
    saved.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(saved)


def test_header_length_larger_than_file(saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    raw[:8] = (len(raw) * 2).to_bytes(8, "little")
    saved.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="exceeds file size"):
        load_checkpoint(saved)


def test_wrong_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    meta = json.dumps({"format_version": FORMAT_VERSION + 1})
    safetensors.numpy.save_file({"param/a": np.ones(1)}, str(path), metadata={"lmcore": meta})
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path)


def test_metadata_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    safetensors.numpy.save_file({"param/a": np.ones(1)}, str(path), metadata={"lmcore": "{not json"})
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(path)


def test_unserialisable_input_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "c", {}, {"x": object()})
    with pytest.raises(CheckpointError, match="numpy array"):
        save_checkpoint(tmp_path / "c", {"param/a": [1.0, 2.0]}, {})  # type: ignore[dict-item]
    assert not (tmp_path / "c").exists()


def test_crash_mid_write_keeps_previous_checkpoint(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = saved.read_bytes()

    def crash(f: BinaryIO, data: bytes) -> None:
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "_write_and_sync", crash)
    newer = {k: v + 1 if v.dtype.kind == "f" else v for k, v in _tensors().items()}
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(saved, newer, {**META, "step": 9999})

    assert saved.read_bytes() == before
    tensors, meta = load_checkpoint(saved)
    _assert_bit_exact(tensors, _tensors())
    assert meta["step"] == 1200
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # temp file cleaned up


def test_overwrite_replaces_atomically(saved: Path) -> None:
    save_checkpoint(saved, {"param/a": np.ones(2, np.float32)}, {"step": 2})
    tensors, meta = load_checkpoint(saved)
    assert list(tensors) == ["param/a"] and meta["step"] == 2
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


# --- every header entry is checked before any data is read; each problem is a one-line error ---


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _set(field: str, value: object):
    def edit(header: dict) -> str:
        header[_first_tensor(header)][field] = value
        return json.dumps(header)
    return edit


def _drop_entry(header: dict) -> str:
    del header[_first_tensor(header)]
    return json.dumps(header)


def _duplicate_entry(header: dict) -> str:
    name = _first_tensor(header)
    text = json.dumps(header)
    return text.replace("{", "{" + json.dumps(name) + ": " + json.dumps(header[name]) + ", ", 1)


def _overlap(header: dict) -> str:
    names = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
    (a0, a1), a = names[0]
    (b0, b1), b = names[1]
    # Two equal-sized neighbours: point the second at the first one's bytes.
    size = b1 - b0
    header[b]["data_offsets"] = [a0, a0 + size]
    header[a]["data_offsets"] = [a0, a1]
    return json.dumps(header)


HEADER_EDITS = [
    ("shape-overflows-u64", _set("shape", [2**32, 2**32, 2**32]), r"size overflows"),
    ("shape-product-too-big", _set("shape", [2**20, 2**20]), r"needs \d+ bytes, its data offsets span"),
    ("shape-negative", _set("shape", [-1, 3]), r"invalid shape"),
    ("shape-not-ints", _set("shape", [4.0, "3"]), r"invalid shape"),
    ("offsets-outside-file", _set("data_offsets", [0, 10**9]), r"outside the file"),
    ("offsets-reversed", _set("data_offsets", [48, 0]), r"invalid data offsets"),
    ("offsets-negative", _set("data_offsets", [-8, 40]), r"invalid data offsets"),
    ("dtype-unknown", _set("dtype", "F99"), r"unknown dtype 'F99'"),
    ("dtype-not-a-string", _set("dtype", ["F32"]), r"unknown dtype"),
    ("dtype-wrong-size", _set("dtype", "F16"), r"needs \d+ bytes"),
    ("entry-not-an-object", _set("shape", None), r"invalid shape"),
    ("duplicate-name", _duplicate_entry, r"appears twice"),
    ("missing-name", _drop_entry, r"its data leaves a gap of \d+ bytes"),
    ("overlapping-tensors", _overlap, r"its data overlaps another tensor"),
    ("metadata-not-strings", lambda h: json.dumps({**h, "__metadata__": {"lmcore": 7}}), r"__metadata__"),
    ("deeply-nested-json", lambda h: "[" * 100_000 + "]" * 100_000, r"not a JSON object"),
    ("huge-integer", lambda h: '{"a": ' + "9" * 5000 + "}", r"not a JSON object"),
    ("not-an-object", lambda h: json.dumps([h]), r"not a JSON object"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in HEADER_EDITS], ids=[c[0] for c in HEADER_EDITS])
def test_bad_header_entry_is_a_clear_error(saved: Path, edit, message: str) -> None:
    header, data = split_safetensors(saved.read_bytes())
    saved.write_bytes(join_safetensors(edit(header), data))
    for load in (load_checkpoint, load_weights):
        with pytest.raises(CheckpointError, match=message) as e:
            load(saved)
        assert "\n" not in str(e.value) and str(saved) in str(e.value)


def test_truncated_data_names_the_tensor_outside_the_file(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=r"outside the file's \d+ data bytes \(truncated"):
        load_checkpoint(saved)


def test_trailing_bytes_are_refused(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes() + b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes after its last tensor"):
        load_checkpoint(saved)


def test_names_with_newlines_stay_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    header = {"a\nb" * 100: {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}
    path.write_bytes(join_safetensors(header, b"\0" * 4))
    with pytest.raises(CheckpointError, match="unknown dtype") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.safetensors"
    stale = [tmp_path / ".ckpt.safetensors.123.abcd.tmp", tmp_path / ".ckpt.safetensors.9.ff.tmp"]
    others = [tmp_path / ".model.safetensors.1.a.tmp", tmp_path / "ckpt.safetensors.tmp", tmp_path / "notes.txt"]
    for p in stale + others:
        p.write_bytes(b"x")
    assert atomic.remove_temp_files(target) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(others)
