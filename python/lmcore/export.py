"""``python -m lmcore.export``: a trained model for other tools.

    python -m lmcore.export --out-dir out/small --to hf EXPORT_DIR    # transformers (GPT-2, GPT-NeoX, Llama or Qwen3)
    python -m lmcore.export --out-dir out/small --to gguf model.gguf  # llama.cpp (the same four)

``--to hf`` writes a directory that ``transformers`` loads with no custom code and no network,
``--to gguf`` one GGUF file for llama.cpp (``lmcore/interop/writer.py``). A model whose options the
format cannot express is refused with a one-line message naming the option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmcore.checkpoint.state import find_checkpoint
from lmcore.cli import REPORTED_ERRORS, add_checkpoint_flags, report
from lmcore.interop.writer import FORMATS, export


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.export", description=__doc__.split("\n")[0])
    add_checkpoint_flags(p)
    p.add_argument("--to", choices=FORMATS, required=True,
                   help="hf: a transformers model directory; gguf: a llama.cpp GGUF file")
    p.add_argument("dest", help="the directory (hf) or file (gguf) to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        path = find_checkpoint(args.out_dir, args.checkpoint)
        export(path, args.to, Path(args.dest))
    except REPORTED_ERRORS as e:
        return report(e)
    print(f"exported {path} to {args.dest} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
