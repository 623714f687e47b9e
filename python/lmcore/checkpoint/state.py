"""The whole state of a training run, to and from one checkpoint file.

Tensors: every parameter (``param/``) and each of the optimizer's state buffers, a group per buffer
under the optimizer's own names (AdamW: ``adam_m/``, ``adam_v/``; Muon: ``muon_momentum/`` besides).
Metadata: the recipe (`RunConfig`), the optimizer's name, iteration, optimizer step, the dropout generator's state, the
batch sampler's state, the tokenizer and the dataset's identity, the run's wall seconds so far (``elapsed_s``), and a
sha256 of all of it (a flipped bit in a weight is refused, not trained on). Restoring all of it makes a resumed run the
same run as one never stopped, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from lmcore import Model
from lmcore._core import optimizer_state_names, param_layout
from lmcore.checkpoint.file import (
    CheckpointError,
    flatten_groups,
    load_checkpoint,
    save_checkpoint,
    short_repr,
    split_groups,
)
from lmcore.config import LATER_FIELDS, RunConfig
from lmcore.tokenizer import Tokenizer, tokenizer_from_dict

CHECKPOINT_NAME = "ckpt.safetensors"
WEIGHTS_NAME = "model.safetensors"
DIGEST_KEY = "state_sha256"
# Checkpoints from before optimizers were named were all AdamW's.
DEFAULT_OPTIMIZER = "adamw"


def new_model(cfg: RunConfig, vocab_size: int) -> Model:
    return Model(**cfg.model_settings(vocab_size))


def groups_of(optimizer: str) -> tuple[str, ...]:
    """The tensor groups of a checkpoint: the parameters, then the optimizer's state buffers."""
    return ("param", *optimizer_state_names(optimizer))


def model_tensors(model: Model) -> dict[str, dict[str, np.ndarray]]:
    names = model.param_names()
    groups = {"param": {n: model.get_param(n) for n in names}}
    for buffer in model.optimizer_state_names():
        groups[buffer] = {n: model.get_optimizer_state(n, buffer) for n in names}
    return groups


def param_shapes(cfg: RunConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Name and shape of every parameter of the model `cfg` describes, from the engine's one
    declaration of the layout, known without building it: a checkpoint is checked before it is used."""
    return {name: tuple(shape) for name, shape in param_layout(**cfg.model_settings(vocab_size))}


def check_tensors(groups: dict[str, dict[str, np.ndarray]], cfg: RunConfig, vocab_size: int, path: Path,
                  optimizer: str, weights_only: bool = False) -> None:
    """Every tensor's group, name, dtype and shape must be what the configuration says, exactly."""
    expected_groups = groups_of(optimizer)
    unexpected = sorted(set(groups) - set(expected_groups))
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has unexpected tensor groups {unexpected[:3]}")
    if cfg.n_layer > len(groups.get("param", {})):  # (bounds the work below by the file's size)
        raise CheckpointError(f"checkpoint {path} does not fit its configuration: n_layer {cfg.n_layer}, "
                              f"but {len(groups.get('param', {}))} parameter tensors")
    expected = param_shapes(cfg, vocab_size)
    for group in ("param",) if weights_only else expected_groups:
        have = groups.get(group, {})
        missing, extra = sorted(expected.keys() - have.keys()), sorted(have.keys() - expected.keys())
        if missing or extra:
            raise CheckpointError(
                f"checkpoint {path} does not fit its configuration: group {group!r} "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
            )
        for name, shape in expected.items():
            t = have[name]
            if t.dtype != np.float32 or t.shape != shape:
                raise CheckpointError(f"checkpoint {path} does not fit its configuration: {group}/{name} is "
                                      f"{t.dtype} {list(t.shape)}, expected float32 {list(shape)}")


def restore_tensors(model: Model, groups: dict[str, dict[str, np.ndarray]], path: Path, weights_only: bool = False) -> None:
    """Load tensors into `model`, checking that names, shapes and dtypes match exactly."""
    wanted = ("param",) if weights_only else groups_of(model.optimizer)
    names = set(model.param_names())
    for group in wanted:
        have = set(groups.get(group, {}))
        if have != names:
            missing, extra = sorted(names - have), sorted(have - names)
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: group {group!r} "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
            )
    try:
        for name in model.param_names():
            model.set_param(name, groups["param"][name])
        for buffer in wanted[1:]:
            for name in model.param_names():
                model.set_optimizer_state(name, buffer, groups[buffer][name])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None


