"""``python -m lmcore.generate``: write text from a trained model, streaming it as it comes.

    python -m lmcore.generate --out-dir out/small --prompt "ROMEO:" --max-new-tokens 500
"""

from __future__ import annotations

import argparse
import sys

import lmcore
from lmcore.checkpoint.file import CheckpointError
from lmcore.cli import use_threads
from lmcore.checkpoint.state import find_checkpoint, model_from_checkpoint
from lmcore.inference.sampling import generate, validate_sampling


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.generate", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", help="a training output directory (uses its checkpoint)")
    p.add_argument("--checkpoint", help="a checkpoint file (instead of --out-dir)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to write per sample (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 means greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens only (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample among the most likely tokens whose probabilities sum to P, in (0, 1] (default: all)")
    p.add_argument("--num-samples", type=int, default=1, help="samples to write, one after another (default %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the first sample; sample i uses seed + i (default %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="engine threads (default: the cores this process may use; more are capped to them)")
    p.add_argument("--no-cache", action="store_true", help="recompute the window for every token (slow; for checking)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.top_k is not None and args.top_k > 1 << 31:  # more than any vocabulary: all tokens, as asked
            args.top_k = 1 << 31
        validate_sampling(args.temperature, args.top_k, args.top_p)
        if args.max_new_tokens < 0 or args.num_samples < 1:
            raise ValueError("--max-new-tokens must be >= 0 and --num-samples >= 1")
        use_threads(args.threads)
        path = find_checkpoint(args.out_dir, args.checkpoint)
        model, tokenizer, _, _ = model_from_checkpoint(path, weights_only=True)
        prompt = tokenizer.encode(args.prompt)
        if len(prompt) == 0:
            raise ValueError("the prompt must not be empty")
        for i in range(args.num_samples):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            sys.stdout.write(args.prompt)
            feed = tokenizer.stream_decoder()  # (a BPE token may hold part of a character)

            def stream(ids):
                sys.stdout.write(feed(ids[:1]))
                sys.stdout.flush()

            generate(model, prompt[None, :], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, seed=args.seed + i, use_cache=not args.no_cache, on_token=stream)
            sys.stdout.write(feed([], final=True) + "\n")
    except (CheckpointError, ValueError, lmcore.LmcoreError, MemoryError, OverflowError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
