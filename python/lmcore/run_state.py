"""The whole state of a training run, to and from one checkpoint file.

Tensors: every parameter and AdamW's m and v (``param/``, ``adam_m/``, ``adam_v/`` groups).
Metadata: the recipe (`RunConfig`), iteration, AdamW step, the dropout generator's state, the
batch sampler's state, the tokenizer and the dataset's identity, and a sha256 of all of it (a
flipped bit in a weight is refused, not trained on). Restoring all of it makes a resumed run the
same run as one never stopped, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lmcore import Model
from lmcore.checkpoint import CheckpointError, flatten_groups, load_checkpoint, save_checkpoint, split_groups
from lmcore.config import RunConfig
from lmcore.tokenizer import CharTokenizer

CHECKPOINT_NAME = "ckpt.safetensors"
WEIGHTS_NAME = "model.safetensors"
GROUPS = ("param", "adam_m", "adam_v")
DIGEST_KEY = "state_sha256"


def new_model(cfg: RunConfig, vocab_size: int) -> Model:
    return Model(
        vocab_size=vocab_size, d_model=cfg.d_model, n_head=cfg.n_head, n_layer=cfg.n_layer,
        block_size=cfg.block_size, dropout=cfg.dropout, seed=cfg.seed, dtype="float32",
        beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
    )


def model_tensors(model: Model) -> dict[str, dict[str, np.ndarray]]:
    names = model.param_names()
    moments = {n: model.get_adam_state(n) for n in names}
    return {
        "param": {n: model.get_param(n) for n in names},
        "adam_m": {n: moments[n][0] for n in names},
        "adam_v": {n: moments[n][1] for n in names},
    }


def restore_tensors(model: Model, groups: dict[str, dict[str, np.ndarray]], path: Path, weights_only: bool = False) -> None:
    """Load tensors into `model`, checking that names, shapes and dtypes match exactly."""
    wanted = ("param",) if weights_only else GROUPS
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
            if not weights_only:
                model.set_adam_state(name, groups["adam_m"][name], groups["adam_v"][name])
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
    """Write the full training state (atomically: a crash leaves the previous file intact)."""
    tensors = flatten_groups(model_tensors(model))
    state = {**meta, "adam_step": model.step, "rng_state": str(model.rng_state)}
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
    if state_digest(tensors, meta) != meta[DIGEST_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the sha256 stored with them")
    return split_groups(tensors), meta


def model_from_checkpoint(path: Path, weights_only: bool = False) -> tuple[Model, CharTokenizer, RunConfig, dict[str, Any]]:
    """Rebuild the model (and, unless weights_only, its optimizer state) from a checkpoint."""
    groups, meta = load_run(path)
    try:
        cfg = RunConfig.from_dict(meta["config"])
        cfg.validate()
        tokenizer = CharTokenizer.from_dict(meta["tokenizer"])
        model = new_model(cfg, int(meta["vocab_size"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid configuration: {e}") from None
    if tokenizer.vocab_size != model.config["vocab_size"]:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} symbols, model {model.config['vocab_size']}")
    restore_tensors(model, groups, path, weights_only)
    if not weights_only:
        try:
            model.step = int(meta["adam_step"])
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
