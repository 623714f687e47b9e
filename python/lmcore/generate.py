"""``python -m lmcore.generate``: write text from a trained model, streaming it as it comes.

    python -m lmcore.generate --out-dir out/small --prompt "ROMEO:" --max-new-tokens 500
"""

from __future__ import annotations

import argparse
import sys

from lmcore import cli
from lmcore.checkpoint.state import find_checkpoint, model_from_checkpoint
from lmcore.inference.sampling import generate, validate_sampling


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.generate", description=__doc__.split("\n")[0])
    cli.add_checkpoint_flags(p)
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to write per sample (default %(default)s)")
    cli.add_sampling_flags(p)
    p.add_argument("--num-samples", type=int, default=1, help="samples to write, one after another (default %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the first sample; sample i uses seed + i (default %(default)s)")
    cli.add_threads_flag(p)
    p.add_argument("--no-cache", action="store_true", help="recompute the window for every token (slow; for checking)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = cli.sampling(args)
        validate_sampling(**settings)
        if args.max_new_tokens < 0 or args.num_samples < 1:
            raise ValueError("--max-new-tokens must be >= 0 and --num-samples >= 1")
        cli.use_threads(args.threads)
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

            generate(model, prompt[None, :], args.max_new_tokens, **settings, seed=args.seed + i,
                     use_cache=not args.no_cache, on_token=stream)
            sys.stdout.write(feed([], final=True) + "\n")
    except cli.REPORTED_ERRORS as e:
        return cli.report(e)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
