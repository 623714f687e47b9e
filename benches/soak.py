"""Soak: memory stays flat over a long run. Not run in CI.

Runs `python -m lmcore.train --small --max-iters 50000 --log-interval 1000 ...` as a child process
(through train_small.py's `run_sampled`, which also samples the child's VmRSS/VmHWM every few
seconds) and reads, from its metrics.jsonl, `rss_mb` and `arena_mb` (the arena's high-water mark)
every `--every` steps. Checkpoints are written every `--every` steps and the model is evaluated
every 5 x `--every`, so those paths soak too. Prints one row per sample, PASS/FAIL against the
targets (reported, not asserted) and one `JSON: {...}` line:

    RSS max - min over the samples after step --after (1,000)      target: <= 5 MB
    arena high-water mark                                          target: the same at every sample

The sample at step --after itself is left out: it is logged just before the run's first
checkpoint write, which loads the checkpoint code and its buffers once (about 14 MB here).

Run:  LMCORE_DATA_DIR=/path/to/data python benches/soak.py               # --small, 50,000 steps
      LMCORE_DATA_DIR=/path/to/data python benches/soak.py --tiny --steps 2000 --every 100
The full soak takes hours on a small CPU (about 90 ms a step on 2 cores). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from train_small import read_jsonl, run_sampled

TARGET_RSS_SPREAD_MB = 5.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--small", dest="preset", action="store_const", const="small", help="(default)")
    preset.add_argument("--tiny", dest="preset", action="store_const", const="tiny", help="quick check of the bench")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--every", type=int, default=1000, help="sample RSS and the arena every N steps")
    p.add_argument("--after", type=int, default=1000, help="RSS spread over the samples after this step")
    p.add_argument("--out-dir", default=None, help="run directory (default: a fresh temp dir, kept)")
    p.add_argument("--interval", type=float, default=5.0, help="VmRSS sampling period, seconds")
    args = p.parse_args()
    preset = args.preset or "small"
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix=f"lmcore-soak-{preset}-"))
    cmd = [sys.executable, "-m", "lmcore.train", f"--{preset}", "--max-iters", str(args.steps), "--seed", "1337",
           "--log-interval", str(args.every), "--ckpt-interval", str(args.every),
           "--eval-interval", str(5 * args.every), "--sample-tokens", "0", "--out-dir", str(out_dir)]
    print("$ " + " ".join(cmd), flush=True)
    code, text, vm, wall = run_sampled(cmd, out_dir, args.interval)
    if code != 0:
        print(text, f"\ntrainer exited with {code}", file=sys.stderr)
        return 1

    rows = [(r["step"], r["rss_mb"], r["arena_mb"]) for r in read_jsonl(out_dir / "metrics.jsonl")
            if r.get("step", 0) > 0 and r["step"] % args.every == 0 and "arena_mb" in r]
    late = [rss for step, rss, _ in rows if step > args.after]
    spread = max(late) - min(late) if late else None
    arenas = sorted({arena for _, _, arena in rows})
    res = {
        "preset": preset, "steps": args.steps, "every": args.every, "after": args.after, "wall_s": round(wall, 1),
        "samples": len(rows), "rss_min_mb": round(min(late), 2) if late else None,
        "rss_max_mb": round(max(late), 2) if late else None,
        "rss_spread_mb": round(spread, 2) if spread is not None else None,
        "arena_mb": arenas, "peak_vmhwm_mb": round(max((h for _, h in vm), default=0.0), 1),
        "out_dir": str(out_dir),
    }
    res["checks"] = {
        "RSS spread": "n/a" if spread is None else ("PASS" if spread <= TARGET_RSS_SPREAD_MB else "FAIL"),
        "arena constant": "n/a" if not arenas else ("PASS" if len(arenas) == 1 else "FAIL"),
    }

    print(f"\nlmcore --{preset} soak, {args.steps} steps (run dir {out_dir}), wall {wall:.0f} s")
    print(f"  {'step':>7} {'RSS MB':>9} {'arena MB':>9}")
    for step, rss, arena in rows:
        print(f"  {step:>7} {rss:>9.2f} {arena:>9.2f}")
    print(f"  RSS max - min after step {args.after}: {res['rss_spread_mb']} MB "
          f"(target <= {TARGET_RSS_SPREAD_MB:.0f} MB) {res['checks']['RSS spread']}")
    print(f"  arena high-water mark: {', '.join(f'{a:.2f}' for a in arenas)} MB (target: one value) "
          f"{res['checks']['arena constant']}")
    print(f"  peak VmHWM: {res['peak_vmhwm_mb']} MB")
    print("JSON: " + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
