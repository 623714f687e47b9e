"""lmcore.matmul against numpy's ``@`` on the small model's GEMM shapes, in one process.

Measures, for every GEMM of the small model (d_model 128, 4 heads, 2 layers, block 128, batch 16,
vocab 65, so N = B*T = 2048 rows: each linear layer's forward Y = X W^T and backward dX = dY W,
dW = dY^T X, one per-head attention GEMM, and a 1024^3 square as a reference point):
float32 GFLOP/s of ``lmcore.matmul`` (with the transpose flags) and of numpy ``@`` (on ``.T``
views) on the same arrays, both with the same number of threads (lmcore's own threads, each
running single-threaded BLAS; numpy's OpenBLAS threads), median of repetitions after warm-up,
and their ratio. Also times the small model's full ``Model.train_step`` from Python.
Prints a table and one ``JSON: `` line; it asserts nothing about speed.

lmcore.matmul copies both inputs out of numpy and allocates and copies the output: that is the
binding's cost and is in these figures. ``cargo bench -p lmcore-core --bench core`` gives the
pure-Rust figures for the same shapes. The two OpenBLAS builds differ too: lmcore links
scipy-openblas32's, numpy ships its own (64-bit integers). With torch installed, a third column
gives PyTorch's ``torch.matmul`` (MKL) at the same thread count.

Run (bench-only dependency: ``pip install threadpoolctl``, used to cap numpy's threads and to
report which OpenBLAS kernel each library runs):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/matmul_vs_numpy.py [--quick] [--threads N]

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where a machine sets them, force an older kernel on both
OpenBLAS copies in the process and slow a current numpy, so unset them for this command alone.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np

import lmcore
from lmcore.blas import cpu_name

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # numpy then uses its default thread count (all cores)
    ThreadpoolController = None

B, T, C, H, L, V = 16, 128, 128, 4, 2, 65
N = B * T


def cases():
    """(name, trans_a, trans_b, m, n, k) as in rust/core/src/ops/linear.rs and benches/core.rs."""
    out = []
    for layer, fin, fout in [("attn.c_attn", C, 3 * C), ("attn.c_proj", C, C), ("mlp.c_fc", C, 4 * C),
                             ("mlp.c_proj", 4 * C, C), ("lm_head", C, V)]:
        out.append((f"{layer} fwd", False, True, N, fout, fin))
        out.append((f"{layer} dX", False, False, N, fin, fout))
        out.append((f"{layer} dW", True, False, fout, fin, N))
    out.append(("attn q@k^T (1 head)", False, True, T, T, C // H))
    out.append(("square 1024^3", False, False, 1024, 1024, 1024))
    return out


def median_secs(fn, warm, reps, inner):
    """Median seconds of one fn() call: `reps` timings of `inner` calls each, after `warm` calls."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def bench_gemms(warm, reps, rng, torch=None):
    """Each shape through lmcore, numpy and (if given) PyTorch, whose CPU BLAS is MKL."""
    rows = []
    for i, (name, ta, tb, m, n, k) in enumerate(cases()):
        a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
        a_op, b_op = (a.T if ta else a), (b.T if tb else b)
        ours = lambda: lmcore.matmul(a, b, trans_a=ta, trans_b=tb)  # noqa: E731
        theirs = lambda: a_op @ b_op  # noqa: E731
        np.testing.assert_allclose(ours(), theirs(), rtol=1e-3, atol=1e-3 * np.sqrt(k))
        libraries = [("lmcore", ours), ("numpy", theirs)]
        if torch is not None:
            ta_op, tb_op = torch.from_numpy(a_op), torch.from_numpy(b_op)
            libraries.append(("torch", lambda: torch.matmul(ta_op, tb_op)))
        flop = 2.0 * m * n * k
        inner = max(1, min(1000, int(2e8 / flop)))
        # One library at a time (its idle OpenBLAS threads spin briefly after a call, so the
        # other's would compete with them); alternate which goes first, pause in between.
        order = libraries[:: 1 if i % 2 == 0 else -1]
        secs = {}
        for who, fn in order:
            time.sleep(0.15)
            secs[who] = median_secs(fn, warm, reps, inner)
        g = {who: flop / s / 1e9 for who, s in secs.items()}
        rows.append({"name": name, "trans_a": ta, "trans_b": tb, "m": m, "n": n, "k": k,
                     "lmcore_gflops": round(g["lmcore"], 2), "numpy_gflops": round(g["numpy"], 2),
                     "ratio": round(g["lmcore"] / g["numpy"], 3),
                     **({"torch_gflops": round(g["torch"], 2)} if "torch" in g else {})})
        r = rows[-1]
        print(f"{name:<22} {int(ta)}{int(tb)} {m:>5} {n:>5} {k:>5} {r['lmcore_gflops']:>9.1f} "
              f"{r['numpy_gflops']:>9.1f} {r['ratio']:>6.2f}"
              + (f" {r['torch_gflops']:>9.1f}" if "torch" in g else ""), flush=True)
    return rows


