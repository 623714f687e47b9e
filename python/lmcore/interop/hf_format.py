"""A trained lmcore model as a Hugging Face ``transformers`` model directory, and the way back.

lmcore's classic block is GPT-2's (``GPT2LMHeadModel``): learned positions, pre-norm LayerNorm
(eps 1e-5), tanh-GELU (``gelu_new``), biases on every linear layer, no head bias, the head tied to
the token embedding. GPT-2's linear layers are ``Conv1D`` (y = x W + b with W (in, out)), so each
lmcore weight (out, in) is stored transposed. ``--relu2`` is GPT-2's ``relu2`` activation and
``--untied-head`` an ``lm_head.weight`` of its own; ``--zero-init`` is only how training starts.
``--rope`` makes it GPT-NeoX's model instead (``hf_neox.py``), and ``--rope --rmsnorm --swiglu``
Llama's (``hf_llama.py``; Qwen3's with ``--qk-norm``). A ``--no-bias`` GPT-2 or GPT-NeoX model
exports with zero biases. RMSNorm or QK-norm without the rest of Llama's block, and a logit
soft-cap, have no exact counterpart in a standard architecture, so such a model is refused,
naming the option.

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


class ExportError(Error):
    """A model or request that an export format cannot express; the message names why."""


_LLAMA_HINT = "Llama's block is --rope --rmsnorm --swiglu (Qwen3's adds --qk-norm, with --no-bias)"


def refused_option(cfg: RunConfig) -> str | None:
    """The first block option of ``cfg`` that no exported architecture computes, as a flag and a reason."""
    if cfg.logit_softcap:
        return ("--logit-softcap: a logit soft-cap (of the standard architectures only Gemma 2 has one, in a block "
                "unlike lmcore's: GeGLU, four norms per block, scaled embeddings)")
    if cfg.rmsnorm and not cfg.swiglu:
        return f"--rmsnorm without --swiglu: the architectures with RMSNorm have a gated SiLU MLP; {_LLAMA_HINT}"
    if cfg.swiglu and not cfg.rmsnorm:
        return f"--swiglu without --rmsnorm: the architectures with a gated SiLU MLP use RMSNorm; {_LLAMA_HINT}"
    if cfg.swiglu and not cfg.rope:
        return f"--swiglu without --rope: Llama and Qwen3 use rotary embeddings; {_LLAMA_HINT}"
    if cfg.qk_norm and not cfg.swiglu:
        return f"--qk-norm without --swiglu: Qwen3 has QK-norm, in Llama's block; {_LLAMA_HINT}"
    if cfg.qk_norm and not cfg.no_bias:
        return "--qk-norm with biases: Qwen3 has QK-norm, but no MLP biases; train with --no-bias"
    return None


def check_exportable(cfg: RunConfig, what: str) -> None:
    """Refuse, in one line naming the option, a model no exported architecture can hold."""
    if (why := refused_option(cfg)) is not None:
        raise ExportError(f"cannot export to {what}: the model uses {why}")


def architecture(cfg: RunConfig) -> str:
    """The transformers ``model_type`` that computes ``cfg``'s model exactly (after ``check_exportable``)."""
    if cfg.swiglu:
        return "qwen3" if cfg.qk_norm else "llama"
    return "gpt_neox" if cfg.rope else "gpt2"


def hf_model(cfg: RunConfig, params: dict[str, np.ndarray], vocab_size: int,
             eos_id: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``config.json`` and the tensors of the transformers model: GPT-2, GPT-NeoX (``--rope``),
    Llama (``--rope --rmsnorm --swiglu``) or Qwen3 (and ``--qk-norm``)."""
    check_exportable(cfg, "Hugging Face transformers")
    arch = architecture(cfg)
    if arch in ("llama", "qwen3"):
        from lmcore.interop.hf_llama import llama_config, llama_tensors

        return llama_config(cfg, vocab_size, eos_id, NORM_EPS), llama_tensors(params)
    params = with_zero_biases(params, cfg)
    if arch == "gpt_neox":
        from lmcore.interop.hf_neox import neox_config, neox_tensors

        return neox_config(cfg, vocab_size, eos_id, activation(cfg), NORM_EPS), neox_tensors(params, cfg)
    return gpt2_config(cfg, vocab_size, eos_id), gpt2_tensors(params, cfg)


def with_zero_biases(params: dict[str, np.ndarray], cfg: RunConfig) -> dict[str, np.ndarray]:
    """A ``--no-bias`` model's parameters with the zero biases of the linear layers GPT-2 and GPT-NeoX
    always have (the same model), in the layout's order."""
    if not cfg.no_bias:
        return params
    out = {}
    for name, value in params.items():
        out[name] = value
        if name.startswith("transformer.h.") and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            out[name[: -len("weight")] + "bias"] = np.zeros(value.shape[0], dtype=np.float32)
    return out


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
