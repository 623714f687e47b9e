"""lmcore against PyTorch eager: the same GPT trained on the same batches, in one invocation.

For each size (--small: d_model 128, 4 heads, 2 layers; --medium: 256, 8 heads, 4 layers; both
block 128, batch 16, char vocab of the corpus, 65 for tinyshakespeare) it trains with lmcore and
with an equivalent nanoGPT-style PyTorch GPT defined below (pre-LN, qkv in one Linear, GELU tanh,
final LayerNorm, lm_head tied to wte, biases, float32, dropout 0; AdamW lr 1e-3 constant, betas
(0.9, 0.99), eps 1e-8, weight decay 0.1 on 2-D weights only, grad-clip 1.0), both with 2 threads,
both starting from lmcore's initial weights (normal 0.02, residual projections 0.02/sqrt(2L)) and
drawing the same windows (lmcore.data.BatchSampler, a seeded numpy PCG64). Each framework runs in
its own child process, so its peak RSS (VmHWM of /proc/self/status at the child's end) is its own.
Warm-up steps are excluded; then the timed steps give:

  tokens/s of each and the ratio lmcore/torch;   the loss after warm-up and after the timed steps
  MFU = model FLOPs per step / step time / sgemm FLOP/s, where the sgemm rate is measured in this
        run (parent process, 2 threads, float32) on the model's largest GEMM, the MLP c_fc forward
        (B*T x d) @ (4d x d)^T, both through lmcore.matmul (binding copies included) and numpy `@`;
        MFU is reported against each.
  FLOPs per step = 6 * N * B*T + 6 * L * B * T^2 * d,  N = num_params - block*d (wpe is a lookup;
        wte counts once, as the tied lm_head). The first term is the forward+backward GEMMs of every
        weight; the second is q@k^T and att@v (2 * 2*T^2*d per layer per sequence forward, x3 with
        backward) halved for the causal mask (nanoGPT's estimate_mfu uses 12 * L * T * d per token
        without halving).
  peak RSS of each child; lmcore generation tokens/s, 500 new tokens from a 1-token prompt with
  the trained model, with and without the KV cache, and their ratio.
Targets (reported, not asserted): small >= 1.5x torch tokens/s, medium >= 1.2x and MFU >= 75% of
sgemm, lmcore peak RSS <= 1/3 of torch's, KV cache >= 20x recompute at 500 tokens.

Run:  LMCORE_DATA_DIR=/path/to/data python benches/vs_pytorch.py [--quick | --small | --medium]
      [--warmup N] [--steps N]      (default: both sizes; --quick: small only, few steps, ~1 min)
Optional bench deps: pip install -r benches/requirements.txt (torch from PyPI; the default wheel
runs on CPU). Without torch the lmcore side is still reported. OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
force an OpenBLAS kernel (numpy's and lmcore's) and are printed; unset them for a fair sgemm.
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
from lmcore.data import BatchSampler, encode_corpus, resolve_corpus, train_val_split
from lmcore.sampling import generate
from lmcore.tokenizer import CharTokenizer

SIZES = {"small": dict(d_model=128, n_head=4, n_layer=2), "medium": dict(d_model=256, n_head=8, n_layer=4)}
BLOCK, BATCH, THREADS, SEED, LR = 128, 16, 2, 1337, 1e-3
OPT = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")


def step_flops(n_params: int, d: int, n_layer: int) -> float:
    n = n_params - BLOCK * d
    return 6.0 * n * BATCH * BLOCK + 6.0 * n_layer * BATCH * BLOCK**2 * d


def vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))


def lm_model(vocab: int, size: str) -> lmcore.Model:
    return lmcore.Model(vocab, **SIZES[size], block_size=BLOCK, dropout=0.0, seed=SEED, dtype="float32", **OPT)


def train_loop(step, sampler: BatchSampler, warmup: int, steps: int) -> dict:
    losses = [step(*sampler.next_batch()) for _ in range(warmup)]
    t0 = time.perf_counter()
    losses += [step(*sampler.next_batch()) for _ in range(steps)]
    secs = time.perf_counter() - t0
    return {"step_ms": secs / steps * 1e3, "tok_s": steps * BATCH * BLOCK / secs, "loss_first": losses[0],
            "loss_after_warmup": losses[warmup - 1] if warmup else None, "loss_last": losses[-1],
            "loss_last10_mean": float(np.mean(losses[-10:]))}


def torch_gpt(vocab: int, d_model: int, n_head: int, n_layer: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d_model), Attn(), nn.LayerNorm(d_model)
            self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(d_model, 4 * d_model), c_proj=nn.Linear(4 * d_model, d_model)))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            m = self.mlp
            return x + m.c_proj(F.gelu(m.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab, d_model), wpe=nn.Embedding(BLOCK, d_model),
                h=nn.ModuleList(Block() for _ in range(n_layer)), ln_f=nn.LayerNorm(d_model)))
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() == 2:
                    std = 0.02 / (2 * n_layer) ** 0.5 if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

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
        model = lm_model(tok.vocab_size, args.size)
        out.update(train_loop(lambda x, y: model.train_step(x, y, LR)[0], sampler, args.warmup, args.steps))
        prompt = tok.encode("\n").astype(np.int64)[None, :]
        for cached in (True, False):
            t0 = time.perf_counter()
            generate(model, prompt, 500, use_cache=cached, seed=0)
            out[f"gen_tok_s_{'cache' if cached else 'nocache'}"] = 500 / (time.perf_counter() - t0)
        out.update(n_params=model.num_params, threads=lmcore.num_threads())
    else:
        import torch
        torch.set_num_threads(THREADS)
        model = torch_gpt(tok.vocab_size, **SIZES[args.size])
        init = np.load(args.init)
        with torch.no_grad():
            for name, p in model.named_parameters():  # lm_head.weight is wte, not listed twice
                p.copy_(torch.from_numpy(init[name]))
        decay = [p for p in model.parameters() if p.dim() >= 2]
        groups = [{"params": decay, "weight_decay": OPT["weight_decay"]},
                  {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
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
    out["peak_rss_mb"] = vm_hwm_mb()
    print("RESULT: " + json.dumps(out), flush=True)


def sgemm(m: int, n: int, k: int, reps: int = 15) -> dict:
    """GFLOP/s of (m x k) @ (n x k)^T, float32: lmcore.matmul and numpy `@`, median of reps."""
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32)
    res = {"shape": [m, n, k]}
    for who, fn in (("lmcore", lambda: lmcore.matmul(a, w, trans_b=True)), ("numpy", lambda: a @ w.T)):
        time.sleep(0.2)  # let the other library's idle BLAS threads stop spinning
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        res[who] = 2.0 * m * n * k / float(np.median(ts)) / 1e9
    return res


def run_child(fw: str, size: str, args: argparse.Namespace, init: str) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", fw, "--size", size,
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--init", init]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT: ")]
    if proc.returncode or not lines:
        print(f"{fw} {size} child failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT: "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small only, 3 warm-up + 20 timed steps")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--medium", action="store_true")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--child", choices=["lmcore", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    sizes = ["small"] if args.quick else [s for s in SIZES if getattr(args, s)] or list(SIZES)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    args.steps = args.steps or (20 if args.quick else 100)
    env = {v: os.environ.get(v) for v in ENV_VARS}
    print(" ".join(f"{v}={'(unset)' if val is None else val}" for v, val in env.items()))
    has_torch = importlib.util.find_spec("torch") is not None
    if not has_torch:
        print("torch is not installed: reporting lmcore only. Install the optional bench deps with\n"
              "  pip install -r benches/requirements.txt   (plain `pip install torch` from PyPI; runs on CPU)")
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(THREADS, user_api="blas")  # parent's sgemm: numpy's BLAS at 2 threads too
    except ImportError:
        print("threadpoolctl is not installed: numpy's sgemm uses its default BLAS thread count")
    lmcore.set_num_threads(THREADS)
    print(f"threads {THREADS}, warm-up {args.warmup} + timed {args.steps} steps, batch {BATCH}, block {BLOCK}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    vocab = CharTokenizer.from_text(resolve_corpus().text).vocab_size
    report: dict = {"env": env, "threads": THREADS, "warmup": args.warmup, "steps": args.steps}
    tmp = tempfile.mkdtemp(prefix="lmcore-vs-torch-")
    for size in sizes:
        d, L = SIZES[size]["d_model"], SIZES[size]["n_layer"]
        init = os.path.join(tmp, f"{size}.npz")
        m0 = lm_model(vocab, size)
        np.savez(init, **{n: m0.get_param(n) for n in m0.param_names()})
        g = sgemm(BATCH * BLOCK, 4 * d, d)
        res = {fw: run_child(fw, size, args, init) for fw in (["lmcore", "torch"] if has_torch else ["lmcore"])}
        flops = step_flops(m0.num_params, d, L)
        del m0
        for r in res.values():
            if r:
                r["mfu_vs_lmcore_sgemm"] = flops / (r["step_ms"] / 1e3) / (g["lmcore"] * 1e9)
                r["mfu_vs_numpy_sgemm"] = flops / (r["step_ms"] / 1e3) / (g["numpy"] * 1e9)
        lm, th = res.get("lmcore"), res.get("torch")
        row: dict = {"sgemm_gflops": g, "flops_per_step": flops, **res}
        if lm and th:
            row.update(tok_s_ratio=lm["tok_s"] / th["tok_s"], rss_ratio=lm["peak_rss_mb"] / th["peak_rss_mb"])
        if lm:
            row["kv_speedup"] = lm["gen_tok_s_cache"] / lm["gen_tok_s_nocache"]
        report[size] = row
        print(f"== {size}: d {d}, heads {SIZES[size]['n_head']}, layers {L}, vocab {vocab}, "
              f"{flops / 1e9:.2f} GFLOP/step; sgemm {g['shape']} lmcore.matmul {g['lmcore']:.1f}, "
              f"numpy {g['numpy']:.1f} GFLOP/s")
        print(f"{'':8}{'ms/step':>9}{'tok/s':>9}{'MFU/lm':>8}{'MFU/np':>8}{'RSS MB':>8}"
              f"{'loss0':>7}{'loss@w':>7}{'last':>7}{'last10':>7}")
        for fw, r in res.items():
            if r:
                lw = r["loss_after_warmup"]
                print(f"{fw:8}{r['step_ms']:9.1f}{r['tok_s']:9.0f}{r['mfu_vs_lmcore_sgemm']:8.1%}"
                      f"{r['mfu_vs_numpy_sgemm']:8.1%}{r['peak_rss_mb']:8.1f}{r['loss_first']:7.3f}"
                      f"{lw if lw is not None else float('nan'):7.3f}{r['loss_last']:7.3f}{r['loss_last10_mean']:7.3f}")
        target = 1.5 if size == "small" else 1.2
        if "tok_s_ratio" in row:
            print(f"tokens/s lmcore/torch {row['tok_s_ratio']:.2f}x (target >= {target}x); peak RSS "
                  f"lmcore/torch {row['rss_ratio']:.2f} (target <= 0.33); torch AdamW {th['adamw']}")
        if lm:
            print(f"generation 500 tokens: cache {lm['gen_tok_s_cache']:.0f} tok/s, no cache "
                  f"{lm['gen_tok_s_nocache']:.0f} tok/s, speed-up {row['kv_speedup']:.1f}x (target >= 20x)")
        print()
    print("JSON: " + json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
