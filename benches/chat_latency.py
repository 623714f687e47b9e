"""Chat latency: time to the first token of each reply and the reply's tokens/s, with the
conversation's key/value cache kept across turns (``python -m lmcore.chat``) versus re-feeding the
whole conversation at every turn (``--no-cache``), at turns 1, 5 and 10 (issue 14, item 7).

    python benches/chat_latency.py                       # the small shape, random weights, window 1024
    python benches/chat_latency.py --out-dir out/chat    # a fine-tuned chat model (its own window)

Both ways sample the same tokens (same seed): each turn sends the same message and every reply is
exactly ``--reply-tokens`` long (the bench ignores <|end|>), so the two differ only in what is fed
before the first token: the new turn alone, or the whole conversation. With a window too small
for ten turns the oldest exchanges are dropped and the cache is rebuilt at those turns in both
ways. Each conversation runs ``--repeats`` times, the two ways interleaved; the table gives
medians. Timings from a shared machine are noisy: compare the columns with each other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import lmcore  # noqa: E402
from lmcore.blas import cpu_name  # noqa: E402
from lmcore.checkpoint.state import find_checkpoint, model_from_checkpoint  # noqa: E402
from lmcore.conversation.template import add_chat_tokens  # noqa: E402
from lmcore.inference.chat_session import ChatSession  # noqa: E402
from lmcore.tokenizer.char import CharTokenizer  # noqa: E402

MESSAGE = "Good morrow, friend; what news from the court?"  # 46 characters
SHOWN = (1, 5, 10)
SYSTEM = "A scene at court. You are a courtier."


def build(args: argparse.Namespace) -> tuple[lmcore.Model, object]:
    if args.out_dir:
        model, tok, _, _ = model_from_checkpoint(find_checkpoint(args.out_dir, None), weights_only=True)
        return model, tok
    tok = add_chat_tokens(CharTokenizer.from_text(MESSAGE + SYSTEM + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"))
    model = lmcore.Model(vocab_size=tok.vocab_size, d_model=128, n_head=4, n_layer=2, block_size=args.block_size,
                         seed=1)
    return model, tok


def conversation(model: lmcore.Model, tok: object, args: argparse.Namespace, keep_cache: bool) -> list[tuple[float, float, int]]:
    """(seconds to the first token, reply tokens/s after it, tokens fed) for each turn."""
    s = ChatSession(model, tok, SYSTEM, temperature=1.0, seed=3,  # type: ignore[arg-type]
                    max_new_tokens=args.reply_tokens, keep_cache=keep_cache, stop_at_end=False)
    rows = []
    for _ in range(args.turns):
        r = s.reply(MESSAGE)
        rows.append((r.first_token_s, (len(r.ids) - 1) / max(r.total_s - r.first_token_s, 1e-9), r.fed))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", help="a chat model's training directory (default: the small shape, random weights)")
    p.add_argument("--block-size", type=int, default=1024, help="window of the random model (default %(default)s)")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--reply-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        lmcore.set_num_threads(args.threads)
    model, tok = build(args)
    runs: dict[bool, list[list[tuple[float, float, int]]]] = {True: [], False: []}
    conversation(model, tok, args, True)  # warm-up
    for _ in range(args.repeats):
        for keep in (True, False):
            runs[keep].append(conversation(model, tok, args, keep))

    def median(keep: bool, turn: int, field: int) -> float:
        return statistics.median(run[turn - 1][field] for run in runs[keep])

    print(f"chat latency: {model.num_params:,} parameters, window {model.config['block_size']}, "
          f"{args.reply_tokens}-token replies to a {len(tok.encode(MESSAGE))}-token message; "  # type: ignore[attr-defined]
          f"{cpu_name()}, {lmcore.num_threads()} threads, load {os.getloadavg()[0]:.1f}; "
          f"medians of {args.repeats}")
    print("| turn | tokens fed, kept / re-fed | first token ms, kept | re-fed | ratio | tokens/s, kept | re-fed |")
    print("|---|---|---|---|---|---|---|")
    for turn in SHOWN:
        if turn > args.turns:
            continue
        k_first, r_first = median(True, turn, 0) * 1e3, median(False, turn, 0) * 1e3
        print(f"| {turn} | {int(median(True, turn, 2))} / {int(median(False, turn, 2))} | {k_first:.2f} | "
              f"{r_first:.2f} | {r_first / k_first:.1f}x | {median(True, turn, 1):,.0f} | {median(False, turn, 1):,.0f} |")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
