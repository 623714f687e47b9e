//! `Graph`: the tape. Every op computes its forward result immediately (eager) and records one
//! `Op` naming its tensors by handle. `backward` walks the tape in reverse through one
//! exhaustive `match`, so an op cannot exist without its backward rule.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::profile::{self, Section};
use crate::ops::{attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, qk_norm, relu_squared, residual, rmsnorm, rope, softcap, swiglu};
use crate::real::Real;
use crate::rng::Rng;
use crate::grad_plan::GradPlan;
use crate::store::{ParamInfo, Shape, Store, Var};

/// Put an op's output on the tape; its kernel has already run.
fn record(tape: &mut Vec<Op>, recorded: Result<(Var, Op)>) -> Result<Var> {
    let (out, op) = recorded?;
    tape.push(op);
    Ok(out)
}

pub struct Graph<F: Real> {
    pub(crate) store: Store<F>,
    pub(crate) tape: Vec<Op>,
    grad_plan: GradPlan,
    /// Drives dropout masks; its state is part of a checkpoint.
    pub rng: Rng,
}

impl<F: Real> Default for Graph<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Real> Graph<F> {
    pub fn new() -> Self {
        // Start the thread pool now: it also puts BLAS in single-threaded mode (see `parallel`).
        crate::parallel::num_threads();
        Graph { store: Store::new(), tape: Vec::new(), grad_plan: GradPlan::default(), rng: Rng::new(0) }
    }

    /// Start a new step: forget the tape and rewind the arena (old handles become stale).
    pub fn reset(&mut self) {
        self.tape.clear();
        self.store.reset();
    }

    /// A leaf float tensor (an input) holding `data`.
    pub fn input(&mut self, dims: &[usize], data: &[F]) -> Result<Var> {
        let shape = Shape::new(dims)?;
        self.store.alloc_from(shape, data)
    }

    /// A leaf integer tensor; every id must be below `limit`.
    pub fn input_ids(&mut self, dims: &[usize], ids: impl ExactSizeIterator<Item = i64>, limit: usize) -> Result<Var> {
        let shape = Shape::new(dims)?;
        self.store.alloc_ids(shape, ids, limit)
    }

    /// A leaf integer tensor of cross-entropy targets: ids below `limit`, or `IGNORE_ID` (-100)
    /// for a position whose loss is not counted.
    pub fn input_targets(&mut self, dims: &[usize], ids: impl ExactSizeIterator<Item = i64>, limit: usize) -> Result<Var> {
        let shape = Shape::new(dims)?;
        self.store.alloc_targets(shape, ids, limit)
    }

    pub fn value(&self, v: Var) -> Result<&[F]> {
        self.store.float_shape(v)?;
        Ok(self.store.values(v))
    }

    /// Write access to a tensor's values (a parameter's, to set or perturb it).
    pub fn value_mut(&mut self, v: Var) -> Result<&mut [F]> {
        self.store.float_shape(v)?;
        Ok(self.store.values_mut(v))
    }

    /// The parameters, in registration order.
    pub fn params(&self) -> &[ParamInfo] {
        self.store.params()
    }

    pub fn param(&self, name: &str) -> Result<&ParamInfo> {
        self.store.param(name)
    }

    /// Floats of all parameters together.
    pub fn param_len(&self) -> usize {
        self.store.param_len()
    }

    /// How many times the arena has been reset.
    pub fn generation(&self) -> u64 {
        self.store.generation()
    }

    /// Bytes the arena (activations, their gradients, ids) has ever needed at once.
    pub fn arena_high_water_bytes(&self) -> usize {
        self.store.high_water_bytes()
    }

    /// Bytes reserved by the store's buffers (parameters included).
    pub fn capacity_bytes(&self) -> usize {
        self.store.capacity_bytes()
    }

    /// The gradient of an input or a parameter from the last backward.
    pub fn grad(&self, v: Var) -> Result<&[F]> {
        self.store.kept_grad_shape(v)?;
        Ok(self.store.grads(v))
    }

