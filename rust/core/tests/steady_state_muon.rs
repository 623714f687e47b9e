//! The steady-state promise with Muon: its Newton-Schulz products and scratch allocate nothing
//! after the first step. 200 steps: the run must end within a minute on a busy machine, or the
//! harness's "running for over 60 seconds" notice is an allocation of its own.

mod common;

use lmcore_core::{GptConfig, MuonConfig};

// Run as a plain binary (harness = false in Cargo.toml): the test harness's own thread allocates
// while it waits for a test, which the counter would see.
fn main() {
    // steady_state_with_muon_allocates_nothing
    let config = GptConfig { vocab_size: 65, d_model: 32, n_head: 2, n_layer: 2, block_size: 16, dropout: 0.1, ..Default::default() };
    common::steady_state(config, MuonConfig { adamw: common::adamw(), ..Default::default() }.into(), 200);
}
