"""The modern block (``--rope --rmsnorm --swiglu``) as Hugging Face's ``LlamaForCausalLM``, and with
``--qk-norm`` as ``Qwen3ForCausalLM``; and the way back.

Llama's block is lmcore's modern one, term for term: RMSNorm x / sqrt(mean(x^2) + eps) * gain
(eps 1e-5, no bias), rotary embeddings over the whole head that pair channel j with channel
j + hs/2 at base 10000 (its ``rotate_half``, lmcore's layout), scores scaled by 1/sqrt(hs), a
gated SiLU MLP silu(gate) * up, 4 x d_model wide. lmcore's linear layers have biases:
``attention_bias`` and ``mlp_bias`` say so. Qwen3 adds an RMSNorm of each head's query and key
(gains of the head size, shared by the heads, the same eps, before the rotation), as
``--qk-norm`` does; its MLP has no biases, so a Qwen3 export needs a ``--no-bias`` model.
The fused weights split: ``attn.c_attn`` rows are Q, K, V; ``mlp.c_fc`` rows are gate, then up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmcore.config import RunConfig
from lmcore.interop.hf_neox import ROPE_BASE
# lmcore's name (after transformer.h.N.) -> Llama's (after model.layers.N.), for the unsplit parts.
_BLOCK = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "attn.c_proj.bias": "self_attn.o_proj.bias",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
    "mlp.c_proj.bias": "mlp.down_proj.bias",
}
# Fused lmcore parameters and the Llama parameters their equal row blocks become, in order.
_SPLIT = {
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
}
_GLOBAL = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def llama_config(cfg: RunConfig, vocab_size: int, eos_id: int | None, eps: float) -> dict[str, Any]:
    """``config.json`` of the Llama (or, with --qk-norm, Qwen3) model ``cfg`` describes."""
    qwen3 = cfg.qk_norm
    rope = {"rope_type": "default", "rope_theta": ROPE_BASE}
    config = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": 4 * cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.d_model // cfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": eps,
        "rope_parameters": rope,
        "rope_theta": ROPE_BASE,  # (the same, for transformers before rope_parameters)
        "attention_bias": not cfg.no_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": not cfg.untied_head,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "dtype": "float32",
    }
    if not qwen3:
        config.update(mlp_bias=not cfg.no_bias, pretraining_tp=1)
    return config


def llama_tensors(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """lmcore's parameters under Llama's (Qwen3's) names, the fused ones split into their blocks."""
    out = {}
    for name, value in params.items():
        if name in _GLOBAL:
            out[_GLOBAL[name]] = value
            continue
        _, _, layer, rest = name.split(".", 3)  # transformer.h.N.<part>.<weight|bias>
        prefix = f"model.layers.{layer}."
        part, kind = rest.rsplit(".", 1)
        if part in _SPLIT:
            for target, block in zip(_SPLIT[part], np.split(value, len(_SPLIT[part]))):
                out[f"{prefix}{target}.{kind}"] = block
        else:
            out[prefix + _BLOCK[rest]] = value
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def lmcore_from_llama(tensors: dict[str, np.ndarray], n_layer: int) -> dict[str, np.ndarray]:
    """Llama's (Qwen3's) tensors back under lmcore's names, the split ones fused again. A bias the
    model does not have (``attention_bias`` or ``mlp_bias`` false) is missing here; a name lmcore
    does not have is kept as it is (the caller's layout check names it)."""
    names = {v: k for k, v in _GLOBAL.items()}
    for i in range(n_layer):
        names.update({f"model.layers.{i}.{theirs}": f"transformer.h.{i}.{ours}" for ours, theirs in _BLOCK.items()})
    split = {f"model.layers.{i}.{t}.{kind}" for i in range(n_layer) for ts in _SPLIT.values() for t in ts
             for kind in ("weight", "bias")}
    out = {names.get(k, k): v for k, v in tensors.items() if k not in split and not k.endswith("rotary_emb.inv_freq")}
    for i in range(n_layer):
        for part, targets in _SPLIT.items():
            for kind in ("weight", "bias"):
                blocks = [tensors.get(f"model.layers.{i}.{t}.{kind}") for t in targets]
                if all(b is not None for b in blocks):
                    out[f"transformer.h.{i}.{part}.{kind}"] = np.concatenate(blocks)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
