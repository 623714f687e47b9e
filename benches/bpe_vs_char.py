"""Characters vs byte-level BPE at the same training compute: bits per character and speed.

Trains `python -m lmcore.train --small` on tinyshakespeare three times: `--tokenizer char` (65
symbols), `--tokenizer bpe --vocab-size 512` and `--vocab-size 2048`.  "Same compute" means the same
model (d_model 128, 4 heads, 2 layers, block 128) except the vocabulary (the tied embedding /
output layer has vocab x 128 weights), and the same steps x batch x block tokens (16 x 128 = 2,048
tokens a step, same recipe and seed).  A BPE token holds several characters, so at the same
number of tokens a BPE model sees more text; its bigger output layer also makes a token slower.

All three split the text at the same character (90%), so their validation text is the same and
val bits per character (`val_bpc` in metrics.jsonl: nats/token x tokens/chars of the validation
text / ln 2) compare.  Tokens/s is the trainer's mean `tok_s`; characters/s is tokens/s x the
training text's characters per token.  Tokenizers and token ids go to a temporary cache, so the
BPE is trained afresh (its time is not in the tokens/s).

Prints a table and one `JSON: {...}` line.
Run:  LMCORE_DATA_DIR=/path/to/data python benches/bpe_vs_char.py [--steps N] [--quick] [--threads N]
--quick: 100 steps and 10 eval batches per run, to check the bench works (1-2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmcore.data.corpus import split_index
from lmcore.config import PRESETS

SMALL = PRESETS["small"]
TOKENS_PER_STEP = SMALL["batch_size"] * SMALL["block_size"]
CONFIGS = [("char", None), ("bpe", 512), ("bpe", 2048)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(kind: str, vocab: int | None, steps: int, eval_iters: int, threads: int | None, root: Path,
        env: dict[str, str]) -> dict:
    out = root / (kind if vocab is None else f"{kind}{vocab}")
    cmd = [sys.executable, "-m", "lmcore.train", "--small", "--max-iters", str(steps), "--eval-interval", str(steps),
           "--eval-iters", str(eval_iters), "--seed", "1337", "--sample-tokens", "0", "--out-dir", str(out),
           "--tokenizer", kind, *(["--vocab-size", str(vocab)] if vocab else []),
           *(["--threads", str(threads)] if threads else [])]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"trainer exited with {done.returncode}:\n{done.stdout}")
    # The trainer's report: "data: NAME (1,115,394 chars, ...", "tokens: ...; 516,405 training and ...",
    # "model: 487,040 parameters, ..."
    number = lambda pattern: int(re.search(pattern, done.stdout)[1].replace(",", ""))  # noqa: E731
    train_chars = split_index(number(r"data: .*? \(([\d,]+) chars"))
    train_tokens, params = number(r"; ([\d,]+) training"), number(r"model: ([\d,]+) parameters")
    recs = read_jsonl(out / "metrics.jsonl")
    final = [r for r in recs if "val_bpc" in r][-1]
    tok_s = [r["tok_s"] for r in recs if isinstance(r.get("tok_s"), (int, float))]
    mean_tok_s = sum(tok_s) / len(tok_s)
    chars_per_token = train_chars / train_tokens
    return {"tokenizer": kind, "vocab": vocab or 65, "params": params, "chars_per_token": round(chars_per_token, 3),
            "val_loss": round(final["val_loss"], 4), "val_bpc": round(final["val_bpc"], 4),
            "tok_s": round(mean_tok_s), "char_s": round(mean_tok_s * chars_per_token),
            "chars_seen": round(steps * TOKENS_PER_STEP * chars_per_token), "wall_s": round(wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500, help="training steps per run (default 1500)")
    p.add_argument("--eval-iters", type=int, default=100, help="validation batches for the final val_bpc")
    p.add_argument("--quick", action="store_true", help="100 steps, 10 eval batches: check the bench runs")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads of the trainer (default: all cores)")
    args = p.parse_args()
    steps, eval_iters = (100, 10) if args.quick else (args.steps, args.eval_iters)
    root = Path(tempfile.mkdtemp(prefix="lmcore-bench-bpe-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
    results = [run(kind, vocab, steps, eval_iters, args.threads, root, env) for kind, vocab in CONFIGS]

    print(f"\n--small on tinyshakespeare, {steps} steps x {TOKENS_PER_STEP:,} tokens, val over {eval_iters} batches "
          f"(run dirs in {root})")
    print(f"{'tokenizer':<10} {'vocab':>6} {'params':>9} {'chars/tok':>9} {'val loss':>9} {'val bpc':>8} "
          f"{'tokens/s':>9} {'chars/s':>9} {'chars seen':>11} {'wall s':>7}")
    for r in results:
        print(f"{r['tokenizer']:<10} {r['vocab']:>6} {r['params']:>9,} {r['chars_per_token']:>9.2f} "
              f"{r['val_loss']:>9.4f} {r['val_bpc']:>8.4f} {r['tok_s']:>9,} {r['char_s']:>9,} "
              f"{r['chars_seen']:>11,} {r['wall_s']:>7.1f}")
    print("JSON: " + json.dumps({"steps": steps, "tokens_per_step": TOKENS_PER_STEP, "eval_iters": eval_iters,
                                 "threads": args.threads, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
