//! Core benchmark: what the pure-Rust engine gets out of BLAS and how fast it trains.
//!
//! Measures, for the small model (d_model 128, 4 heads, 2 layers, block 128, batch 16, vocab 65,
//! so N = B*T = 2048 rows):
//!   (a) f32 GEMM GFLOP/s on every linear layer's forward GEMM (Y = X W^T) and backward GEMMs
//!       (dX = dY W, dW = dY^T X), plus one per-head attention GEMM and a 1024^3 square as a
//!       reference point, two ways in the same run: the engine's path (`parallel::gemm_rows`
//!       in the engine's pool: output rows split over the engine's threads, one BLAS
//!       thread each) and, as the peer, one `blas::gemm::<f32>` call that OpenBLAS splits over
//!       as many threads of its own; with their ratio (engine / OpenBLAS);
//!   (b) one full f32 training step (forward, backward, AdamW beta2 0.99, wd 0.1, clip 1.0)
//!       on random ids: median ms/step and tokens/s;
//!   (c) the engine's thread count, OpenBLAS's per call, and the OpenBLAS kernel (core name);
//!   (d) the optimizer's update alone (after backward: AdamW's fused pass, Muon's momentum,
//!       Newton-Schulz on every hidden matrix and its inner AdamW), median ms per step, for the
//!       small model and the medium one (d_model 256, 8 heads, 4 layers).
//! Each figure is the median of several timed repetitions after warm-up. No timed assertions:
//! it prints numbers (a table, then one `JSON: ` line).
//!
//! Run: `cargo bench -p lmcore-core --bench core`   (threads: `LMCORE_THREADS=1 cargo bench ...`,
//! default 2). `cargo bench -p lmcore-core --bench core -- --quick` takes fewer repetitions.

use lmcore_core::blas::{self, gemm, Gemm};
use lmcore_core::matmul::gemm_rows;
use lmcore_core::parallel::{num_threads, set_num_threads};
use lmcore_core::profile;
use lmcore_core::{AdamWConfig, GptConfig, MuonConfig, OptimizerConfig, Rng, Trainer};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Set OpenBLAS's threads per call, then pause so idle OpenBLAS threads stop spinning.
fn blas_threads(n: usize) {
    blas::set_blas_threads(n);
    std::thread::sleep(Duration::from_millis(150));
}

