//! Core benchmark: what the pure-Rust engine gets out of BLAS and how fast it trains.
//!
//! Measures, for the small model (d_model 128, 4 heads, 2 layers, block 128, batch 16, vocab 65,
//! so N = B*T = 2048 rows):
//!   (a) sgemm GFLOP/s through `lmcore_core::blas::gemm::<f32>` on every linear layer's forward
//!       GEMM (Y = X W^T) and backward GEMMs (dX = dY W, dW = dY^T X), plus one per-head
//!       attention GEMM and a 1024^3 square GEMM as a reference point;
//!   (b) one full f32 training step (forward, backward, AdamW beta2 0.99, wd 0.1, clip 1.0)
//!       on random ids: median ms/step and tokens/s;
//!   (c) the BLAS thread count and the OpenBLAS kernel (core name) in use.
//! Each figure is the median of several timed repetitions after warm-up. No timed assertions:
//! it prints numbers (a table, then one `JSON: ` line) to compare against a peer run.
//!
//! Run: `cargo bench -p lmcore-core --bench core`   (threads: `LMCORE_THREADS=1 cargo bench ...`,
//! default 2). `--quick` (after `--`) takes fewer repetitions.

use lmcore_core::blas::{gemm, num_threads, set_num_threads};
use lmcore_core::{AdamWConfig, GptConfig, Rng, Trainer};
use std::hint::black_box;
use std::time::Instant;

extern "C" {
    fn openblas_get_corename() -> *const std::os::raw::c_char;
    fn openblas_get_config() -> *const std::os::raw::c_char;
}

fn c_str(p: *const std::os::raw::c_char) -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
}

