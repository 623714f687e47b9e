"""lmcore against PyTorch eager: the same GPT trained on the same batches, in one invocation.

Sizes (block 128, batch 16, the corpus's char vocab: 65 for tinyshakespeare): --small d_model 128,
4 heads, 2 layers; --medium 256, 8 heads, 4 layers. The PyTorch GPT below is nanoGPT's (pre-LN,
qkv in one Linear, SDPA causal attention, GELU tanh, final LayerNorm, lm_head tied to wte, biases,
float32, dropout 0). Both: AdamW lr 1e-3 constant, betas (0.9, 0.99), eps 1e-8, weight decay 0.1 on
2-D weights only, grad-clip 1.0; 2 threads; lmcore's initial weights (normal 0.02, residual
projections 0.02/sqrt(2L)), copied into torch; the same windows (lmcore.data.batches.BatchSampler, seeded
numpy PCG64). Each framework trains in its own child process so that its peak RSS (VmHWM from
/proc/self/status at the child's end) is its own. Warm-up steps are excluded; the timed steps give:
  tokens/s of each and lmcore/torch; losses (first step, end of warm-up, last, mean of last 10).
  MFU = FLOPs per step / step time / sgemm FLOP/s, the sgemm measured in this run (parent process,
    2 threads, float32) on the model's largest GEMM, the MLP c_fc forward (B*T x d) @ (4d x d)^T,
    through lmcore.matmul (binding copies included) and numpy `@`; MFU is reported against each.
  FLOPs per step = 6*N*B*T + 6*L*B*T^2*d, N = num_params - block*d (wpe is a lookup, wte counts
    once as the tied lm_head): forward+backward GEMMs of every weight, plus q@k^T and att@v
    (4*T^2*d per layer and sequence forward, x3 with backward) halved for the causal mask
    (nanoGPT's estimate_mfu adds 12*L*T*d per token, i.e. without the halving).
  peak RSS of each; lmcore generation of 500 tokens (1-token prompt, trained model) with and without
    the KV cache (lmcore.inference.sampling.generate use_cache=True/False): tokens/s and their ratio.
Targets (reported, not asserted): small >= 1.5x torch tokens/s; medium >= 1.3x and its step <= 1.25x
its GEMM floor (the step's GEMM FLOPs at the same process's sgemm rate, i.e. an MFU of 80%); lmcore peak RSS <= 1/3 of torch's; KV cache >= 20x recompute at 500 tokens.

With OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE set (the tests' environment), lmcore also runs a second time
with both lifted in its own command alone ("lmcore unpinned": OpenBLAS picks this CPU's kernels); each
lmcore row names its OpenBLAS kernel, and the unpinned run's losses are checked against the pinned one's.

Run:  LMCORE_DATA_DIR=/path/to/data python benches/vs_pytorch.py [--quick | --small | --medium]
      [--warmup N] [--steps N]   (default: both sizes, 10 + 100 steps; --quick: small, 3 + 20, ~1 min)
Optional deps: pip install -r benches/requirements.txt (torch: the plain PyPI wheel runs on CPU);
without torch the lmcore side is still reported. OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (printed) force
an OpenBLAS kernel on numpy's and lmcore's copies: unset them for a fair sgemm.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import lmcore
from lmcore.blas import cpu_name
from lmcore.data.batches import BatchSampler, encode_corpus, train_val_split
from lmcore.data.datasets import resolve_corpus
from lmcore.inference.sampling import generate
from lmcore.tokenizer.char import CharTokenizer

SIZES = {"small": dict(d_model=128, n_head=4, n_layer=2), "medium": dict(d_model=256, n_head=8, n_layer=4)}
BLOCK, BATCH, THREADS, SEED, LR = 128, 16, 2, 1337, 1e-3
OPT = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")
PIN_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Issue 23's targets: lmcore tokens/s over PyTorch's, and the medium step over its GEMM floor
# (the same as an MFU of 80%).
TARGETS = {"small": 1.5, "medium": 1.3}
MEDIUM_FLOOR_TARGET = 1.25


def step_flops(n_params: int, d: int, n_layer: int) -> float:
    n = n_params - BLOCK * d
    return 6.0 * n * BATCH * BLOCK + 6.0 * n_layer * BATCH * BLOCK**2 * d


def lm_model(vocab: int, size: str) -> lmcore.Model:
    return lmcore.Model(vocab_size=vocab, **SIZES[size], block_size=BLOCK, dropout=0.0, seed=SEED, dtype="float32", **OPT)


def train_loop(step, sampler: BatchSampler, warmup: int, steps: int) -> dict:
    losses = [step(*sampler.next_batch()) for _ in range(warmup)]
    t0 = time.perf_counter()
    losses += [step(*sampler.next_batch()) for _ in range(steps)]
    secs = time.perf_counter() - t0
    return {"step_ms": secs / steps * 1e3, "tok_s": steps * BATCH * BLOCK / secs, "loss_first": losses[0],
            "loss_after_warmup": losses[warmup - 1], "loss_last": losses[-1],
            "loss_last10_mean": float(np.mean(losses[-10:]))}


def torch_gpt(vocab: int, d_model: int, n_head: int, n_layer: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.attn = nn.ModuleDict(dict(c_attn=nn.Linear(d_model, 3 * d_model), c_proj=nn.Linear(d_model, d_model)))
            self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(d_model, 4 * d_model), c_proj=nn.Linear(4 * d_model, d_model)))

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2)
                       for t in self.attn.c_attn(self.ln_1(x)).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.attn.c_proj(y)
            return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab, d_model), wpe=nn.Embedding(BLOCK, d_model),
                h=nn.ModuleList(Block() for _ in range(n_layer)), ln_f=nn.LayerNorm(d_model)))
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, 0.0, 0.02 / (2 * n_layer) ** 0.5 if name.endswith("c_proj.weight") else 0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            tr = self.transformer
            x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))
            for block in tr.h:
                x = block(x)
            logits = self.lm_head(tr.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return GPT()


def child(args: argparse.Namespace) -> None:
    corpus = resolve_corpus()
    tok = CharTokenizer.from_text(corpus.text)
    train_ids, _ = train_val_split(encode_corpus(corpus, tok))
    sampler = BatchSampler(train_ids, BLOCK, BATCH, seed=SEED)
    out: dict = {"vocab": tok.vocab_size}
    if args.child == "lmcore":
        lmcore.set_num_threads(THREADS)
        out["openblas_core"] = lmcore._core.blas_core()
        d = SIZES[args.size]["d_model"]  # the MLP's c_fc forward, with this process's own kernel
        out["own_sgemm_gflops"] = sgemm(BATCH * BLOCK, 4 * d, d, libraries=("lmcore",))["lmcore"]
        model = lm_model(tok.vocab_size, args.size)
        out.update(train_loop(lambda x, y: model.train_step(x, y, LR)[0], sampler, args.warmup, args.steps))
        # Then a few steps more with the engine's per-op timers on (not part of the timed steps).
        lmcore._core.profile_enable(True)
        profiled = max(5, args.steps // 5)
        t0 = time.perf_counter()
        for _ in range(profiled):
            model.train_step(*sampler.next_batch(), LR)
        out["profile_step_ms"] = (time.perf_counter() - t0) / profiled * 1e3
        out["profile_ms"] = {name: (f + b) / profiled * 1e3 for name, f, b in lmcore._core.profile_report()}
        lmcore._core.profile_enable(False)
        prompt = tok.encode("\n").astype(np.int64)[None, :]
        for cached in (True, False):
            out[f"gen_tok_s_{'' if cached else 'no'}cache"] = 500 / timed(
                lambda: generate(model, prompt, 500, use_cache=cached, seed=0))
        out.update(n_params=model.num_params, threads=lmcore.num_threads())
    else:
        import torch
        torch.set_num_threads(THREADS)
        model = torch_gpt(tok.vocab_size, **SIZES[args.size])
        init = np.load(args.init)
        with torch.no_grad():
            for name, p in model.named_parameters():  # lm_head.weight is wte, not listed twice
                p.copy_(torch.from_numpy(init[name]))
        groups = [{"params": [p for p in model.parameters() if (p.dim() >= 2) == wd],
                   "weight_decay": OPT["weight_decay"] if wd else 0.0} for wd in (True, False)]
        kw = dict(lr=LR, betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"])
        try:
            opt, out["adamw"] = torch.optim.AdamW(groups, fused=True, **kw), "fused"
        except (RuntimeError, TypeError, ValueError):
            opt, out["adamw"] = torch.optim.AdamW(groups, **kw), "default"

        def step(x, y):
            loss = model(torch.from_numpy(x), torch.from_numpy(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["grad_clip"])
            opt.step()
            return loss.item()

        out.update(train_loop(step, sampler, args.warmup, args.steps))
        out.update(n_params=sum(p.numel() for p in model.parameters()), threads=torch.get_num_threads(),
                   torch=torch.__version__)
    with open("/proc/self/status", encoding="ascii") as f:
        out["peak_rss_mb"] = next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    print("RESULT: " + json.dumps(out), flush=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sgemm(m: int, n: int, k: int, reps: int = 15, libraries: tuple[str, ...] = ("lmcore", "numpy")) -> dict:
    """GFLOP/s of (m x k) @ (n x k)^T, float32: lmcore.matmul and numpy `@`, median of reps."""
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32)
    res = {"shape": [m, n, k]}
    calls = {"lmcore": lambda: lmcore.matmul(a, w, trans_b=True), "numpy": lambda: a @ w.T}
    for who, fn in ((who, calls[who]) for who in libraries):
        time.sleep(0.2)  # let the other library's idle BLAS threads stop spinning
        # Warm up for 0.1 s: an idle vCPU of a VM takes some 10 ms to run at full speed again
        # (measured here: the first ~10 two-thread calls after the pause ran at half speed).
        warm_until = time.perf_counter() + 0.1
        while time.perf_counter() < warm_until:
            fn()
        ts = [timed(fn) for _ in range(reps)]
        res[who] = 2.0 * m * n * k / float(np.median(ts)) / 1e9
    return res


def run_child(fw: str, size: str, args: argparse.Namespace, init: str) -> dict | None:
    """One framework's run in a process of its own. "lmcore unpinned" is lmcore with
    OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE lifted in its own command alone (OpenBLAS then picks
    this CPU's kernels); every other child gets the environment as it is."""
    kind = fw.split()[0]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--size", size,
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--init", init]
    env = {k: v for k, v in os.environ.items() if fw != "lmcore unpinned" or k not in PIN_VARS}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT: ")]
    if proc.returncode or not lines:
        print(f"{fw} {size} child failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT: "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small only, 3 warm-up + 20 timed steps")
    for flag in (*SIZES, "warmup", "steps"):
        ap.add_argument(f"--{flag}", **({"action": "store_true"} if flag in SIZES else {"type": int}))
    ap.add_argument("--child", choices=["lmcore", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    sizes = ["small"] if args.quick else [s for s in SIZES if getattr(args, s)] or list(SIZES)
    args.warmup = max(1, args.warmup or (3 if args.quick else 10))
    args.steps = args.steps or (20 if args.quick else 100)
    env = {v: os.environ.get(v) for v in ENV_VARS}
    print(" ".join(f"{v}={'(unset)' if val is None else val}" for v, val in env.items()))
    print(f"CPU: {cpu_name()}\n{lmcore.blas_info().line()}")
    has_torch = importlib.util.find_spec("torch") is not None
    if not has_torch:
        print("torch is not installed: reporting lmcore only. Install the optional bench deps with\n"
              "  pip install -r benches/requirements.txt   (plain `pip install torch` from PyPI; runs on CPU)")
    lmcore.set_num_threads(THREADS)  # lmcore's pool; its own OpenBLAS runs 1 thread per call
    try:  # cap numpy's BLAS only (not the OpenBLAS lmcore links) for the parent's sgemm
        from threadpoolctl import ThreadpoolController
        ctl, np_dir = ThreadpoolController(), os.path.dirname(np.__file__)
        for lib in ctl.lib_controllers:  # (by file: lmcore's library has the same prefix as numpy's)
            if lib.filepath.startswith(np_dir):
                lib.set_num_threads(THREADS)
    except ImportError:
        print("threadpoolctl is not installed: numpy's sgemm uses its default BLAS thread count")
    report: dict = {"env": env, "threads": THREADS, "warmup": args.warmup, "steps": args.steps,
                    "load_avg_start": os.getloadavg()[0]}
    print(f"threads {THREADS}, warm-up {args.warmup} + timed {args.steps} steps, batch {BATCH}, block {BLOCK}, "
          f"load average {report['load_avg_start']:.2f}\n")
    vocab = CharTokenizer.from_text(resolve_corpus().text).vocab_size
    for size in sizes:
        d, L = SIZES[size]["d_model"], SIZES[size]["n_layer"]
        fd, init = tempfile.mkstemp(prefix=f"lmcore-vs-torch-{size}-", suffix=".npz")
        os.close(fd)
        m0 = lm_model(vocab, size)
        np.savez(init, **{n: m0.get_param(n) for n in m0.param_names()})
        g = sgemm(BATCH * BLOCK, 4 * d, d)
        pinned = any(os.environ.get(v) for v in PIN_VARS)
        kinds = ["lmcore", *(["lmcore unpinned"] if pinned else []), *(["torch"] if has_torch else [])]
        res = {fw: run_child(fw, size, args, init) for fw in kinds}
        os.unlink(init)
        flops = step_flops(m0.num_params, d, L)
        for r in filter(None, res.values()):
            r.update({f"mfu_vs_{lib}_sgemm": flops / r["step_ms"] / g[lib] / 1e6 for lib in ("lmcore", "numpy")})
            if "own_sgemm_gflops" in r:
                r["mfu_vs_own_sgemm"] = flops / r["step_ms"] / r["own_sgemm_gflops"] / 1e6
        lm, th, un = res.get("lmcore"), res.get("torch"), res.get("lmcore unpinned")
        row: dict = {"sgemm_gflops": g, "flops_per_step": flops, **res}
        if lm and th:
            row.update(tok_s_ratio=lm["tok_s"] / th["tok_s"], rss_ratio=lm["peak_rss_mb"] / th["peak_rss_mb"])
        if un and th:
            row["unpinned_tok_s_ratio"] = un["tok_s"] / th["tok_s"]
        if un and lm:
            keys = ("loss_first", "loss_after_warmup", "loss_last", "loss_last10_mean")
            row["unpinned_losses_equal"] = all(abs(un[k] - lm[k]) <= 1e-6 * abs(lm[k]) for k in keys)
        if lm:
            row["kv_speedup"] = lm["gen_tok_s_cache"] / lm["gen_tok_s_nocache"]
        report[size] = row
        print(f"== {size}: d {d}, heads {SIZES[size]['n_head']}, layers {L}, vocab {vocab}, "
              f"{flops / 1e9:.2f} GFLOP/step; sgemm {g['shape']} lmcore.matmul {g['lmcore']:.1f}, "
              f"numpy {g['numpy']:.1f} GFLOP/s")
        print(f"{'':17}{'ms/step':>9}{'tok/s':>9}{'MFU/lm':>8}{'MFU/np':>8}{'RSS MB':>8}"
              f"{'loss0':>7}{'loss@w':>7}{'last':>7}{'last10':>7}  OpenBLAS kernel")
        for fw, r in res.items():
            if r:
                print(f"{fw:17}{r['step_ms']:9.1f}{r['tok_s']:9.0f}{r['mfu_vs_lmcore_sgemm']:8.1%}"
                      f"{r['mfu_vs_numpy_sgemm']:8.1%}{r['peak_rss_mb']:8.1f}" + "".join(
                          f"{r[k]:7.3f}" for k in ("loss_first", "loss_after_warmup", "loss_last", "loss_last10_mean"))
                      + f"  {r.get('openblas_core', '')}")
        target = TARGETS[size]
        if "tok_s_ratio" in row:
            print(f"tokens/s lmcore/torch {row['tok_s_ratio']:.2f}x with the environment as set (target >= "
                  f"{target}x); peak RSS lmcore/torch {row['rss_ratio']:.2f} (target <= 0.33); "
                  f"torch AdamW {th['adamw']}")
        if "unpinned_tok_s_ratio" in row:
            same = "equal" if row["unpinned_losses_equal"] else "DIFFER FROM"
            print(f"tokens/s lmcore unpinned/torch {row['unpinned_tok_s_ratio']:.2f}x (target >= {target}x); "
                  f"its losses {same} the pinned run's")
        profiled = [fw for fw in ("lmcore", "lmcore unpinned") if res.get(fw)]
        if profiled:
            print(f"per-op ms/step (engine timers){''.join(f'{fw:>18}' for fw in profiled)}")
            for name in res[profiled[0]]["profile_ms"]:
                print(f"  {name:<27}" + "".join(f"{res[fw]['profile_ms'][name]:18.2f}" for fw in profiled))
            print(f"  {'(the whole step)':<27}" + "".join(f"{res[fw]['profile_step_ms']:18.2f}" for fw in profiled))
        for fw in ("lmcore", "lmcore unpinned"):
            if res.get(fw):
                r = res[fw]
                print(f"{fw}: MFU {r['mfu_vs_own_sgemm']:.1%} of its own process's sgemm on that shape "
                      f"({r['own_sgemm_gflops']:.0f} GFLOP/s, kernel {r['openblas_core']})"
                      + (f" (target >= {1 / MEDIUM_FLOOR_TARGET:.0%})" if size == "medium" else ""))
                floor_ms = flops / r["own_sgemm_gflops"] / 1e6  # the step's GEMM FLOPs at that rate
                print(f"{fw}: step {r['step_ms']:.1f} ms = {r['step_ms'] / floor_ms:.2f}x its GEMM floor "
                      f"{floor_ms:.1f} ms (its {flops / 1e9:.2f} GFLOP at that sgemm rate; the engine's timers: "
                      f"{r['profile_ms']['linear (GEMM)']:.1f} ms in its GEMMs)"
                      + (f" (target <= {MEDIUM_FLOOR_TARGET}x)" if size == "medium" else ""))
        if lm:
            print(f"generation 500 tokens: cache {lm['gen_tok_s_cache']:.0f} tok/s, no cache "
                  f"{lm['gen_tok_s_nocache']:.0f} tok/s, speed-up {row['kv_speedup']:.1f}x (target >= 20x)")
        print()
    report["load_avg_end"] = os.getloadavg()[0]
    print(f"load average at the end {report['load_avg_end']:.2f}")
    print("JSON: " + json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
