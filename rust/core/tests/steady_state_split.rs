//! The steady-state promise for data-parallel training's split step: `compute_gradients`, the
//! flat gradient buffer rewritten in place (as an all-reduce and its 1/K scaling do), the weight
//! checksum, then `apply_gradients`. None of it allocates after the first step.

mod common;

use lmcore_core::{GptConfig, Trainer};

fn split_step(tr: &mut Trainer<f32>, x: &[i64], y: &[i64], b: usize, t: usize, lr: f64) -> f64 {
    let loss = tr.compute_gradients(x, y, b, t).unwrap();
    // Stands in for the sum over two processes of the same gradients, then the mean.
    for g in tr.param_grads_mut() {
        *g = (*g + *g) * 0.5;
    }
    std::hint::black_box(tr.param_checksum());
    tr.apply_gradients(lr).unwrap();
    loss
}

// Run as a plain binary (harness = false in Cargo.toml): the test harness's own thread allocates
// while it waits for a test, which the counter would see.
fn main() {
    // steady_state_split_step_allocates_nothing
    let config = GptConfig { vocab_size: 65, d_model: 32, n_head: 2, n_layer: 2, block_size: 16, dropout: 0.1, ..Default::default() };
    common::steady_state_with(config, common::adamw().into(), 1000, split_step);
}
