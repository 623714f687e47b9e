"""A ``--rope`` model as Hugging Face's ``GPTNeoXForCausalLM``: the one standard architecture with
rotary embeddings and lmcore's block otherwise (LayerNorm with biases, a plain GELU or ReLU^2 MLP 4x
wide, biases on every linear layer). Its rotation pairs channel j of a head's first half with
channel j of its second half, at base 10000 over the whole head, as lmcore's does; blocks are
sequential (``use_parallel_residual: false``). Its linear layers are ``nn.Linear`` (out, in) like
lmcore's, but its fused Q, K, V rows are grouped by head (q, k, v of head 0, then of head 1, ...)
where lmcore's are all queries, then keys, then values: the rows are permuted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmcore.config import RunConfig

ROPE_BASE = 10_000.0  # rust/core/src/ops/rope.rs
_NAMES = {
    "transformer.wte.weight": "gpt_neox.embed_in.weight",
    "transformer.ln_f.weight": "gpt_neox.final_layer_norm.weight",
    "transformer.ln_f.bias": "gpt_neox.final_layer_norm.bias",
    # embed_out: the untied head's name in every transformers version (5 renames it lm_head on load)
    "lm_head.weight": "embed_out.weight",
}
_BLOCK = {
    "ln_1": "input_layernorm",
    "attn.c_attn": "attention.query_key_value",
    "attn.c_proj": "attention.dense",
    "ln_2": "post_attention_layernorm",
    "mlp.c_fc": "mlp.dense_h_to_4h",
    "mlp.c_proj": "mlp.dense_4h_to_h",
}


def neox_config(cfg: RunConfig, vocab_size: int, eos_id: int | None, act: str, eps: float) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": ROPE_BASE, "partial_rotary_factor": 1.0}
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": 4 * cfg.d_model,
        "hidden_act": act,
        "max_position_embeddings": cfg.block_size,
        "layer_norm_eps": eps,
        "use_parallel_residual": False,
        "attention_bias": True,
        "rope_parameters": rope,
        "rotary_pct": 1.0,  # (the same, for transformers before rope_parameters)
        "rotary_emb_base": ROPE_BASE,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "tie_word_embeddings": not cfg.untied_head,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "dtype": "float32",
    }


def _by_head(x: np.ndarray, n_head: int) -> np.ndarray:
    """Fused Q, K, V rows from lmcore's order (q of every head, k ..., v ...) to NeoX's (per head q, k, v)."""
    c = x.shape[0] // 3
    rest = x.shape[1:]
    return x.reshape(3, n_head, c // n_head, *rest).swapaxes(0, 1).reshape(3 * c, *rest)


def neox_tensors(params: dict[str, np.ndarray], cfg: RunConfig) -> dict[str, np.ndarray]:
    out = {}
    for name, value in params.items():
        if name in _NAMES:
            key = _NAMES[name]
        else:
            _, _, layer, rest = name.split(".", 3)  # transformer.h.N.<part>.<weight|bias>
            part, kind = rest.rsplit(".", 1)
            key = f"gpt_neox.layers.{layer}.{_BLOCK[part]}.{kind}"
            if part == "attn.c_attn":
                value = _by_head(value, cfg.n_head)
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _by_kind(x: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of ``_by_head``: NeoX's rows (per head q, k, v) to lmcore's (all q, all k, all v)."""
    c = x.shape[0] // 3
    rest = x.shape[1:]
    return x.reshape(n_head, 3, c // n_head, *rest).swapaxes(0, 1).reshape(3 * c, *rest)


def lmcore_from_neox(tensors: dict[str, np.ndarray], n_head: int) -> dict[str, np.ndarray]:
    """GPT-NeoX's tensors back under lmcore's names (the fused Q, K, V rows regrouped by kind);
    the rotary buffers of old files left out, a name lmcore does not have kept as it is."""
    names = {v: k for k, v in _NAMES.items()} | {"lm_head.weight": "lm_head.weight"}
    blocks = {v: k for k, v in _BLOCK.items()}
    out = {}
    for name, value in tensors.items():
        if name.endswith((".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")):
            continue  # buffers, not parameters
        parts = name.split(".")
        if name in names:
            key = names[name]
        elif name.startswith("gpt_neox.layers.") and len(parts) >= 5 and ".".join(parts[3:-1]) in blocks:
            part = blocks[".".join(parts[3:-1])]
            key = f"transformer.h.{parts[2]}.{part}.{parts[-1]}"
            if part == "attn.c_attn":
                value = _by_kind(value, n_head)
        else:
            key = name
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out
