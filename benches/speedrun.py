"""Speedrun: train several configurations to a target validation loss and compare their wall time.

Each configuration (``CONFIGS`` below: a name and the flags of ``python -m lmcore.train``) is trained
in a process of its own, one after another (never side by side: they would share the cores), in an
output directory of its own, with ``--eval-full`` (the whole validation split, so losses compare to
the third decimal) and ``--target-loss`` (the run stops at the first evaluation at or below it),
and ``--eval-interval`` if given; these come last, so they override a configuration's own. Then:

- one PNG: validation loss against wall seconds (``elapsed_s`` of metrics.jsonl: evaluations and
  checkpoints included) for every configuration, the target as a dashed line (``--log-x``: log x);
- a table: steps and seconds to reach the target (or "not reached" and the best validation loss),
  the run's seconds (its last ``elapsed_s``) and the process's wall seconds (start-up included);
  and a ``JSON: {...}`` line of the same;
- PyTorch's time to the target with the classic recipe: the classic run's steps to it times
  PyTorch's classic step, timed in the same invocation by benches/vs_pytorch.py (skipped without
  torch, or with --no-torch), and the speedrun's time as a fraction of it (issue 13: <= 0.25).

Run:  LMCORE_DATA_DIR=/path/to/data python benches/speedrun.py [--only NAME ...] [--target 1.55]
      [--eval-interval N] [--png speedrun.png] [--log-x] [--threads N] [--keep DIR] [--quick] [--no-torch]
--quick: every configuration for 20 steps on 32-token blocks of 4 rows of the first 100,000
characters of tinyshakespeare, an evaluation every 10 steps and a target of 3.9: checks that the
harness works (seconds for the classic recipe). --keep DIR must not hold these runs already (a run
refuses a directory with a checkpoint). Timings are only comparable between configurations run one
after another on the same quiet machine.
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
from typing import Any

from lmcore.blas import cpu_name
from lmcore.data.datasets import resolve_corpus
from lmcore.training.metrics import read_metrics

# The classic recipe: `--small` (128 wide, 2 layers, block 128, batch 16, cosine from 1e-3), its own
# 10,000 steps; it stops earlier at the target. Evaluated every 500 steps (each is a pass over the
# whole validation split, about a second here).
CLASSIC = ["--small", "--eval-interval", "500"]
# The speedrun preset (python/lmcore/config.py) and its ablations: each takes one part away (name,
# flags to remove, flags to add; see `ablations`), or, for QK-norm and the soft-cap, which the preset
# leaves out, adds it. Without Muon, every weight goes to AdamW at the
# classic recipe's learning rate and weight decay.
SPEEDRUN: list[str] | None = ["--speedrun"]
ABLATIONS: list[tuple[str, list[str], list[str]]] = [
    ("- muon (adamw)", [], ["--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.1"]),
    ("- rope (learned pos.)", [], ["--no-rope"]),
    ("- rmsnorm (layernorm)", [], ["--no-rmsnorm"]),
    ("+ qk-norm", [], ["--qk-norm"]),
    ("- swiglu (gelu)", [], ["--no-swiglu"]),
    ("relu2 for swiglu", [], ["--no-swiglu", "--relu2"]),
    ("- untied head", [], ["--no-untied-head"]),
    ("- zero init", [], ["--no-zero-init"]),
    ("+ soft-cap 15", [], ["--logit-softcap", "15"]),
    ("- wsd (cosine)", [], ["--schedule", "cosine", "--min-lr", "8e-4"]),
]


def ablations(base: list[str], changes: list[tuple[str, list[str], list[str]]]) -> dict[str, list[str]]:
    """One configuration per change: ``base`` without the flags named in ``remove`` (each with the
    values that follow it, up to the next ``--flag``) and with ``add`` appended (argparse takes the
    last of a repeated flag, so an added flag also overrides a value of the base's own preset).

    >>> ablations(["--speedrun", "--schedule", "wsd", "--lr", "3e-3"], [("cosine", ["--schedule"], [])])
    {'cosine': ['--speedrun', '--lr', '3e-3']}
    """
    configs = {}
    for name, remove, add in changes:
        missing = [flag for flag in remove if flag not in base]
        if missing:
            raise ValueError(f"ablation {name!r}: {missing} not in the base configuration {base}")
        kept, skipping = [], False
        for token in base:
            if token.startswith("--"):
                skipping = token in remove
            if not skipping:
                kept.append(token)
        configs[name] = [*kept, *add]
    return configs


CONFIGS: dict[str, list[str]] = {
    "classic": CLASSIC,
    **({"speedrun": SPEEDRUN} if SPEEDRUN else {}),
    **(ablations(SPEEDRUN, ABLATIONS) if SPEEDRUN else {}),
}

# --quick: a few steps of every configuration on short blocks of a short text (flags after a
# configuration's win).
QUICK = ["--max-iters", "20", "--lr-decay-iters", "20", "--warmup-iters", "5", "--block-size", "32",
         "--batch-size", "4", "--eval-iters", "5"]
QUICK_EVAL_INTERVAL, QUICK_TARGET, QUICK_CHARS = 10, 3.9, 100_000


def run(name: str, flags: list[str], out: Path, target: float, eval_interval: int | None,
        threads: int | None) -> dict[str, Any]:
    """Train one configuration in a child process; its results, read from its metrics.jsonl."""
    interval = [] if eval_interval is None else ["--eval-interval", str(eval_interval)]
    cmd = [sys.executable, "-m", "lmcore.train", *flags, "--eval-full", "--target-loss", repr(target),
           *interval, "--sample-tokens", "0", "--out-dir", str(out),
           *(["--threads", str(threads)] if threads else [])]
    print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    code = subprocess.run(cmd).returncode
    wall = time.perf_counter() - started
    records = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
    evals = [r for r in records if isinstance(r.get("val_loss"), (int, float))]
    reached = next((r for r in evals if r["val_loss"] <= target), None)
    return {
        "name": name, "flags": flags, "exit": code,
        "curve": [(r["elapsed_s"], r["val_loss"]) for r in evals],
        "reached_step": reached["step"] if reached else None,
        "reached_s": reached["elapsed_s"] if reached else None,
        "best_val_loss": min((r["val_loss"] for r in evals), default=None),
        "steps": records[-1]["step"] if records else 0,
        "run_s": records[-1]["elapsed_s"] if records else None,
        "wall_s": wall,
    }


def plot(results: list[dict[str, Any]], target: float, png: Path, log_x: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    for r in results:
        if r["curve"]:
            seconds, losses = zip(*r["curve"])
            ax.plot(seconds, losses, marker="o", markersize=3, linewidth=1.5, label=r["name"])
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 30, not 3 x 10^1
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("wall seconds (elapsed_s: evaluations and checkpoints included)")
    ax.set_ylabel("validation loss, whole split (nats/token)")
    ax.set_title("lmcore speedrun: validation loss against wall time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def table(results: list[dict[str, Any]], target: float) -> str:
    lines = [f"target val loss {target:g} (whole validation split); {cpu_name()}, load {os.getloadavg()[0]:.1f}",
             f"{'configuration':<24} {'steps to target':>15} {'s to target':>11} {'best val':>9} "
             f"{'steps':>6} {'run s':>8} {'wall s':>8}"]
    for r in results:
        if r["exit"] != 0:
            status = f"{'failed (exit ' + str(r['exit']) + ')':>27}"
        elif r["reached_step"] is None:
            status = f"{'not reached':>15} {'':>11}"
        else:
            status = f"{r['reached_step']:>15,} {r['reached_s']:>11.1f}"
        best = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "-"
        run_s = f"{r['run_s']:.1f}" if r["run_s"] is not None else "-"
        lines.append(f"{r['name']:<24} {status} {best:>9} {r['steps']:>6,} {run_s:>8} {r['wall_s']:>8.1f}")
    return "\n".join(lines)


def torch_classic_step(threads: int | None) -> dict[str, float] | None:
    """PyTorch's and lmcore's ms per step of the classic `--small` recipe, measured together by
    benches/vs_pytorch.py (same model, batches and initial weights: the two compute the same losses
    to about 1e-6, so PyTorch needs as many steps to the target as lmcore's classic run); None
    without torch."""
    cmd = [sys.executable, str(Path(__file__).with_name("vs_pytorch.py")), "--small", "--warmup", "10", "--steps", "100"]
    print(f"\n=== PyTorch's classic step\n$ {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("JSON: ")), None)
    small = json.loads(line[len("JSON: "):]).get("small", {}) if line else {}
    if "torch" not in small:
        print("PyTorch not measured (is torch installed? pip install -r benches/requirements.txt)")
        return None
    return {"torch_step_ms": small["torch"]["step_ms"], "lmcore_step_ms": small["lmcore"]["step_ms"]}


def against_torch(results: list[dict[str, Any]], torch: dict[str, float]) -> str:
    """The issue's yardstick: PyTorch's time to the target with the classic recipe (the classic
    run's steps to it at PyTorch's step time), against the speedrun's."""
    classic = next((r for r in results if r["name"] == "classic"), None)
    fast = next((r for r in results if r["name"] == "speedrun"), None)
    if classic is None or classic["reached_step"] is None:
        steps, how = 10_000, "10,000 steps (assumed: the classic run did not reach the target here)"
    else:
        steps, how = classic["reached_step"], f"{classic['reached_step']:,} steps (the classic run's)"
    torch_s = steps * torch["torch_step_ms"] / 1e3
    line = (f"PyTorch, classic recipe, to the target: {how} x {torch['torch_step_ms']:.1f} ms/step "
            f"= {torch_s:.0f} s (lmcore's classic step in the same measurement: {torch['lmcore_step_ms']:.1f} ms)")
    if fast is not None and fast["reached_s"] is not None:
        line += f"\nspeedrun: {fast['reached_s']:.1f} s = {fast['reached_s'] / torch_s:.3f} of it (goal <= 0.25)"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(CONFIGS),
                   help=f"run these configurations only (of: {', '.join(CONFIGS)})")
    p.add_argument("--target", type=float, default=1.55, help="target validation loss (default %(default)s)")
    p.add_argument("--eval-interval", type=int, default=None,
                   help="steps between evaluations (default: each configuration's own)")
    p.add_argument("--png", type=Path, default=Path("speedrun.png"), help="the plot (default %(default)s)")
    p.add_argument("--log-x", action="store_true", help="log-scale wall seconds")
    p.add_argument("--threads", type=int, default=None, help="engine threads of each run (default: all cores)")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs' output directories under DIR")
    p.add_argument("--quick", action="store_true", help="20 steps of each, target 3.9: check the harness works")
    p.add_argument("--no-torch", action="store_true", help="skip timing PyTorch's classic step")
    args = p.parse_args(argv)
    target, interval = (QUICK_TARGET, QUICK_EVAL_INTERVAL) if args.quick else (args.target, args.eval_interval)
    chosen = {name: CONFIGS[name] for name in (args.only or CONFIGS)}

    with tempfile.TemporaryDirectory(prefix="lmcore-speedrun-") as tmp:
        root = args.keep or Path(tmp)
        quick = []
        if args.quick:
            text = resolve_corpus().text[:QUICK_CHARS]
            (root / "quick.txt").parent.mkdir(parents=True, exist_ok=True)
            (root / "quick.txt").write_text(text, encoding="utf-8")
            quick = [*QUICK, "--data", str(root / "quick.txt")]
        results = []
        for i, (name, flags) in enumerate(chosen.items()):
            out = root / f"{i:02d}-{re.sub(r'[^A-Za-z0-9.-]+', '-', name)}"
            results.append(run(name, [*flags, *quick], out, target, interval, args.threads))
    torch = None if args.quick or args.no_torch else torch_classic_step(args.threads)
    plot(results, target, args.png, args.log_x)
    print("\n" + table(results, target))
    if torch is not None:
        print(against_torch(results, torch))
    print(f"plot: {args.png}")
    print("JSON: " + json.dumps({"target": target, "eval_interval": interval, "quick": args.quick, "torch": torch,
                                 "results": [{k: v for k, v in r.items() if k != "curve"} for r in results]}))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