def bench_train_step(warm, steps, rng):
    model = lmcore.Model(vocab_size=V, d_model=C, n_head=H, n_layer=L, block_size=T, dropout=0.0, seed=0,
                         dtype="float32", beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    data = rng.integers(0, V, size=N + 1, dtype=np.int64)
    x, y = data[:-1].reshape(B, T), data[1:].reshape(B, T)
    loss = None

    def step():
        nonlocal loss
        loss, _ = model.train_step(x, y, 1e-3)

    secs = median_secs(step, warm, steps, 1)
    return {"batch": B, "block": T, "steps": steps, "ms": round(secs * 1e3, 3),
            "tokens_per_s": round(N / secs, 1), "last_loss": round(loss, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and steps")
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    args = ap.parse_args()
    warm, reps, steps = (1, 5, 5) if args.quick else (3, 15, 20)

    env = {v: os.environ.get(v) for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")}
    for v, val in env.items():
        print(f"{v}: {'(unset)' if val is None else repr(val)}")
    if env["OPENBLAS_CORETYPE"] or env["OPENBLAS_L2_SIZE"]:
        print("WARNING: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set and force a kernel on both "
              "OpenBLAS copies; run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` for a fair figure")

    # A shared machine: a load near the core count before the run means the figures are low.
    print("load average before the run: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    lmcore.set_num_threads(args.threads)  # lmcore's pool; its OpenBLAS runs 1 thread per call
    blas = []
    if ThreadpoolController is None:
        print("threadpoolctl is not installed: numpy uses its default BLAS thread count")
    else:
        ctl = ThreadpoolController()
        # Cap numpy's own BLAS only: lmcore sets the one it links itself.
        np_dir = os.path.dirname(np.__file__)
        # (by file: lmcore's scipy-openblas32 has the same prefix as numpy's copy, and must stay at 1)
        for lib in ctl.lib_controllers:
            if lib.filepath.startswith(np_dir):
                lib.set_num_threads(args.threads)
        for lib in ctl.info():
            blas.append({key: lib.get(key) for key in ("prefix", "version", "architecture", "num_threads")})
            print(f"BLAS {lib['prefix']} {lib.get('version')}: kernel {lib.get('architecture')}, "
                  f"{lib['num_threads']} threads per call ({os.path.basename(lib['filepath'])})")
    try:
        import torch

        torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__}: {torch.get_num_threads()} threads (its CPU BLAS: MKL)")
    except ImportError:
        torch = None
    print(f"CPU: {cpu_name()}\n{lmcore.blas_info().line()}")
    print(f"lmcore threads: {lmcore.num_threads()}, numpy {np.__version__}, "
          f"{'quick' if args.quick else 'full'} run\n")

    rng = np.random.default_rng(0)
    print(f"{'gemm (float32)':<22} tt {'m':>5} {'n':>5} {'k':>5} {'lmcore':>9} {'numpy':>9} {'ratio':>6}"
          + (f" {'torch':>9}" if torch else ""))
    print(f"{'':<22} AB {'':>17} {'GFLOP/s':>9} {'GFLOP/s':>9} {'l/np':>6}" + (f" {'GFLOP/s':>9}" if torch else ""))
    rows = bench_gemms(warm, reps, rng, torch)
    geomean = lambda key: float(np.exp(np.mean(np.log([r[key] for r in rows if key in r and not r["name"].startswith("square")]))))  # noqa: E731
    geo = geomean("ratio")
    print(f"geometric mean ratio lmcore/numpy: {geo:.2f}; geometric mean GFLOP/s of the model's shapes: lmcore "
          f"{geomean('lmcore_gflops'):.1f}, numpy {geomean('numpy_gflops'):.1f}"
          + (f", torch {geomean('torch_gflops'):.1f}" if torch else ""))

    step = bench_train_step(3 if not args.quick else 1, steps, rng)
    print(f"\nModel.train_step f32 (B {B}, T {T}, C {C}, H {H}, L {L}, V {V}): median {step['ms']:.1f} ms/step "
          f"over {steps} steps, {step['tokens_per_s']:.0f} tokens/s (last loss {step['last_loss']:.3f})")

    print("load average after the run: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("JSON: " + json.dumps({"bench": "matmul_vs_numpy", "threads": args.threads, "env": env, "blas": blas,
                                 "numpy": np.__version__, "gemm": rows, "geomean_ratio": round(geo, 3),
                                 "train_step": step}, separators=(",", ":")))


if __name__ == "__main__":
    main()
