"""``--init-from DIR``: a Hugging Face directory of an architecture lmcore exports (GPT-2,
GPT-NeoX, Llama, Qwen3) as the start of an lmcore run.

The directory holds ``config.json`` (``model_type`` gpt2, gpt_neox, llama or qwen3),
``model.safetensors`` (never a pickle: loading must not run code) and ``tokenizer.json`` (a
byte-level BPE, or lmcore's char vocabulary as ``writer.py`` writes it). The architecture sets the
block options (GPT-NeoX: --rope; Llama: --rope --rmsnorm --swiglu, --no-bias when it has no
biases; Qwen3: and --qk-norm), which the run must name as well. A bias the model lacks (Llama's
``mlp_bias`` false, say) starts at zero. Everything lmcore does not implement is refused with a
one-line ``CheckpointError`` naming it (``training/run.py`` adds that
``--init-from`` asked): another architecture, activation, norm epsilon or rotary
setting, an MLP not 4x wide, grouped keys and values, cross-attention, a run whose shape
differs from the model's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lmcore.checkpoint.file import CheckpointError
from lmcore.checkpoint.state import param_shapes
from lmcore.config import RunConfig
from lmcore.interop.hf_format import NORM_EPS, lmcore_params
from lmcore.interop.hf_llama import ROPE_BASE, lmcore_from_llama
from lmcore.interop.hf_neox import lmcore_from_neox
from lmcore.interop.hf_tokenizer import tokenizer_from_hf
from lmcore.tokenizer import Tokenizer

# Two names of the tanh approximation of GELU that lmcore's MLP computes.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
# Each architecture's config keys of d_model, n_head, n_layer and block_size, and whether its
# head is tied when the config does not say (transformers' defaults).
_SHAPE = {
    "gpt2": (("n_embd", "n_head", "n_layer", "n_positions"), True),
    "gpt_neox": (("hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings"), False),
    "llama": (("hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings"), False),
    "qwen3": (("hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings"), False),
}


# The options that change the parameters, as GPT-2's block has them; each architecture sets its own.
_CLASSIC = {"rope": False, "rmsnorm": False, "swiglu": False, "qk_norm": False, "no_bias": False}


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {path.name} ({what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {str(e)[:120]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _refuser(where: Path) -> Any:
    def refuse(what: str) -> None:
        raise CheckpointError(f"{where} {what}")
    return refuse


def _checked_options(hf: dict[str, Any], cfg: RunConfig, where: Path) -> None:
    """Refuse what GPT2LMHeadModel may hold but lmcore's block does not compute."""
    refuse = _refuser(where)
    act = hf.get("activation_function", "gelu_new")
    if act not in (*GELU_TANH, "relu2") or (act == "relu2") != cfg.relu2:
        want = "relu2 with --relu2" if cfg.relu2 else "gelu_new (tanh GELU), or relu2 with --relu2"
        refuse(f"has activation_function {str(act)[:40]!r}; lmcore computes {want}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, NORM_EPS, rel_tol=1e-6):
        refuse(f"has layer_norm_epsilon {eps!r}; lmcore's LayerNorm uses {NORM_EPS}")
    n_embd = hf.get("n_embd")
    if hf.get("n_inner") not in (None, 4 * n_embd if isinstance(n_embd, int) else None):
        refuse(f"has an MLP of n_inner {hf.get('n_inner')!r}; lmcore's is 4 x n_embd")
    for key, ok in (("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)):
        if hf.get(key, ok) != ok:
            refuse(f"has {key} {hf.get(key)!r}; lmcore computes it as {ok}")
    if cfg.rope or cfg.rmsnorm or cfg.qk_norm or cfg.swiglu or cfg.logit_softcap:
        refuse("is a GPT-2 model: it has no --rope, --rmsnorm, --qk-norm, --swiglu or --logit-softcap")


def _same(hf: dict[str, Any], key: str, ours: object, default: object, refuse: Any, why: str) -> None:
    """Refuse a config whose ``key`` (``default`` when absent) is not lmcore's ``ours``."""
    value = default if hf.get(key) is None else hf[key]
    same = math.isclose(value, ours, rel_tol=1e-6) if isinstance(value, (int, float)) and isinstance(ours, float) \
        else value == ours
    if not same or isinstance(value, bool) != isinstance(ours, bool):
        refuse(f"has {key} {str(value)[:40]!r}; {why}")


def _checked_rotary(hf: dict[str, Any], refuse: Any) -> None:
    """lmcore rotates the whole head at base 10000, unscaled (GPT-NeoX's default: a quarter of it)."""
    rope = hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        refuse(f"has rope_parameters {str(rope)[:40]!r}")
    theta = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", ROPE_BASE)))
    _same({"rope_theta": theta}, "rope_theta", ROPE_BASE, None, refuse, f"lmcore's rotary base is {ROPE_BASE:g}")
    _same(rope, "rope_type", "default", "default", refuse, "lmcore's rotary embeddings are unscaled")
    if hf.get("rope_scaling"):
        refuse(f"has rope_scaling {str(hf['rope_scaling'])[:40]!r}; lmcore's rotary embeddings are unscaled")
    default = 0.25 if hf["model_type"] == "gpt_neox" else 1.0
    fraction = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", default)))
    _same({"partial_rotary_factor": fraction}, "partial_rotary_factor", 1.0, None, refuse,
          "lmcore rotates the whole head")


def _modern_options(hf: dict[str, Any], cfg: RunConfig, where: Path) -> dict[str, bool]:
    """Check a GPT-NeoX, Llama or Qwen3 config against what lmcore computes; the block options it
    means, and whether biases it lacks may start at zero (``zero_biases``)."""
    refuse, kind = _refuser(where), hf["model_type"]
    d, heads = hf.get("hidden_size"), hf.get("num_attention_heads")
    if cfg.logit_softcap:
        refuse(f"is a {kind} model: it has no --logit-softcap")
    _checked_rotary(hf, refuse)
    if isinstance(d, int) and isinstance(heads, int) and heads > 0:
        _same(hf, "intermediate_size", 4 * d, None, refuse, f"lmcore's MLP is 4 x hidden_size ({4 * d})")
        _same(hf, "head_dim", d // heads, d // heads, refuse, "lmcore's head size is hidden_size / num_attention_heads")
        _same(hf, "num_key_value_heads", heads, heads, refuse, "lmcore gives every query head its own keys and values")
    if kind == "gpt_neox":
        act = hf.get("hidden_act", "gelu")
        if act not in (*GELU_TANH, "relu2") or (act == "relu2") != cfg.relu2:
            want = "relu2 with --relu2" if cfg.relu2 else "gelu_new (tanh GELU), or relu2 with --relu2"
            refuse(f"has hidden_act {str(act)[:40]!r}; lmcore computes {want}")
        _same(hf, "layer_norm_eps", NORM_EPS, 1e-5, refuse, f"lmcore's LayerNorm uses {NORM_EPS}")
        _same(hf, "use_parallel_residual", False, True, refuse, "lmcore's blocks are sequential")
        return {**_CLASSIC, "rope": True, "zero_biases": not hf.get("attention_bias", True)}
    if cfg.relu2:
        refuse(f"is a {kind} model: its MLP is gated SiLU (--swiglu), not --relu2")
    _same(hf, "hidden_act", "silu", "silu", refuse, "lmcore's gated MLP is SiLU (--swiglu)")
    _same(hf, "rms_norm_eps", NORM_EPS, 1e-6, refuse, f"lmcore's RMSNorm uses {NORM_EPS}")
    biases = [bool(hf.get("attention_bias", False))]
    if kind == "qwen3":
        _same(hf, "use_sliding_window", False, False, refuse, "lmcore attends to the whole context")
        if biases[0]:
            refuse("has attention_bias true; lmcore's Qwen3 block (--qk-norm) has no biases (--no-bias)")
    else:
        _same(hf, "pretraining_tp", 1, 1, refuse, "lmcore computes each projection whole")
        biases.append(bool(hf.get("mlp_bias", False)))
    return {**_CLASSIC, "rope": True, "rmsnorm": True, "swiglu": True, "qk_norm": kind == "qwen3",
            "no_bias": not any(biases), "zero_biases": any(biases) and not all(biases)}


def _shape_config(hf: dict[str, Any], cfg: RunConfig, where: Path, options: dict[str, bool]) -> RunConfig:
    """The model's shape and block ``options`` as a RunConfig (the run's recipe otherwise); the run
    may use fewer positions."""
    names, tied = _SHAPE[hf["model_type"]]
    keys = dict(zip(names, ("d_model", "n_head", "n_layer", "block_size")))
    shape = {}
    for hf_key, ours in keys.items():
        value = hf.get(hf_key)
        if type(value) is not int or value < 1:
            raise CheckpointError(f"{where}/config.json has no valid {hf_key} ({str(value)[:20]})")
        shape[ours] = value
    if cfg.block_size > shape["block_size"]:
        raise CheckpointError(f"{where} has {shape['block_size']} positions, fewer than --block-size {cfg.block_size}")
    shape["block_size"] = cfg.block_size  # (the position table is cut to the run's block)
    return RunConfig.from_dict({**cfg.to_dict(), **shape, **options, "untied_head": not hf.get("tie_word_embeddings", tied)})


def _read_tensors(where: Path) -> dict[str, np.ndarray]:
    import safetensors.numpy

    path = where / "model.safetensors"
    if not path.is_file():
        other = [p.name for p in where.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".json") and "model" in p.name]
        hint = f" (it has {', '.join(sorted(other))}: lmcore reads one unsharded safetensors file, never a pickle)" if other else ""
        raise CheckpointError(f"{where} has no model.safetensors{hint}")
    try:
        tensors = safetensors.numpy.load_file(str(path))
    except Exception as e:  # noqa: BLE001 (the Rust parser's errors share no Python base class)
        raise CheckpointError(f"cannot read {path}: {str(e)[:160]} (lmcore reads float32 or float16)") from None
    for name, t in tensors.items():
        if t.dtype not in (np.float32, np.float16):
            raise CheckpointError(f"{path}: {name} is {t.dtype}; lmcore reads float32 or float16")
    return tensors


def load_hf(where: Path, cfg: RunConfig) -> tuple[dict[str, np.ndarray], Tokenizer, RunConfig]:
    """The parameters (lmcore's names), the tokenizer and the model's shape of an HF GPT-2 directory,
    checked against what lmcore implements and against the run's recipe ``cfg``."""
    hf = _read_json(where / "config.json", "the model's configuration")
    kind = hf.get("model_type")
    if kind not in _SHAPE:
        _refuser(where)(f"is a {str(kind)[:40]!r} model; lmcore imports the GPT-2, GPT-NeoX, Llama and Qwen3 "
                        "architectures (model_type gpt2, gpt_neox, llama, qwen3)")
    options = dict(_CLASSIC) if kind == "gpt2" else _modern_options(hf, cfg, where)
    if kind == "gpt2":
        _checked_options(hf, cfg, where)
    zero_biases = options.pop("zero_biases", False)
    base = _shape_config(hf, cfg, where, options)
    tok_config = _read_json(where / "tokenizer_config.json", "") if (where / "tokenizer_config.json").is_file() else {}
    if not (where / "tokenizer.json").is_file():
        raise CheckpointError(f"{where} has no tokenizer.json (a tokenizers JSON file; lmcore needs its vocabulary)")
    try:
        tokenizer = tokenizer_from_hf((where / "tokenizer.json").read_text(encoding="utf-8"), tok_config)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}/tokenizer.json: {e}") from None
    if hf.get("vocab_size") != tokenizer.vocab_size:
        raise CheckpointError(f"{where} has vocab_size {hf.get('vocab_size')!r}, its tokenizer {tokenizer.vocab_size} tokens")
    tensors = _read_tensors(where)
    if kind == "gpt2":
        params = lmcore_params(tensors, base.block_size)
    elif kind == "gpt_neox":
        params = lmcore_from_neox(tensors, base.n_head)
    else:
        params = lmcore_from_llama(tensors, base.n_layer)
    if not base.untied_head:
        params.pop("lm_head.weight", None)  # (the tied head, if a writer stored it anyway)
    expected = param_shapes(base, tokenizer.vocab_size)
    if zero_biases:  # the biases the model does not have (its config says so) start at zero
        for name, shape in expected.items():
            if name.endswith(".bias") and name not in params and ".ln_" not in name:
                params[name] = np.zeros(shape, dtype=np.float32)
    missing, extra = sorted(expected.keys() - params.keys()), sorted(params.keys() - expected.keys())
    if missing or extra:
        raise CheckpointError(f"{where}/model.safetensors does not fit its config: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if params[name].shape != shape:
            raise CheckpointError(f"{where}/model.safetensors: {name} is {list(params[name].shape)}, "
                             f"its config says {list(shape)}")
    return params, tokenizer, base
