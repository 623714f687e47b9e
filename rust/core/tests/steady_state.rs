//! The promises that make long runs safe: after the first step, a training step makes zero heap
//! allocations, and the arena's high-water mark never moves, over 1,000 steps.

mod common;

use lmcore_core::GptConfig;

// Run as a plain binary (harness = false in Cargo.toml): the test harness's own thread allocates
// while it waits for a test, which the counter would see.
fn main() {
    // steady_state_step_allocates_nothing_and_arena_stays_flat
    let config = GptConfig { vocab_size: 65, d_model: 32, n_head: 2, n_layer: 2, block_size: 16, dropout: 0.1, ..Default::default() };
    common::steady_state(config, common::adamw().into(), 1000);
}
