"""``python -m lmcore.export``: a trained model for other tools.

    python -m lmcore.export --out-dir out/small --to hf EXPORT_DIR    # transformers (GPT-2, GPT-NeoX, Llama or Qwen3)
    python -m lmcore.export --out-dir out/small --to gguf model.gguf  # llama.cpp (the same four)

``--to hf`` writes a directory that ``transformers`` loads with no custom code and no network:
``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json`` and
``tokenizer_config.json`` (``hf_format.py``, ``hf_neox.py`` for ``--rope``, ``hf_llama.py`` for
``--rope --rmsnorm --swiglu``, ``hf_tokenizer.py``). ``--to gguf`` writes one GGUF
file (``gguf_format.py``; needs PyPI's ``gguf``). A model whose options the format cannot express
is refused with a one-line message naming the option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import lmcore
from lmcore.atomic import atomic_write_bytes
from lmcore.checkpoint import CheckpointError
from lmcore.config import RunConfig
from lmcore.hf_format import ExportError, generation_config, hf_model
from lmcore.hf_tokenizer import eos_token_id, hf_tokenizer, tokenizer_config
from lmcore.run_state import find_checkpoint, model_from_checkpoint
from lmcore.tokenizer import Tokenizer

FORMATS = ("hf", "gguf")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.export", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", help="a training output directory (uses its checkpoint)")
    p.add_argument("--checkpoint", help="a checkpoint file (instead of --out-dir)")
    p.add_argument("--to", choices=FORMATS, required=True,
                   help="hf: a transformers model directory; gguf: a llama.cpp GGUF file")
    p.add_argument("dest", help="the directory (hf) or file (gguf) to write")
    return p


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_hf(dest: Path, cfg: RunConfig, tok: Tokenizer, params: dict[str, np.ndarray]) -> None:
    """The transformers directory of a GPT-2, GPT-NeoX, Llama or Qwen3 model (``hf_format.architecture``);
    anything else is refused before a file is written."""
    import safetensors.numpy

    eos = eos_token_id(tok)
    config, tensors = hf_model(cfg, params, tok.vocab_size, eos)
    hf_tok = hf_tokenizer(tok)  # (it may refuse the vocabulary)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest / "config.json", _json_bytes(config))
    atomic_write_bytes(dest / "generation_config.json", _json_bytes(generation_config(eos)))
    atomic_write_bytes(dest / "model.safetensors", safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    write_hf_tokenizer(dest, tok, cfg.block_size, hf_tok)


def write_hf_tokenizer(dest: Path, tok: Tokenizer, max_length: int, hf_tok: Any = None) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json``: what ``AutoTokenizer`` loads."""
    dest.mkdir(parents=True, exist_ok=True)
    hf_tok = hf_tok or hf_tokenizer(tok)
    atomic_write_bytes(dest / "tokenizer.json", hf_tok.to_str(pretty=True).encode("utf-8"))
    atomic_write_bytes(dest / "tokenizer_config.json", _json_bytes(tokenizer_config(tok, max_length)))


def export(checkpoint: Path, to: str, dest: Path) -> None:
    """Export the model of ``checkpoint`` as format ``to`` to ``dest``."""
    model, tok, cfg, _ = model_from_checkpoint(checkpoint, weights_only=True)
    params = {name: model.get_param(name) for name in model.param_names()}
    if to == "hf":
        write_hf(dest, cfg, tok, params)
    else:
        from lmcore.gguf_format import check_gguf, write_gguf

        check_gguf(cfg)
        try:
            import gguf  # noqa: F401 (only checked here: a clear message instead of a traceback)
        except ImportError:
            raise ExportError("--to gguf needs the gguf package: pip install gguf") from None
        if dest.is_dir():
            raise ExportError(f"--to gguf writes one file, but {dest} is a directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_gguf(dest, cfg, tok, params, name=checkpoint.parent.name or "lmcore")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        path = find_checkpoint(args.out_dir, args.checkpoint)
        export(path, args.to, Path(args.dest))
    except (CheckpointError, ExportError, ValueError, lmcore.LmcoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} to {args.dest} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
