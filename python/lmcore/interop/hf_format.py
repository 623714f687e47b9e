"""A trained lmcore model as a Hugging Face ``transformers`` model directory, and the way back.

lmcore's classic block is GPT-2's (``GPT2LMHeadModel``): learned positions, pre-norm LayerNorm
(eps 1e-5), tanh-GELU (``gelu_new``), biases on every linear layer, no head bias, the head tied to
the token embedding. GPT-2's linear layers are ``Conv1D`` (y = x W + b with W (in, out)), so each
lmcore weight (out, in) is stored transposed. ``--relu2`` is GPT-2's ``relu2`` activation and
``--untied-head`` an ``lm_head.weight`` of its own; ``--zero-init`` is only how training starts.
``--rope`` makes it GPT-NeoX's model instead (``hf_neox.py``). RMSNorm, QK-norm and a logit
soft-cap have no exact counterpart in a standard architecture with lmcore's plain MLP and biases
(Llama's MLP is gated), so a model with them is refused, naming the option.

This file knows the names and layouts; ``writer.py`` writes the files and ``hf_import.py`` reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmcore.config import RunConfig
from lmcore.errors import Error

# lmcore's LayerNorm and RMSNorm epsilon (rust/core/src/ops/layernorm.rs).
NORM_EPS = 1e-5
# The linear weights GPT-2 keeps as Conv1D (in, out): lmcore's (out, in), transposed.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Why a block option has no standard architecture, for the one-line refusal.
NOT_EXPORTABLE = {
    "rmsnorm": "RMSNorm (GPT-2 and GPT-NeoX use LayerNorm; Llama has RMSNorm but a gated MLP)",
    "qk_norm": "QK-norm (GPT-2 and GPT-NeoX have none)",
    "logit_softcap": "a logit soft-cap (GPT-2 and GPT-NeoX have none)",
}


class ExportError(Error):
    """A model or request that an export format cannot express; the message names why."""


def refused_option(cfg: RunConfig) -> str | None:
    """The first block option of ``cfg`` that no exported architecture holds, as a flag and a reason."""
    for option, why in NOT_EXPORTABLE.items():
        if getattr(cfg, option):
            return f"--{option.replace('_', '-')}: {why}"
    return None


def check_exportable(cfg: RunConfig, what: str) -> None:
    """Refuse, in one line naming the option, a model no exported architecture can hold."""
    if (why := refused_option(cfg)) is not None:
        raise ExportError(f"cannot export to {what}: the model uses {why}; lmcore exports GPT-2's block "
                          "(with --rope as GPT-NeoX; --relu2, --untied-head and --zero-init allowed)")


def hf_model(cfg: RunConfig, params: dict[str, np.ndarray], vocab_size: int,
             eos_id: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``config.json`` and the tensors of the transformers model: GPT-2, or GPT-NeoX with ``--rope``."""
    check_exportable(cfg, "Hugging Face transformers")
    if cfg.rope:
        from lmcore.interop.hf_neox import neox_config, neox_tensors

        return neox_config(cfg, vocab_size, eos_id, activation(cfg), NORM_EPS), neox_tensors(params, cfg)
    return gpt2_config(cfg, vocab_size, eos_id), gpt2_tensors(params, cfg)


def activation(cfg: RunConfig) -> str:
    """The MLP's activation by its ``transformers`` name (ACT2FN)."""
    return "relu2" if cfg.relu2 else "gelu_new"


def gpt2_config(cfg: RunConfig, vocab_size: int, eos_id: int | None) -> dict[str, Any]:
    """``config.json`` of the GPT-2 model ``cfg`` describes (dropout 0: it is for inference)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.d_model,
        "activation_function": activation(cfg),
        "layer_norm_epsilon": NORM_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": not cfg.untied_head,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def generation_config(eos_id: int | None) -> dict[str, Any]:
    """``generation_config.json``: greedy by default, stopping at a chat model's end marker."""
    return {"do_sample": False, "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": eos_id}


def gpt2_tensors(params: dict[str, np.ndarray], cfg: RunConfig) -> dict[str, np.ndarray]:
    """lmcore's parameters under GPT-2's names and layouts (a tied head is not stored twice)."""
    out = {}
    for name, value in params.items():
        out[name] = np.ascontiguousarray(value.T if name.endswith(CONV1D) else value, dtype=np.float32)
    return out


def lmcore_params(tensors: dict[str, np.ndarray], block_size: int) -> dict[str, np.ndarray]:
    """GPT-2's tensors back under lmcore's names and layouts: Conv1D weights transposed, the
    position table cut to ``block_size`` rows, the causal-mask buffers of old files left out."""
    out = {}
    for name, value in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # not parameters: GPT-2's causal mask, saved by old transformers versions
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        if key.endswith(CONV1D):
            value = value.T
        elif key == "transformer.wpe.weight":
            value = value[:block_size]
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out
