//! Where a step's time goes, by op family: wall time spent in each op's forward and backward,
//! zeroing gradient slots, the gradient norm and the optimizer. Off unless `enable(true)`: each
//! timed section then costs two clock reads, and otherwise one relaxed atomic load. The times are
//! of the calling thread and include the parallel work the section waits for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What a timed section belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Embedding,
    Residual,
    Linear,
    LayerNorm,
    Gelu,
    Attention,
    CrossEntropy,
    Dropout,
    RmsNorm,
    QkNorm,
    Rope,
    ReluSquared,
    Softcap,
    SwiGlu,
    /// Zeroing activation and parameter gradient slots before backward writes them.
    ZeroGrads,
    GradNorm,
    Optimizer,
}

const SECTIONS: [(Section, &str); 17] = [
    (Section::Embedding, "embedding"),
    (Section::Residual, "residual add"),
    (Section::Linear, "linear (GEMM)"),
    (Section::LayerNorm, "layernorm"),
    (Section::Gelu, "gelu"),
    (Section::Attention, "attention"),
    (Section::CrossEntropy, "cross-entropy"),
    (Section::Dropout, "dropout"),
    (Section::RmsNorm, "rmsnorm"),
    (Section::QkNorm, "qk-norm"),
    (Section::Rope, "rotary embeddings"),
    (Section::ReluSquared, "relu^2"),
    (Section::Softcap, "logit soft-cap"),
    (Section::SwiGlu, "swiglu"),
    (Section::ZeroGrads, "zero gradient slots"),
    (Section::GradNorm, "gradient norm"),
    (Section::Optimizer, "optimizer"),
];

static ENABLED: AtomicBool = AtomicBool::new(false);
// Nanoseconds per section, forward then backward.
static TOTALS: [[AtomicU64; 2]; SECTIONS.len()] = [const { [const { AtomicU64::new(0) }; 2] }; SECTIONS.len()];

/// Turn timing on or off (and clear the totals).
pub fn enable(on: bool) {
    for t in TOTALS.iter().flatten() {
        t.store(0, Ordering::Relaxed);
    }
    ENABLED.store(on, Ordering::Relaxed);
}

fn index(section: Section) -> usize {
    SECTIONS.iter().position(|(s, _)| *s == section).expect("every section is listed")
}

/// Run `f`, adding its wall time to `section` (forward, or backward when `backward`).
#[inline]
pub fn timed<R>(section: Section, backward: bool, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let result = f();
    TOTALS[index(section)][backward as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    result
}

/// One row of the table: a section's name and its forward and backward seconds so far.
pub struct Row {
    pub name: &'static str,
    pub forward_s: f64,
    pub backward_s: f64,
}

/// The totals since `enable`, one row per section.
pub fn report() -> Vec<Row> {
    SECTIONS
        .iter()
        .zip(&TOTALS)
        .map(|((_, name), t)| Row { name, forward_s: t[0].load(Ordering::Relaxed) as f64 * 1e-9, backward_s: t[1].load(Ordering::Relaxed) as f64 * 1e-9 })
        .collect()
}
