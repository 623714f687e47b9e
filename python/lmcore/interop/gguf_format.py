"""A trained lmcore model as a GGUF file for llama.cpp, written with PyPI's ``gguf`` package.

llama.cpp's ``gpt2`` architecture is lmcore's classic block: learned positions, LayerNorm, a fused
Q, K, V projection with biases, a tanh-GELU MLP, the head tied to the token embedding unless an
``output.weight`` is given. With ``--rope`` it is llama.cpp's ``gptneox`` (rotary over the whole
head in NeoX's half-split pairing, sequential blocks, an ``output.weight`` always). ggml keeps a
weight (out, in) and the fused rows as Q, K, V, as lmcore does, so nothing is transposed or
permuted. llama.cpp's MLP there is GELU only, so ``--relu2`` is refused here on top of what the
transformers export refuses. Llama's block (``--rope --rmsnorm --swiglu``) is llama.cpp's ``llama``,
and with ``--qk-norm`` its ``qwen3``: the fused Q, K, V and gate, up weights are split as for
transformers (``hf_llama.py``). llama.cpp's ``qwen3`` rotates in NeoX's half-split pairs, as lmcore
does, but its ``llama`` rotates adjacent pairs (2j, 2j + 1): the query and key rows of each head
(and their biases) are reordered so that lmcore's pair (j, j + hs/2) lands there, which changes no
score.

The tokenizer is written as llama.cpp's byte-level BPE (``tokenizer.ggml.model`` "gpt2"): each
token spelled in GPT-2's byte symbols, a BPE's merges in order. A char vocabulary is a BPE whose
merges only join the bytes of each character outside ASCII (each character one token, spelled as
its UTF-8 bytes' symbols), so llama.cpp encodes and decodes it as lmcore does. Special tokens are
control tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmcore.config import RunConfig
from lmcore.interop.hf_format import NORM_EPS, ExportError, check_exportable, with_zero_biases
from lmcore.interop.hf_format import architecture as hf_architecture
from lmcore.interop.hf_llama import llama_tensors
from lmcore.interop.hf_neox import ROPE_BASE
from lmcore.interop.hf_tokenizer import eos_token_id
from lmcore.tokenizer import Tokenizer
from lmcore.tokenizer.bpe import BpeTokenizer, byte_symbols

# lmcore's parameter names -> llama.cpp's (blk.N. for transformer.h.N.).
_GLOBAL = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
_BLOCK = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
# Llama's names (after model.layers.N.) -> llama.cpp's (after blk.N.).
_LLAMA_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LLAMA_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
# llama.cpp's token types (llama_token_type): an ordinary token, a control (special) token.
NORMAL, CONTROL = 1, 3


def gguf_name(name: str) -> str:
    """llama.cpp's name of an lmcore parameter."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    _, _, layer, rest = name.split(".", 3)  # transformer.h.N.<part>.<weight|bias>
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_BLOCK[part]}.{kind}"


def check_gguf(cfg: RunConfig) -> None:
    check_exportable(cfg, "GGUF")
    if cfg.relu2:
        raise ExportError("cannot export to GGUF: the model uses --relu2, which llama.cpp's gpt2 and gptneox "
                          "architectures do not have (they use GELU); export it with --to hf instead")


def architecture(cfg: RunConfig) -> str:
    """llama.cpp's name of the architecture transformers knows as ``hf_format.architecture``."""
    return {"gpt_neox": "gptneox"}.get(hf_architecture(cfg), hf_architecture(cfg))


def adjacent_pairs(w: np.ndarray, n_head: int) -> np.ndarray:
    """Query or key rows (or biases) of each head from lmcore's rotation pairs (j, j + hs/2) to
    llama.cpp llama's (2j, 2j + 1)."""
    c = w.shape[0]
    return w.reshape(n_head, 2, c // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(cfg: RunConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors of the GGUF file under llama.cpp's names, in the layout's order."""
    arch = architecture(cfg)
    if arch not in ("llama", "qwen3"):
        params = with_zero_biases(params, cfg)
        if arch == "gptneox" and "lm_head.weight" not in params:  # (its loader needs an output weight)
            params = {**params, "lm_head.weight": params["transformer.wte.weight"]}
        return {gguf_name(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    out = {}
    for name, value in llama_tensors(params).items():
        if name in _LLAMA_GLOBAL:
            out[_LLAMA_GLOBAL[name]] = value
            continue
        _, _, layer, rest = name.split(".", 3)  # model.layers.N.<part>.<weight|bias>
        part, kind = rest.rsplit(".", 1)
        if arch == "llama" and part in ("self_attn.q_proj", "self_attn.k_proj"):
            value = np.ascontiguousarray(adjacent_pairs(value, cfg.n_head))
        out[f"blk.{layer}.{_LLAMA_BLOCK[part]}.{kind}"] = value
    return out


def gguf_vocab(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens in GPT-2's byte symbols, their types, and the merges (none for a char vocabulary)."""
    symbols = byte_symbols()
    if isinstance(tok, BpeTokenizer):
        import json

        model = json.loads(tok.to_dict()["tokenizer_json"])["model"]
        vocab = model["vocab"]
        tokens = sorted(vocab, key=vocab.__getitem__)
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    else:
        tokens = ["".join(symbols[b] for b in c.encode("utf-8")) for c in tok.chars]
        merges = char_merges(tokens)
    types = [NORMAL] * len(tokens) + [CONTROL] * len(tok.specials)
    return tokens + list(tok.specials), types, merges


def char_merges(tokens: list[str]) -> list[str]:
    """Merges that join the byte symbols of each multi-byte character, left to right (a continuation
    byte never starts a character, so no two chains compete). llama.cpp needs the merges key, which
    the gguf writer leaves out when empty: an all-ASCII vocabulary gets one inert merge of two NUL
    bytes (lmcore refuses corpora with NUL, so no char vocabulary holds one)."""
    merges: dict[str, None] = {}
    for t in tokens:
        for i in range(2, len(t) + 1):
            merges[f"{t[:i - 1]} {t[i - 1]}"] = None
    nul = byte_symbols()[0]
    return list(merges) or [f"{nul} {nul}"]


def write_gguf(path: Path, cfg: RunConfig, tok: Tokenizer, params: dict[str, np.ndarray], name: str) -> None:
    """Write the model, its hyperparameters and its tokenizer to ``path`` (float32 tensors)."""
    import gguf

    check_gguf(cfg)
    tokens, types, merges = gguf_vocab(tok)
    arch = architecture(cfg)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(4 * cfg.d_model)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    if arch in ("llama", "qwen3"):
        w.add_head_count_kv(cfg.n_head)
        w.add_layer_norm_rms_eps(NORM_EPS)
    else:
        w.add_layer_norm_eps(NORM_EPS)
    if cfg.rope:
        w.add_rope_dimension_count(cfg.d_model // cfg.n_head)
        w.add_rope_freq_base(ROPE_BASE)
    if arch == "gptneox":
        w.add_parallel_residual(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    # No BOS: lmcore's models start from plain text. llama.cpp stops at the EOS (a chat model's <|end|>).
    w.add_add_bos_token(False)
    if (eos := eos_token_id(tok)) is not None:
        w.add_eos_token_id(eos)
    for gname, value in gguf_tensors(cfg, params).items():
        w.add_tensor(gname, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
