"""A Hugging Face GPT-2-architecture directory as the start of an lmcore run (``--init-from DIR``).

The directory holds ``config.json`` (``model_type`` gpt2), ``model.safetensors`` (never a pickle:
loading must not run code) and ``tokenizer.json`` (a byte-level BPE, or lmcore's char vocabulary
as ``writer.py`` writes it). Everything lmcore does not implement is refused with a one-line
``CheckpointError`` naming it (``training/run.py`` adds that ``--init-from`` asked): another
architecture, another activation or LayerNorm epsilon, an MLP not 4x wide, cross-attention, a run
whose shape differs from the model's.
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
from lmcore.interop.hf_tokenizer import tokenizer_from_hf
from lmcore.tokenizer import Tokenizer

# Two names of the tanh approximation of GELU that lmcore's MLP computes.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


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


def _checked_options(hf: dict[str, Any], cfg: RunConfig, where: Path) -> None:
    """Refuse what GPT2LMHeadModel may hold but lmcore's block does not compute."""
    def refuse(what: str) -> None:
        raise CheckpointError(f"{where} {what}")

    if hf.get("model_type") != "gpt2":
        refuse(f"is a {str(hf.get('model_type'))[:40]!r} model; lmcore imports the GPT-2 architecture (model_type gpt2)")
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
    if cfg.rope or cfg.rmsnorm or cfg.qk_norm or cfg.logit_softcap:
        refuse("is a GPT-2 model: it has no --rope, --rmsnorm, --qk-norm or --logit-softcap")


def _shape_config(hf: dict[str, Any], cfg: RunConfig, where: Path) -> RunConfig:
    """The model's shape as a RunConfig (the run's recipe otherwise); the run may use fewer positions."""
    keys = {"n_embd": "d_model", "n_head": "n_head", "n_layer": "n_layer", "n_positions": "block_size"}
    shape = {}
    for hf_key, ours in keys.items():
        value = hf.get(hf_key)
        if type(value) is not int or value < 1:
            raise CheckpointError(f"{where}/config.json has no valid {hf_key} ({str(value)[:20]})")
        shape[ours] = value
    if cfg.block_size > shape["block_size"]:
        raise CheckpointError(f"{where} has {shape['block_size']} positions, fewer than --block-size {cfg.block_size}")
    shape["block_size"] = cfg.block_size  # (the position table is cut to the run's block)
    return RunConfig.from_dict({**cfg.to_dict(), **shape, "untied_head": not hf.get("tie_word_embeddings", True)})


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
    _checked_options(hf, cfg, where)
    base = _shape_config(hf, cfg, where)
    tok_config = _read_json(where / "tokenizer_config.json", "") if (where / "tokenizer_config.json").is_file() else {}
    if not (where / "tokenizer.json").is_file():
        raise CheckpointError(f"{where} has no tokenizer.json (a tokenizers JSON file; lmcore needs its vocabulary)")
    try:
        tokenizer = tokenizer_from_hf((where / "tokenizer.json").read_text(encoding="utf-8"), tok_config)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{where}/tokenizer.json: {e}") from None
    if hf.get("vocab_size") != tokenizer.vocab_size:
        raise CheckpointError(f"{where} has vocab_size {hf.get('vocab_size')!r}, its tokenizer {tokenizer.vocab_size} tokens")
    params = lmcore_params(_read_tensors(where), base.block_size)
    if not base.untied_head:
        params.pop("lm_head.weight", None)  # (the tied head, if a writer stored it anyway)
    expected = param_shapes(base, tokenizer.vocab_size)
    missing, extra = sorted(expected.keys() - params.keys()), sorted(params.keys() - expected.keys())
    if missing or extra:
        raise CheckpointError(f"{where}/model.safetensors does not fit its config: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if params[name].shape != shape:
            raise CheckpointError(f"{where}/model.safetensors: {name} is {list(params[name].shape)}, "
                             f"its config says {list(shape)}")
    return params, tokenizer, base
