"""Run configuration: the presets, every field a flag can override, and the names of the learning-rate
schedules (``training/schedule.py`` computes them).

A `RunConfig` is the whole recipe of a training run. It is stored in the checkpoint, so a resumed
run trains with exactly the recipe it started with (only ``max_iters`` may grow).
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

from lmcore._core import LmcoreError, check_settings

# Where every preset's recipe departs from the engine's defaults (RunConfig's, PyTorch's AdamW: beta2
# 0.999, weight decay 0.01, no clipping, seed 0): nanoGPT's shakespeare_char recipe.
RECIPE: dict[str, Any] = dict(beta2=0.99, weight_decay=0.1, grad_clip=1.0, seed=1337)
# Model shape and batch per preset, on the recipe above.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(RECIPE, d_model=32, n_head=2, n_layer=1, block_size=32, batch_size=8, max_iters=1000),
    "small": dict(RECIPE, d_model=128, n_head=4, n_layer=2, block_size=128, batch_size=16, max_iters=10_000),
    "medium": dict(RECIPE, d_model=256, n_head=8, n_layer=4, block_size=128, batch_size=16, max_iters=10_000),
    # The fastest way measured here to validation loss 1.55 on tinyshakespeare (README, Speedrun): the
    # small shape with Llama's block (so it exports: rotary, RMSNorm, a gated SiLU MLP, an untied
    # head), Muon for the hidden matrices, AdamW for the rest, a short warmup-stable-decay schedule,
    # evaluations on the whole validation split; it stops at SPEEDRUN_TARGET unless --target-loss
    # says otherwise.
    "speedrun": dict(RECIPE, d_model=128, n_head=4, n_layer=2, block_size=128, batch_size=24, max_iters=1000,
                     rope=True, rmsnorm=True, swiglu=True, untied_head=True, zero_init=True,
                     optimizer="muon", muon_lr=0.03, lr=0.02, weight_decay=0.0,
                     warmup_iters=50, schedule="wsd", decay_frac=0.4, final_lr_ratio=0.1, eval_full=True,
                     eval_interval=500, eval_iters=10, ckpt_interval=1000),
}
# The lowest validation loss measured here in 30 minutes on 2 cores (README, Speedrun): the speedrun
# recipe on a model 8 times larger with a longer context, and dropout, which the larger model needs
# by its tenth pass over the data (without it: 1.5172 instead of 1.5038 in 2,400 steps). Its 1,800
# steps are the 2,250 of the ReLU^2 block scaled by the gated MLP's 1.25x step (to be re-measured).
PRESETS["long"] = {**PRESETS["speedrun"], **dict(d_model=256, n_layer=4, block_size=256, batch_size=16,
                                                 max_iters=1800, dropout=0.1, eval_interval=450,
                                                 ckpt_interval=450)}
# Validation loss at which `--speedrun` stops.
SPEEDRUN_TARGET = 1.55


# The model options a run may turn on (the engine's `Model` settings of the same names: a test checks
# that this is the engine's list). A checkpoint written before they existed lacks them: missing means
# off, the block it trained.
BLOCK_OPTIONS = ("rope", "rmsnorm", "qk_norm", "relu2", "swiglu", "no_bias", "untied_head", "zero_init", "logit_softcap")


@dataclass
class RunConfig:
    # Every default is the engine's (`lmcore.Model`'s, tested); the presets' recipe is RECIPE.
    # model
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 2
    block_size: int = 128
    dropout: float = 0.0
    # block options, all off in the presets (GPT-2's block); see BLOCK_OPTIONS
    rope: bool = False
    rmsnorm: bool = False
    qk_norm: bool = False
    relu2: bool = False
    swiglu: bool = False
    no_bias: bool = False
    untied_head: bool = False
    zero_init: bool = False
    logit_softcap: float = 0.0
    # optimisation: AdamW (or Muon), linear warmup, then the schedule: cosine to min_lr at
    # lr_decay_iters, or warmup-stable-decay (flat at lr, then linear to lr * final_lr_ratio over the last decay_frac)
    batch_size: int = 16
    max_iters: int = 10_000
    lr_decay_iters: int | None = None  # None: max_iters when the run starts
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    schedule: str = "cosine"
    decay_frac: float = 0.2
    final_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 0.0
    # Muon: orthogonalised Nesterov momentum for the hidden matrices, AdamW (lr) for the rest
    optimizer: str = "adamw"
    muon_lr: float = 0.02  # the matrices' peak LR; the schedule scales it as it scales lr
    muon_momentum: float = 0.95
    # bookkeeping
    eval_interval: int = 500
    eval_iters: int = 100
    ckpt_interval: int = 500
    log_interval: int = 10
    seed: int = 0
    eval_full: bool = False  # validation loss over the whole split instead of eval_iters sampled batches
    # chat fine-tuning: packed conversations, the loss on the assistant's replies only (conversation/finetuning.py)
    sft: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown run settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def model_settings(self, vocab_size: int) -> dict[str, Any]:
        """The engine's `Model` settings for this recipe (its model, optimizer and clipping fields).
        Muon's learning rate goes as its ratio to --lr, so the schedule of --lr scales both."""
        names = ("d_model", "n_head", "n_layer", "block_size", "dropout", "seed", "beta1", "beta2", "eps",
                 "weight_decay", "grad_clip", "optimizer", "muon_momentum",
                 *BLOCK_OPTIONS)
        ratio = self.muon_lr / self.lr if self.lr > 0 else math.inf  # (validate() refuses lr <= 0 first)
        return {"vocab_size": vocab_size, "dtype": "float32", "muon_lr_ratio": ratio,
                **{n: getattr(self, n) for n in names}}

    def validate(self) -> None:
        """Raise ValueError naming the first setting that makes no sense: the engine checks the
        model's and the optimizer's (its messages are turned into flag names here), this the rest."""
        for f in fields(self):  # (a checkpoint's configuration is JSON: any type may turn up)
            value, kind, optional = getattr(self, f.name), field_kind(f.name), is_optional(f.name)
            if kind in (bool, str):
                fits = type(value) is kind
            else:
                fits = type(value) is int or (kind is float and type(value) is float) or (optional and value is None)
            if not fits:
                wanted = {bool: "true or false", str: "a name", float: "a number", int: "an integer"}[kind]
                raise ValueError(f"--{f.name.replace('_', '-')} must be {wanted}, got {value!r:.40}")
        for name in ("lr", "min_lr", "muon_lr"):  # (before the engine's checks, which get muon_lr / lr)
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.lr <= 0:
            raise ValueError("--lr must be greater than 0")
        if not math.isfinite(self.muon_lr / self.lr):
            raise ValueError(f"--muon-lr {self.muon_lr} is too large beside --lr {self.lr}")
        try:  # (the vocabulary is the tokenizer's, known later; 1 stands in for it here)
            check_settings(**self.model_settings(vocab_size=1))
        except (LmcoreError, OverflowError, TypeError) as e:
            raise ValueError(as_flags(str(e))) from None
        for name in ["batch_size", "eval_interval", "eval_iters", "ckpt_interval", "log_interval"]:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0:
            raise ValueError("--max-iters and --warmup-iters must not be negative")
        if self.lr_decay_iters is not None and self.lr_decay_iters < 1:
            raise ValueError(f"--lr-decay-iters must be at least 1, got {self.lr_decay_iters}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be {' or '.join(SCHEDULES)}, got {self.schedule!r:.40}")
        if not 0 < self.decay_frac <= 1:  # (False for NaN too)
            raise ValueError(f"--decay-frac must be in (0, 1], got {self.decay_frac}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"--final-lr-ratio must be in [0, 1], got {self.final_lr_ratio}")


_HINTS = typing.get_type_hints(RunConfig)  # each field's type (the annotations are strings)
SCHEDULES = ("cosine", "wsd")
# Fields a checkpoint of an earlier lmcore lacks; their defaults are what that lmcore did.
LATER_FIELDS = frozenset({"schedule", "decay_frac", "final_lr_ratio", "eval_full", "optimizer", "muon_lr", "muon_momentum",
                          "sft", *BLOCK_OPTIONS})


def field_kind(name: str) -> type:
    """The Python type of a field's value (int also for the optional ``lr_decay_iters``)."""
    return next(kind for kind in typing.get_args(_HINTS[name]) or (_HINTS[name],) if kind is not type(None))


def is_optional(name: str) -> bool:
    """Whether a field may be None (``lr_decay_iters``: the run's ``max_iters``)."""
    return type(None) in typing.get_args(_HINTS[name])


def as_flags(message: str) -> str:
    """An engine message about settings (``n_head 3 does not divide d_model 32``) in the
    command line's words (``--n-head 3 does not divide --d-model 32``)."""
    names = "|".join(f.name for f in fields(RunConfig))
    return re.sub(rf"(?<![\w-])({names})\b", lambda m: "--" + m.group(1).replace("_", "-"), message)


def _preset_default(name: str) -> str:
    return "default: the preset's, " + ", ".join(f"{p} {v[name]}" for p, v in PRESETS.items())


# The --help text of every field's flag.
FIELD_HELP: dict[str, str] = {
    "d_model": f"width of the residual stream ({_preset_default('d_model')})",
    "n_head": f"attention heads; must divide --d-model ({_preset_default('n_head')})",
    "n_layer": f"transformer blocks ({_preset_default('n_layer')})",
    "block_size": f"context length in tokens ({_preset_default('block_size')})",
    "dropout": f"dropout probability in [0, 1) (default {RunConfig.dropout})",
    "rope": "rotary position embeddings on queries and keys instead of a learned position embedding (default: off)",
    "rmsnorm": "RMSNorm (a gain, no bias) instead of every LayerNorm (default: off)",
    "qk_norm": "RMS-normalise each head's queries and keys, with learnable gains, before attention (default: off)",
    "relu2": "relu(x)^2 instead of GELU in the MLP (default: off)",
    "no_bias": "no biases in the linear layers (Llama's and Qwen3's); LayerNorm keeps its own (default: off)",
    "swiglu": "a gated SiLU MLP (SwiGLU, Llama's) instead of GELU: silu(gate) * up, 4 x --d-model wide (default: off)",
    "untied_head": "an output projection of its own (lm_head) instead of the token embedding (default: off)",
    "zero_init": "start the residual projections and an untied head at zero (default: off)",
    "logit_softcap": f"cap the logits at F: F * tanh(logits / F); 0: off (default {RunConfig.logit_softcap})",
    "batch_size": f"sequences per step ({_preset_default('batch_size')})",
    "max_iters": f"steps to train to ({_preset_default('max_iters')})",
    "lr_decay_iters": "step where the schedule's decay ends and the learning rate stays "
                      "(default: --max-iters of the first run)",
    "lr": f"peak learning rate (default {RunConfig.lr})",
    "min_lr": f"final learning rate of the cosine schedule (default {RunConfig.min_lr})",
    "warmup_iters": f"steps of linear warmup (default {RunConfig.warmup_iters})",
    "schedule": f"learning-rate schedule after the warmup: cosine (to --min-lr) or wsd (warmup-stable-decay: flat at "
                f"--lr, then linear to --lr x --final-lr-ratio) (default {RunConfig.schedule})",
    "decay_frac": f"wsd: fraction of --lr-decay-iters spent decaying, at its end (default {RunConfig.decay_frac})",
    "final_lr_ratio": f"wsd: final learning rate as a fraction of --lr (default {RunConfig.final_lr_ratio})",
    "beta1": f"AdamW beta1 (default {RunConfig.beta1})",
    "beta2": f"AdamW beta2 ({_preset_default('beta2')})",
    "eps": f"AdamW epsilon (default {RunConfig.eps})",
    "weight_decay": f"AdamW weight decay of 2-D weights ({_preset_default('weight_decay')})",
    "grad_clip": f"clip the global gradient norm to this; 0: off ({_preset_default('grad_clip')})",
    "optimizer": "adamw (default) or muon: the hidden matrices take Nesterov momentum orthogonalised by "
                 "Newton-Schulz, at --muon-lr; embeddings, gains and biases stay on AdamW at --lr",
    "muon_lr": f"Muon's peak learning rate of the hidden matrices; the schedule scales it as it scales --lr "
               f"(default {RunConfig.muon_lr})",
    "muon_momentum": f"Muon's Nesterov momentum, in [0, 1) (default {RunConfig.muon_momentum})",
    "eval_interval": f"steps between validation evaluations (default {RunConfig.eval_interval})",
    "eval_iters": f"batches per evaluation (default {RunConfig.eval_iters})",
    "ckpt_interval": f"steps between checkpoints (default {RunConfig.ckpt_interval})",
    "log_interval": f"steps between metrics lines (default {RunConfig.log_interval})",
    "seed": f"seed of the weights, batches and dropout ({_preset_default('seed')})",
    "eval_full": "evaluate on every window of the whole validation split (deterministic), "
                 "not on --eval-iters sampled batches",
    "sft": "chat fine-tuning on conversations (--dataset plays-dialogue or --data FILE.jsonl): the loss and the "
           "validation loss on the assistant's replies only; usually with --init-from CKPT",
}
assert set(FIELD_HELP) == {f.name for f in fields(RunConfig)}