    pub fn shape(&self, v: Var) -> Result<Shape> {
        self.store.shape(v)
    }

    // The ops. Each checks its inputs, runs its forward kernel and records itself; the checks
    // and kernels live in `ops/`, one file per op family beside its backward.

    /// Rows of `table` picked by `ids`: (..., C) for ids (...).
    pub fn embedding(&mut self, ids: Var, table: Var) -> Result<Var> {
        let recorded = profile::timed(Section::Embedding, false, || embedding::record(&mut self.store, ids, table));
        record(&mut self.tape, recorded)
    }
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let recorded = profile::timed(Section::Residual, false, || residual::record(&mut self.store, a, b));
        record(&mut self.tape, recorded)
    }
    /// x W^T + b, W (out, in) as in PyTorch.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let recorded = profile::timed(Section::Linear, false, || linear::record(&mut self.store, x, w, b));
        record(&mut self.tape, recorded)
    }
    pub fn layernorm(&mut self, x: Var, gamma: Var, beta: Var) -> Result<Var> {
        let recorded = profile::timed(Section::LayerNorm, false, || layernorm::record(&mut self.store, x, gamma, beta));
        record(&mut self.tape, recorded)
    }
    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        let recorded = profile::timed(Section::Gelu, false, || gelu::record(&mut self.store, x));
        record(&mut self.tape, recorded)
    }
    /// RMS normalisation of the last dimension, with a gain and no bias.
    pub fn rmsnorm(&mut self, x: Var, gain: Var) -> Result<Var> {
        let recorded = profile::timed(Section::RmsNorm, false, || rmsnorm::record(&mut self.store, x, gain));
        record(&mut self.tape, recorded)
    }
    /// max(x, 0)^2.
    pub fn relu_squared(&mut self, x: Var) -> Result<Var> {
        let recorded = profile::timed(Section::ReluSquared, false, || relu_squared::record(&mut self.store, x));
        record(&mut self.tape, recorded)
    }
    /// silu(gate) * up of x (..., 2H) holding the gate, then up: (..., H).
    pub fn swiglu(&mut self, x: Var) -> Result<Var> {
        let recorded = profile::timed(Section::SwiGlu, false, || swiglu::record(&mut self.store, x));
        record(&mut self.tape, recorded)
    }
    /// qkv (..., 3C) with each query and key head RMS-normalised (gains (hs) each); values unchanged.
    pub fn qk_norm(&mut self, qkv: Var, q_gain: Var, k_gain: Var, n_head: usize) -> Result<Var> {
        let recorded = profile::timed(Section::QkNorm, false, || qk_norm::record(&mut self.store, qkv, q_gain, k_gain, n_head));
        record(&mut self.tape, recorded)
    }
    /// qkv (B, T, 3C) with each query and key head rotated by its position (0..T); values unchanged.
    pub fn rope(&mut self, qkv: Var, n_head: usize) -> Result<Var> {
        let recorded = profile::timed(Section::Rope, false, || rope::record(&mut self.store, qkv, n_head));
        record(&mut self.tape, recorded)
    }
    /// cap * tanh(x / cap), for a finite cap > 0.
    pub fn softcap(&mut self, x: Var, cap: f64) -> Result<Var> {
        let recorded = profile::timed(Section::Softcap, false, || softcap::record(&mut self.store, x, cap));
        record(&mut self.tape, recorded)
    }
    /// Causal self-attention on qkv (B, T, 3C): (B, T, C).
    pub fn attention(&mut self, qkv: Var, n_head: usize) -> Result<Var> {
        let recorded = profile::timed(Section::Attention, false, || attention::record(&mut self.store, qkv, n_head));
        record(&mut self.tape, recorded)
    }
    /// Mean cross-entropy of logits (..., V) against ids (...): a scalar. Targets equal to
    /// `IGNORE_ID` are not counted (zero loss, zero gradient; the mean is over the others).
    pub fn cross_entropy(&mut self, logits: Var, targets: Var) -> Result<Var> {
        let recorded = profile::timed(Section::CrossEntropy, false, || cross_entropy::record(&mut self.store, logits, targets));
        record(&mut self.tape, recorded)
    }
    /// Dropout with probability `p` from the graph's generator; the identity (nothing recorded) at 0.
    pub fn dropout(&mut self, x: Var, p: f64) -> Result<Var> {
        let (out, op) = profile::timed(Section::Dropout, false, || dropout::record(&mut self.store, &mut self.rng, x, p))?;
        self.tape.extend(op);
        Ok(out)
    }

    /// Backpropagate from a scalar: d(out)/d(every tensor) lands in the gradient buffers.
    pub fn backward(&mut self, out: Var) -> Result<()> {
        let shape = self.store.grad_shape(out)?;
        if shape.numel() != 1 {
            return Err(Error::Invalid(format!(
                "backward() needs a scalar (one element), got shape {:?}; use backward_with to pass its gradient",
                shape.dims()
            )));
        }
        self.backward_seeded(out, |g| g.fill(F::ONE))
    }

    /// Backpropagate from any tensor, given the gradient of some scalar with respect to it.
    pub fn backward_with(&mut self, out: Var, grad: &[F]) -> Result<()> {
        let shape = self.store.grad_shape(out)?;
        if grad.len() != shape.numel() {
            return Err(Error::Shape(format!(
                "gradient has {} elements, the tensor {:?} has {}",
                grad.len(),
                shape.dims(),
                shape.numel()
            )));
        }
        self.backward_seeded(out, |g| g.copy_from_slice(grad))
    }

    fn backward_seeded(&mut self, out: Var, seed: impl FnOnce(&mut [F])) -> Result<()> {
        self.grad_plan.place(&mut self.store, &self.tape, out)?;
        profile::timed(Section::ZeroGrads, true, || self.store.zero_param_grads());
        let order = &self.grad_plan.by_start;
        let mut next = 0; // entries in `order` before this one are zeroed
        let mut zero_until = |s: &mut Store<F>, p: usize| {
            profile::timed(Section::ZeroGrads, true, || {
                while next < order.len() && self.grad_plan.start_of(order[next]) <= p {
                    s.zero_grad_of(order[next] as usize);
                    next += 1;
                }
            })
        };
        zero_until(&mut self.store, 0);
        seed(self.store.grads_mut(out));
        for (p, i) in (0..self.tape.len()).rev().enumerate() {
            zero_until(&mut self.store, p);
            let op = self.tape[i];
            let s = &mut self.store;
            profile::timed(op.section(), true, || match op {
                Op::Embedding { ids, table, out } => embedding::backward(s, ids, table, out),
                Op::Add { a, b, out } => residual::backward(s, a, b, out),
                Op::Linear { x, w, b, out } => linear::backward(s, x, w, b, out),
                Op::LayerNorm { x, gamma, beta, out, stats, partials } => {
                    layernorm::backward(s, x, gamma, beta, out, stats, partials)
                }
                Op::Gelu { x, out } => gelu::backward(s, x, out),
                Op::Attention { qkv, n_head, out, lse, bwd_tiles } => attention::backward(s, qkv, n_head, out, lse, bwd_tiles),
                Op::CrossEntropy { logits, targets, out, lse } => cross_entropy::backward(s, logits, targets, out, lse),
                Op::Dropout { x, out, mask } => dropout::backward(s, x, out, mask),
                Op::RmsNorm { x, gain, out, stats, partials } => rmsnorm::backward(s, x, gain, out, stats, partials),
                Op::QkNorm { qkv, q_gain, k_gain, n_head, out, stats, partials } => {
                    qk_norm::backward(s, qkv, q_gain, k_gain, n_head, out, stats, partials)
                }
                Op::Rope { qkv, n_head, out, table } => rope::backward(s, qkv, n_head, out, table),
                Op::ReluSquared { x, out } => relu_squared::backward(s, x, out),
                Op::Softcap { x, cap, out } => softcap::backward(s, x, cap, out),
                Op::SwiGlu { x, out } => swiglu::backward(s, x, out),
            });
        }
        Ok(())
    }
}