/// Median seconds of `reps` timed calls of `f`, after `warm` untimed ones.
fn median_secs(warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// One GEMM to time: C (m, n) = op(A) op(B), op(A) (m, k), op(B) (k, n), operands dense.
struct Case {
    name: &'static str,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
}

/// The small model's GEMMs. Linear weight W is (out, in): forward gemm(N, T) of (N,in)x(out,in)^T,
/// dX gemm(N, N) of (N,out)x(out,in), dW gemm(T, N) of (N,out)^T x (N,in), as in ops/linear.rs.
fn cases(n: usize, c: usize, v: usize, t: usize, hs: usize) -> Vec<Case> {
    let layers = [("attn.c_attn", c, 3 * c), ("attn.c_proj", c, c), ("mlp.c_fc", c, 4 * c), ("mlp.c_proj", 4 * c, c), ("lm_head", c, v)];
    let names = [
        ["attn.c_attn fwd", "attn.c_attn dX", "attn.c_attn dW"],
        ["attn.c_proj fwd", "attn.c_proj dX", "attn.c_proj dW"],
        ["mlp.c_fc fwd", "mlp.c_fc dX", "mlp.c_fc dW"],
        ["mlp.c_proj fwd", "mlp.c_proj dX", "mlp.c_proj dW"],
        ["lm_head fwd", "lm_head dX", "lm_head dW"],
    ];
    let mut out = Vec::new();
    for ((_, fin, fout), nm) in layers.iter().zip(names) {
        out.push(Case { name: nm[0], ta: false, tb: true, m: n, n: *fout, k: *fin });
        out.push(Case { name: nm[1], ta: false, tb: false, m: n, n: *fin, k: *fout });
        out.push(Case { name: nm[2], ta: true, tb: false, m: *fout, n: *fin, k: n });
    }
    out.push(Case { name: "attn q@k^T (1 head)", ta: false, tb: true, m: t, n: t, k: hs });
    out.push(Case { name: "square 1024^3", ta: false, tb: false, m: 1024, n: 1024, k: 1024 });
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let threads: usize = std::env::var("LMCORE_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    set_num_threads(threads);
    let (b, t, c, h, l, v) = (16usize, 128usize, 128usize, 4usize, 2usize, 65usize);
    let n = b * t;
    // SAFETY: plain OpenBLAS getters returning static strings.
    let (core, config) = unsafe { (c_str(openblas_get_corename()), c_str(openblas_get_config())) };
    println!("lmcore core bench: BLAS threads {} (LMCORE_THREADS={threads}), OpenBLAS core {core}", num_threads());
    println!("OpenBLAS config: {config}");
    for var in ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS"] {
        println!("  {var}={}", std::env::var(var).unwrap_or_else(|_| "(unset)".into()));
    }

    // (a) GEMM throughput.
    let mut rng = Rng::new(1);
    let (warm, reps) = if quick { (1, 5) } else { (3, 15) };
    println!("\n{:<22} {:>2}{:>2} {:>6} {:>6} {:>6} {:>10} {:>9}", "gemm (f32)", "tA", "tB", "m", "n", "k", "ms", "GFLOP/s");
    let mut json_gemm = Vec::new();
    for cs in cases(n, c, v, t, c / h) {
        let (a_rows, a_cols) = if cs.ta { (cs.k, cs.m) } else { (cs.m, cs.k) };
        let (b_rows, b_cols) = if cs.tb { (cs.n, cs.k) } else { (cs.k, cs.n) };
        let a: Vec<f32> = (0..a_rows * a_cols).map(|_| rng.normal() as f32).collect();
        let bm: Vec<f32> = (0..b_rows * b_cols).map(|_| rng.normal() as f32).collect();
        let mut cm = vec![0f32; cs.m * cs.n];
        let flop = 2.0 * (cs.m * cs.n * cs.k) as f64;
        // Small GEMMs get more calls per timed repetition so the timer's resolution is not an issue.
        let inner = ((2e8 / flop) as usize).clamp(1, 1000);
        let secs = median_secs(warm, reps, || {
            for _ in 0..inner {
                gemm(cs.ta, cs.tb, cs.m, cs.n, cs.k, 1.0f32, &a, a_cols, &bm, b_cols, 0.0, &mut cm, cs.n);
            }
            black_box(&mut cm);
        }) / inner as f64;
        let gflops = flop / secs / 1e9;
        println!("{:<22} {:>2}{:>2} {:>6} {:>6} {:>6} {:>10.3} {:>9.1}", cs.name, cs.ta as u8, cs.tb as u8, cs.m, cs.n, cs.k, secs * 1e3, gflops);
        json_gemm.push(format!(
            "{{\"name\":\"{}\",\"trans_a\":{},\"trans_b\":{},\"m\":{},\"n\":{},\"k\":{},\"ms\":{:.4},\"gflops\":{:.2}}}",
            cs.name, cs.ta, cs.tb, cs.m, cs.n, cs.k, secs * 1e3, gflops
        ));
    }

    // (b) One full training step of the small model.
    let cfg = GptConfig { vocab_size: v, d_model: c, n_head: h, n_layer: l, block_size: t, dropout: 0.0 };
    let opt = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, grad_clip: 1.0 };
    let mut tr = Trainer::<f32>::new(cfg, 0, opt).expect("small model builds");
    let ids: Vec<i64> = (0..n + 1).map(|_| (rng.next_u64() % v as u64) as i64).collect();
    let (x, y) = (&ids[..n], &ids[1..]);
    let steps = if quick { 5 } else { 20 };
    let mut last_loss = 0.0;
    let secs = median_secs(3, steps, || {
        last_loss = tr.train_step(x, y, b, t, 1e-3).expect("step runs").loss;
    });
    let tok_s = n as f64 / secs;
    println!("\ntrain_step f32 (B {b}, T {t}, C {c}, H {h}, L {l}, V {v}): median {:.1} ms/step over {steps} steps, {:.0} tokens/s (last loss {last_loss:.3})", secs * 1e3, tok_s);

    println!(
        "JSON: {{\"bench\":\"core\",\"threads\":{},\"openblas_core\":\"{core}\",\"gemm\":[{}],\"train_step\":{{\"batch\":{b},\"block\":{t},\"steps\":{steps},\"ms\":{:.3},\"tokens_per_s\":{:.1}}}}}",
        num_threads(),
        json_gemm.join(","),
        secs * 1e3,
        tok_s
    );
}
