//! Kernels, one file per op family: the `Graph` method that checks shapes and records the op,
//! the forward kernel and the backward kernel side by side.

pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod linear;
pub mod qk_norm;
pub mod relu_squared;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod softcap;
pub mod swiglu;
