//! lmcore-core: a small, memory-safe engine for training GPT-style models on a CPU.
//!
//! Data flow of one training step:
//! `Store::reset` rewinds the activation arena -> ops record `Node`s on the tape while computing
//! forward -> `Graph::backward` walks the tape in reverse -> the optimizer (`AdamW`, `Muon`) updates the flat parameter
//! buffers. Handles (`Var`) are indices plus a generation, never pointers, so a handle kept past
//! a reset is a clear `Error::StaleHandle`, never a read of reused memory.
//!
//! Shape legend used throughout: B batch, T time, C channels, H heads, hs head size (C / H),
//! V vocabulary, N rows (B * T).

pub mod adamw;
pub mod blas;
pub mod error;
pub mod gpt;
pub mod grad_clip;
mod grad_plan;
pub mod graph;
pub mod kv_cache;
pub mod matmul;
pub mod memory;
pub mod muon;
pub mod newton_schulz;
pub mod optimizer;
mod op;
pub mod ops;
pub mod parallel;
pub mod profile;
pub mod real;
pub mod rng;
pub mod sampling;
pub mod simd;
pub mod store;
pub mod trainer;

pub use adamw::AdamWConfig;
pub use muon::MuonConfig;
pub use optimizer::OptimizerConfig;
pub use error::{Error, Result};
pub use gpt::{Gpt, GptConfig};
pub use graph::Graph;
pub use kv_cache::KvCache;
pub use real::Real;
pub use rng::Rng;
pub use store::{Shape, Var, IGNORE_ID};
pub use trainer::{StepStats, Trainer};