def state_digest(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """sha256 of the metadata and of every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k not in (DIGEST_KEY, "format_version")},
                                  sort_keys=True).encode())
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"\n{name} {t.dtype.str} {t.shape}\n".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def save_run(path: Path, model: Model, meta: dict[str, Any]) -> None:
    """Write the full training state (atomically: a crash leaves the previous file intact).

    A state holding a NaN or an infinity (an update that overflowed) is refused, not written: it
    could not be resumed, and it must not replace the last good checkpoint."""
    tensors = flatten_groups(model_tensors(model))
    for name, t in tensors.items():
        if not np.isfinite(t).all():
            raise CheckpointError(f"not saving a non-finite training state ({name} holds {t[~np.isfinite(t)][0]})")
    state = {**meta, "optimizer": model.optimizer, "adam_step": model.step, "rng_state": str(model.rng_state)}
    save_checkpoint(path, tensors, {**state, DIGEST_KEY: state_digest(tensors, state)})


def load_run(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Read a checkpoint and check its metadata has every field a resume needs."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    tensors, meta = load_checkpoint(path)
    for key in ("config", "iter_num", "adam_step", "rng_state", "sampler", "tokenizer", "dataset", "vocab_size",
                DIGEST_KEY):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}: it is not a complete lmcore training state")
    try:
        digest = state_digest(tensors, meta)
    except (ValueError, TypeError, RecursionError):
        digest = None
    if digest != meta[DIGEST_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the sha256 stored with them")
    check_meta(meta, path)
    return split_groups(tensors), meta


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """The type and range of every field a resume reads (a sealed file can still come from a stranger)."""
    def refuse(key: str, wanted: str) -> NoReturn:
        raise CheckpointError(f"checkpoint {path} is invalid: {key} is {short_repr(meta.get(key))}, expected {wanted}")

    for key in ("iter_num", "adam_step", "vocab_size"):
        value = meta[key]
        if type(value) is not int or value < (1 if key == "vocab_size" else 0):
            refuse(key, "a positive integer" if key == "vocab_size" else "an integer >= 0")
    rng = meta["rng_state"]
    if not (isinstance(rng, str) and 0 < len(rng) <= 20 and rng.isascii() and rng.isdigit() and int(rng) < 2**64):
        refuse("rng_state", "a decimal 64-bit unsigned integer")
    for key in ("config", "sampler", "tokenizer", "dataset"):
        if not isinstance(meta[key], dict):
            refuse(key, "a JSON object")
    settings = {f.name for f in fields(RunConfig)}
    if not settings - LATER_FIELDS <= meta["config"].keys() <= settings:  # (an earlier lmcore's lacks the later)
        refuse("config", "every setting of a run, and only those")
    dataset = meta["dataset"]
    if not (isinstance(dataset.get("name"), str) and isinstance(dataset.get("sha256"), str)
            and all(isinstance(dataset.get(k), (str, type(None))) for k in ("dataset", "path"))):
        refuse("dataset", "a name, a sha256 and an optional dataset name or path")
    optimizer = meta.get("optimizer", DEFAULT_OPTIMIZER)
    if not isinstance(optimizer, str):
        refuse("optimizer", "an optimizer's name")
    try:
        optimizer_state_names(optimizer)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} was written by an optimizer this lmcore does not have: {e}") from None
    pending = meta.get("pending_record")
    if pending is not None and not (isinstance(pending, dict) and pending.get("step") == meta["iter_num"]
                                    and all(type(v) in (int, float) or v is None for v in pending.values())):
        refuse("pending_record", "the numbers of the checkpoint's own step")
    best = meta.get("best_val_loss")
    if best is not None and (type(best) not in (int, float) or not math.isfinite(best)):
        refuse("best_val_loss", "a finite number or null")
    elapsed = meta.get("elapsed_s", 0.0)  # (absent from an earlier lmcore's checkpoint)
    if type(elapsed) not in (int, float) or not (math.isfinite(elapsed) and elapsed >= 0):
        refuse("elapsed_s", "a finite number of seconds >= 0")


def model_from_checkpoint(path: Path, weights_only: bool = False) -> tuple[Model, Tokenizer, RunConfig, dict[str, Any]]:
    """Rebuild the model (and, unless weights_only, its optimizer state) from a checkpoint.

    Everything is checked before it is used: the configuration, the tokenizer against the
    vocabulary size, every tensor's name, dtype and shape against the configuration; only then is
    a model built (so a file cannot make it allocate more than the file itself holds)."""
    groups, meta = load_run(path)
    vocab_size = meta["vocab_size"]
    try:
        cfg = RunConfig.from_dict(meta["config"])
        cfg.validate()
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
    except (ValueError, TypeError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid configuration: {e}") from None
    if tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} symbols, model {vocab_size}")
    optimizer = meta.get("optimizer", DEFAULT_OPTIMIZER)
    if optimizer != cfg.optimizer:
        raise CheckpointError(f"checkpoint {path} holds {optimizer}'s state, but its recipe says --optimizer {cfg.optimizer}")
    check_tensors(groups, cfg, vocab_size, path, optimizer, weights_only)
    try:
        model = new_model(cfg, vocab_size)
    except (ValueError, TypeError, OverflowError) as e:  # LmcoreError is a ValueError
        raise CheckpointError(f"checkpoint {path} has an invalid configuration: {e}") from None
    restore_tensors(model, groups, path, weights_only)
    if not weights_only:
        try:
            model.step = meta["adam_step"]
            model.rng_state = int(meta["rng_state"])
        except (ValueError, TypeError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {path} has a corrupt optimizer step or RNG state: {e}") from None
    return model, tokenizer, cfg, meta


def find_checkpoint(out_dir: str | os.PathLike[str] | None, checkpoint: str | os.PathLike[str] | None) -> Path:
    """The checkpoint named directly, or the one in an output directory."""
    if checkpoint:
        return Path(checkpoint)
    if out_dir:
        return Path(out_dir) / CHECKPOINT_NAME
    raise CheckpointError("give --out-dir DIR or --checkpoint PATH")