/// The 1, 5 and 15 minute load averages, or "" off Linux.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Median seconds of `reps` timed calls of `f`, after `warm` untimed ones.
/// Median seconds of `reps` calls after `warm` calls and at least `min_warm` of warm-up (an idle
/// vCPU of this VM takes some 10 ms to run at full speed again: measured, the first ~10 two-thread
/// GEMMs after a 0.2 s pause ran at half speed).
fn median_secs(warm: usize, min_warm: Duration, reps: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while done < warm || start.elapsed() < min_warm {
        f();
        done += 1;
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
    name: String,
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
    let mut out = Vec::new();
    for (layer, fin, fout) in layers {
        let case = |what: &str, ta, tb, m, n, k| Case { name: format!("{layer} {what}"), ta, tb, m, n, k };
        out.push(case("fwd", false, true, n, fout, fin));
        out.push(case("dX", false, false, n, fin, fout));
        out.push(case("dW", true, false, fout, fin, n));
    }
    out.push(Case { name: "attn q@k^T (1 head)".into(), ta: false, tb: true, m: t, n: t, k: hs });
    out.push(Case { name: "square 1024^3".into(), ta: false, tb: false, m: 1024, n: 1024, k: 1024 });
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let threads: usize = std::env::var("LMCORE_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    set_num_threads(threads); // the engine's pool; it also sets OpenBLAS to one thread per call
    let (b, t, c, h, l, v) = (16usize, 128usize, 128usize, 4usize, 2usize, 65usize);
    let n = b * t;
    let (core, config, per_call) = (blas::core_name(), blas::config(), blas::blas_threads());
    println!("lmcore core bench: engine threads {} (LMCORE_THREADS={threads}), BLAS threads per call {per_call}, OpenBLAS core {core}", num_threads());
    println!("OpenBLAS config: {config}");
    println!("engine elementwise loops: {:?}", lmcore_core::simd::level());
    for var in ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS"] {
        println!("  {var}={}", std::env::var(var).unwrap_or_else(|_| "(unset)".into()));
    }
    // A shared machine: a load near the core count around the run means the figures are low.
    println!("  load average before the run: {}", load_average());

    // (a) GEMM throughput: the engine's path against OpenBLAS's own threading.
    let mut rng = Rng::new(1);
    let (warm, reps) = if quick { (1, 5) } else { (3, 15) };
    println!("\n{:<22} {:>4} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>6}", "gemm (f32)", "tAtB", "m", "n", "k", "engine", "engine", "openblas", "ratio");
    println!("{:<22} {:>4} {:>17} {:>9} {:>9} {:>9} {:>6}", "", "", "", "ms", "GFLOP/s", "GFLOP/s", "e/ob");
    let mut json_gemm = Vec::new();
    for cs in cases(n, c, v, t, c / h).iter() {
        let Case { ta, tb, m, n: nn, k, .. } = *cs;
        let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if tb { (nn, k) } else { (k, nn) };
        let a: Vec<f32> = (0..a_rows * a_cols).map(|_| rng.normal() as f32).collect();
        let bm: Vec<f32> = (0..b_rows * b_cols).map(|_| rng.normal() as f32).collect();
        let mut cm = vec![0f32; m * nn];
        let flop = 2.0 * (m * nn * k) as f64;
        // Small GEMMs get more calls per timed repetition so the timer's resolution is not an issue.
        let inner = ((2e8 / flop) as usize).clamp(1, 1000);
        let engine = |cm: &mut [f32]| {
            blas_threads(1);
            let s = median_secs(warm, Duration::from_millis(100), reps, || {
                (0..inner).for_each(|_| gemm_rows(&Gemm::new(ta, tb, m, nn, k, &a, a_cols, &bm, b_cols), &mut *cm, nn));
                black_box(&mut *cm);
            });
            s / inner as f64
        };
        let peer = |cm: &mut [f32]| {
            blas_threads(threads);
            let s = median_secs(warm, Duration::from_millis(100), reps, || {
                (0..inner).for_each(|_| gemm(&Gemm::new(ta, tb, m, nn, k, &a, a_cols, &bm, b_cols), &mut *cm, nn));
                black_box(&mut *cm);
            });
            s / inner as f64
        };
        // The engine first: OpenBLAS's own threads keep spinning for a while after a threaded
        // call (about 0.1 s), and would steal the cores from the engine's threads. Our pool spins
        // for 200 us only. So the peer goes second, and the next shape waits until it is quiet.
        let e = engine(&mut cm);
        let p = peer(&mut cm);
        std::thread::sleep(Duration::from_millis(300));
        let (ge, gp) = (flop / e / 1e9, flop / p / 1e9);
        println!("{:<22} {:>2}{:>2} {:>5} {:>5} {:>5} {:>9.3} {:>9.1} {:>9.1} {:>6.2}", cs.name, ta as u8, tb as u8, m, nn, k, e * 1e3, ge, gp, ge / gp);
        json_gemm.push(format!(
            "{{\"name\":\"{}\",\"trans_a\":{ta},\"trans_b\":{tb},\"m\":{m},\"n\":{nn},\"k\":{k},\"engine_ms\":{:.4},\"engine_gflops\":{ge:.2},\"openblas_gflops\":{gp:.2},\"ratio\":{:.3}}}",
            cs.name, e * 1e3, ge / gp
        ));
    }
    blas_threads(1); // back to the engine's setting for the training step

    // (b) One full training step of the small model.
    let cfg = GptConfig { vocab_size: v, d_model: c, n_head: h, n_layer: l, block_size: t, dropout: 0.0, ..Default::default() };
    let opt = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut tr = Trainer::<f32>::new(cfg, 0, opt, 1.0).expect("small model builds");
    let ids: Vec<i64> = (0..n + 1).map(|_| (rng.next_u64() % v as u64) as i64).collect();
    let (x, y) = (&ids[..n], &ids[1..]);
    let steps = if quick { 5 } else { 20 };
    let mut last_loss = 0.0;
    let secs = median_secs(3, Duration::ZERO, steps, || {
        last_loss = tr.train_step(x, y, b, t, 1e-3).expect("step runs").loss;
    });
    let tok_s = n as f64 / secs;
    println!("\ntrain_step f32 (B {b}, T {t}, C {c}, H {h}, L {l}, V {v}): median {:.1} ms/step over {steps} steps, {:.0} tokens/s (last loss {last_loss:.3})", secs * 1e3, tok_s);

    // (c) Where the step's time goes, by op family (the engine's own timers; the timed steps run
    // separately, so the figures above carry no timing overhead).
    let profiled = if quick { 5 } else { 20 };
    profile::enable(true);
    let start = Instant::now();
    for _ in 0..profiled {
        tr.train_step(x, y, b, t, 1e-3).expect("step runs");
    }
    let wall = start.elapsed().as_secs_f64() / profiled as f64;
    let rows = profile::report();
    profile::enable(false);
    println!("\nper-op cost of a step ({profiled} steps, ms/step; % of the step's {:.1} ms wall time):", wall * 1e3);
    println!("{:<22} {:>9} {:>9} {:>9} {:>7}", "op family", "forward", "backward", "total", "%");
    let mut counted = 0.0;
    for r in &rows {
        let total = (r.forward_s + r.backward_s) / profiled as f64;
        counted += total;
        println!("{:<22} {:>9.2} {:>9.2} {:>9.2} {:>6.1}%", r.name, r.forward_s / profiled as f64 * 1e3, r.backward_s / profiled as f64 * 1e3, total * 1e3, total / wall * 100.0);
    }
    println!("{:<22} {:>29.2} {:>6.1}%", "(outside the ops)", (wall - counted) * 1e3, (wall - counted) / wall * 100.0);

    // (d) The optimizer's update alone, on gradients of the model's size (random: the update's
    // cost does not depend on their values).
    println!("\noptimizer update alone (f32, ms/step, median):");
    println!("{:<34} {:>9} {:>9} {:>7}", "model", "adamw", "muon", "ratio");
    let mut json_opt = Vec::new();
    for (name, c, h, l) in [("small", 128usize, 4usize, 2usize), ("medium", 256, 8, 4)] {
        let cfg = GptConfig { vocab_size: v, d_model: c, n_head: h, n_layer: l, block_size: t, dropout: 0.0, ..Default::default() };
        let mut time = |opt: OptimizerConfig| {
            let mut tr = Trainer::<f32>::new(cfg, 0, opt, 1.0).expect("model builds");
            let n = tr.graph.param_len();
            let mut params: Vec<f32> = (0..n).map(|_| 0.02 * rng.normal() as f32).collect();
            let grads: Vec<f32> = (0..n).map(|_| 1e-3 * rng.normal() as f32).collect();
            median_secs(2, Duration::from_millis(100), if quick { 5 } else { 15 }, || tr.opt.update(&mut params, &grads, 1e-3, 1.0))
        };
        let adamw = time(opt.into());
        let muon = time(MuonConfig { adamw: opt, ..Default::default() }.into());
        let label = format!("{name} (C {c}, L {l}, {} params)", cfg.param_count().unwrap_or(0));
        println!("{label:<34} {:>9.3} {:>9.3} {:>7.1}", adamw * 1e3, muon * 1e3, muon / adamw);
        json_opt.push(format!("{{\"model\":\"{name}\",\"adamw_ms\":{:.4},\"muon_ms\":{:.4}}}", adamw * 1e3, muon * 1e3));
    }

    println!("load average after the run: {}", load_average());
    println!(
        "JSON: {{\"bench\":\"core\",\"threads\":{},\"blas_threads_per_call\":{per_call},\"openblas_core\":\"{core}\",\"gemm\":[{}],\"train_step\":{{\"batch\":{b},\"block\":{t},\"steps\":{steps},\"ms\":{:.3},\"tokens_per_s\":{:.1}}},\"optimizer_update\":[{}]}}",
        num_threads(),
        json_gemm.join(","),
        secs * 1e3,
        tok_s,
        json_opt.join(",")
    );
}
