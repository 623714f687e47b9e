"""Serving speed: one stream's first-token latency and tokens/s, and the total tokens/s of 1, 4
and 8 concurrent streams, through ``python -m lmcore.serve`` over HTTP on 127.0.0.1 (issue 25);
then the engine alone, the same tokens without HTTP, one sequence per step and B rows in one
batched forward, to show what batching the concurrent sequences would pay.

    python benches/serve.py                   # the --small shape, window 256, one training step
    python benches/serve.py --out-dir out/x   # a trained model

Every stream asks for ``--tokens`` tokens of a completions prompt (a model with no end token, so
each reply runs to its length). The server runs ``--parallel 8`` one token each in turn; the bench's
clients share the machine's cores with it (on 2 cores that costs the server some). Figures from a
shared machine are noisy: medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import lmcore  # noqa: E402
from lmcore.checkpoint.state import find_checkpoint, model_from_checkpoint  # noqa: E402

sys.path.insert(0, str(ROOT / "benches"))
from lmcore.blas import cpu_name  # noqa: E402

PROMPT = "ROMEO:\nWhat say"


def make_model(args: argparse.Namespace) -> Path:
    if args.out_dir:
        return find_checkpoint(args.out_dir, None)
    out = Path(tempfile.mkdtemp(prefix="lmcore-serve-bench-"))
    subprocess.run([sys.executable, "-m", "lmcore.train", "--small", "--block-size", str(args.block_size), "--max-iters", "1",
                    "--eval-interval", "1", "--eval-iters", "1", "--sample-tokens", "0", "--out-dir", str(out)],
                   check=True, capture_output=True)
    return out / "ckpt.safetensors"


def start_server(ckpt: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    log = open(ckpt.parent / "serve.log", "w") if not args.out_dir else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "lmcore.serve", str(ckpt), "--port", "0", "--parallel", "8",
                             "--queue", "16", *(["--threads", str(args.threads)] if args.threads else [])], stdout=subprocess.PIPE, stderr=log, text=True)
    banner = proc.stdout.readline()
    port = re.search(r"127\.0\.0\.1:(\d+)", banner)
    if not port:
        proc.kill()
        sys.exit(f"the server did not start: {banner!r}")
    return proc, f"http://127.0.0.1:{port.group(1)}"


def one_stream(http: httpx.Client, tokens: int, seed: int) -> tuple[float, float, int]:
    """(seconds to the first token, tokens/s after it, tokens) of one streamed completion."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    with http.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                count = doc["usage"]["completion_tokens"]
            elif doc["choices"] and doc["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
    return first - start, (count - 1) / (last - first) if last > first else float("nan"), count


def concurrent(url: str, streams: int, tokens: int, per_stream: int) -> float:
    """Total completion tokens/s of ``streams`` clients, each sending ``per_stream`` streams in a row."""
    counts = [0] * streams

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for j in range(per_stream):
                counts[i] += one_stream(http, tokens, 1000 * i + j)[2]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def engine_alone(model: lmcore.Model, prompt: np.ndarray, tokens: int, rows: int, repeats: int) -> tuple[float, float]:
    """Tokens/s of the engine's cached decoding with no HTTP, by the wall clock and by this
    process's CPU time (less moved by other jobs on a shared machine): ``rows`` sequences in one
    batched forward per step (rows=1: one sequence, as each slot of the server is)."""
    prompt = np.tile(prompt.astype(np.int64), (rows, 1))
    wall, cpu = [], []
    for _ in range(repeats):
        model.kv_start(rows)
        model.kv_push(prompt)
        nxt = np.zeros(rows, np.int64)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(tokens - 1):
            model.kv_push(nxt)
        wall.append(rows * (tokens - 1) / (time.perf_counter() - start))
        cpu.append(rows * (tokens - 1) / (time.process_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu)


def batching(model: lmcore.Model, prompt: np.ndarray, args: argparse.Namespace, name: str) -> None:
    rates = {rows: engine_alone(model, prompt, args.tokens, rows, args.repeats) for rows in (1, 4, 8)}
    print(f"engine alone, {name} ({model.num_params:,} parameters), tokens/s by wall clock / by CPU time:")
    for rows, (wall, cpu) in rates.items():
        print(f"  {rows} row(s) per forward: {wall:.0f} / {cpu:.0f} ({wall / rates[1][0]:.2f}x / {cpu / rates[1][1]:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", help="a trained model (default: the --small shape after one step)")
    p.add_argument("--block-size", type=int, default=256, help="window of the default model (default %(default)s)")
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of each measurement (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="engine threads, of the server and here (default: all cores)")
    args = p.parse_args()
    if args.threads:
        lmcore.set_num_threads(args.threads)
    ckpt = make_model(args)
    model, tok, _, _ = model_from_checkpoint(ckpt, weights_only=True)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; engine threads {lmcore.num_threads()}; {lmcore.blas_info().line()}")
    print(f"model: {model.num_params:,} parameters, window {model.config['block_size']}; {args.tokens} tokens per stream")
    proc, url = start_server(ckpt, args)
    try:
        with httpx.Client(base_url=url, timeout=300) as http:
            one_stream(http, 20, 0)  # warm-up
            runs = [one_stream(http, args.tokens, i) for i in range(args.repeats)]
        print(f"one stream over HTTP: first token {statistics.median(r[0] for r in runs) * 1000:.1f} ms, "
              f"{statistics.median(r[1] for r in runs):.0f} tokens/s after it (medians of {args.repeats})")
        for streams in (1, 4, 8):
            rate = statistics.median(concurrent(url, streams, args.tokens, 2) for _ in range(max(1, args.repeats // 2)))
            print(f"{streams} concurrent stream(s): {rate:.0f} tokens/s in total, {rate / streams:.0f} per stream")
    finally:
        proc.terminate()
        proc.wait(30)
    prompt = tok.encode(PROMPT)
    batching(model, prompt, args, "the served model")
    medium = lmcore.Model(vocab_size=model.config["vocab_size"], d_model=256, n_head=8, n_layer=4,
                          block_size=int(model.config["block_size"]), seed=1)
    batching(medium, prompt, args, "the --medium shape")
    if not args.out_dir:
        shutil.rmtree(ckpt.parent, ignore_errors=True)

if __name__ == "__main__":
    main()
