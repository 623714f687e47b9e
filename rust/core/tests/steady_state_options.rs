//! The steady-state promise (no allocation after the first step, a flat arena) with every block
//! option on: RoPE, RMSNorm, QK-norm, ReLU^2, an untied zero-initialised head, a logit soft-cap.

mod common;

use lmcore_core::GptConfig;

// Run as a plain binary (harness = false in Cargo.toml): the test harness's own thread allocates
// while it waits for a test, which the counter would see.
fn main() {
    // steady_state_with_every_block_option_allocates_nothing
    let config = GptConfig {
        vocab_size: 65,
        d_model: 32,
        n_head: 2,
        n_layer: 2,
        block_size: 16,
        dropout: 0.1,
        rope: true,
        rmsnorm: true,
        qk_norm: true,
        relu2: true,
        swiglu: false,
        no_bias: false,
        untied_head: true,
        zero_init: true,
        logit_softcap: 15.0,
    };
    common::steady_state(config, common::adamw().into(), 1000);
}
