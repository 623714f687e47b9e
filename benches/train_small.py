"""The issue's numbers: quality, speed and memory of a full `--small` training run.

Runs `python -m lmcore.train --small --max-iters N --seed 1337 --out-dir DIR` as a child
process, samples the child's VmRSS/VmHWM from /proc/<pid>/status every ~0.5 s and reads its
metrics.jsonl (`rss_mb` per log line, `val_loss` on eval steps, `tok_s`).  Prints a table,
PASS/FAIL against the targets (reported, not asserted) and one `JSON: {...}` line:

    final/best val loss        target: final val loss <= 1.56
    wall time, mean tokens/s
    peak RSS (max VmHWM)       target: <= 130 MB
    RSS drift                  target: |RSS(step N) - RSS(step 1000)| <= 5 MB (rss_mb in metrics.jsonl)
    the sample the trainer prints at the end

Run:  LMCORE_DATA_DIR=/path/to/data python benches/train_small.py [--max-iters N] [--quick]
The full run (10,000 steps) takes a while (tens of minutes or more on a small CPU);
--quick trains 300 steps to check that the bench works (its numbers meet no target).
Linux only (/proc).  With fewer than 2,000 steps the drift reference is step N/2, not 1000.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_VAL, TARGET_PEAK_MB, TARGET_DRIFT_MB, REF_STEP = 1.56, 130.0, 5.0, 1000


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS/VmHWM of a live process in MiB ({} once it has exited)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    except (OSError, ValueError):
        pass
    return out


def read_jsonl(path: Path) -> list[dict]:
    recs = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


def rss_at(recs: list[dict], step: int) -> tuple[int, float] | None:
    """(step, rss_mb) of the first log record at or after ``step``."""
    for r in recs:
        if isinstance(r.get("rss_mb"), (int, float)) and r.get("step", -1) >= step:
            return r["step"], r["rss_mb"]
    return None


def run_sampled(cmd: list[str], out_dir: Path, interval: float) -> tuple[int, str, list[tuple[float, float]], float]:
    """Run the trainer command, sampling its (VmRSS, VmHWM) every `interval` s; its stdout is kept in
    out_dir/train.stdout.txt (progress, on stderr, goes to the terminal). Returns the exit code, the
    stdout text, the samples and the wall time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    with open(out_dir / "train.stdout.txt", "w+", encoding="utf-8") as stdout:
        child = subprocess.Popen(cmd, stdout=stdout)
        while child.poll() is None:
            st = proc_status_mb(child.pid)
            if st:
                samples.append((st.get("VmRSS", 0.0), st.get("VmHWM", 0.0)))
            time.sleep(interval)
        wall = time.perf_counter() - t0
        stdout.seek(0)
        return child.returncode, stdout.read(), samples, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-iters", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="300 steps: check the bench runs")
    p.add_argument("--out-dir", default=None, help="run directory (default: a fresh temp dir, kept)")
    p.add_argument("--interval", type=float, default=0.5, help="RSS sampling period, seconds")
    args = p.parse_args()
    n = 300 if args.quick else args.max_iters
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="lmcore-bench-small-"))
    cmd = [sys.executable, "-m", "lmcore.train", "--small", "--max-iters", str(n), "--seed", "1337",
           "--out-dir", str(out_dir)]
    print("$ " + " ".join(cmd), flush=True)

    code, text, samples, wall = run_sampled(cmd, out_dir, args.interval)
    if code != 0:
        print(text, f"\ntrainer exited with {code}", file=sys.stderr)
        return 1
    sample = text.split("--- sample ---", 1)[1].strip("\n") if "--- sample ---" in text else ""

    recs = read_jsonl(out_dir / "metrics.jsonl")
    vals = [r["val_loss"] for r in recs if isinstance(r.get("val_loss"), (int, float))]
    toks = [r["tok_s"] for r in recs if isinstance(r.get("tok_s"), (int, float))]
    rss_log = [r["rss_mb"] for r in recs if isinstance(r.get("rss_mb"), (int, float))]
    peak = max([hwm for _, hwm in samples] + rss_log, default=float("nan"))
    ref = rss_at(recs, REF_STEP if n >= 2 * REF_STEP else n // 2)
    last = next(((r["step"], r["rss_mb"]) for r in reversed(recs) if isinstance(r.get("rss_mb"), (int, float))), None)
    drift = last[1] - ref[1] if ref and last else None
    res = {
        "max_iters": n, "final_val_loss": vals[-1] if vals else None, "best_val_loss": min(vals, default=None),
        "wall_s": round(wall, 1), "mean_tok_s": round(sum(toks) / len(toks), 1) if toks else None,
        "peak_rss_mb": round(peak, 1), "rss_samples": len(samples),
        "rss_ref_step": ref[0] if ref else None, "rss_ref_mb": round(ref[1], 1) if ref else None,
        "rss_last_step": last[0] if last else None, "rss_last_mb": round(last[1], 1) if last else None,
        "rss_drift_mb": round(drift, 2) if drift is not None else None,
        "out_dir": str(out_dir), "sample": sample,
    }

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    checks = {
        "val loss": verdict(None if not vals else vals[-1] <= TARGET_VAL),
        "peak RSS": verdict(None if not samples else peak <= TARGET_PEAK_MB),
        "RSS drift": verdict(None if drift is None else abs(drift) <= TARGET_DRIFT_MB),
    }
    res["checks"] = checks
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [
        ("final val loss", fmt(res["final_val_loss"], ".4f"), f"<= {TARGET_VAL}", checks["val loss"]),
        ("best val loss", fmt(res["best_val_loss"], ".4f"), "", ""),
        ("wall time", f"{wall:.1f} s", "", ""),
        ("mean tokens/s", fmt(res["mean_tok_s"], ",.0f"), "", ""),
        ("peak RSS (VmHWM)", f"{peak:.1f} MB", f"<= {TARGET_PEAK_MB:.0f} MB", checks["peak RSS"]),
        (f"RSS @ step {res['rss_ref_step']}", fmt(res["rss_ref_mb"], ".1f") + " MB", "", ""),
        (f"RSS @ step {res['rss_last_step']}", fmt(res["rss_last_mb"], ".1f") + " MB", "", ""),
        ("RSS drift", fmt(drift, "+.2f") + " MB", f"|d| <= {TARGET_DRIFT_MB:.0f} MB", checks["RSS drift"]),
    ]
    print(f"\nlmcore --small, {n} steps, seed 1337 (run dir {out_dir})")
    for name, value, target, ok in rows:
        print(f"  {name:<20} {value:>14}   {target:<16} {ok}")
    print("--- sample ---\n" + sample)
    print("JSON: " + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
