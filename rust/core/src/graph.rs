//! `Graph`: the tape. Every op computes its forward result immediately (eager) and records one
//! `Op` naming its tensors by handle. `backward` walks the tape in reverse through one
//! exhaustive `match`, so an op cannot exist without its backward rule.

use crate::error::{Error, Result};
use crate::ops::{attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, residual};
use crate::real::Real;
use crate::rng::Rng;
use crate::grad_plan::GradPlan;
use crate::store::{Shape, Store, Var};

/// One recorded operation. Inputs first, then `out`, then tensors the op saved for backward.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Embedding { ids: Var, table: Var, out: Var },
    Add { a: Var, b: Var, out: Var },
    Linear { x: Var, w: Var, b: Option<Var>, out: Var },
    LayerNorm { x: Var, gamma: Var, beta: Var, out: Var, stats: Var, partials: Var },
    Gelu { x: Var, out: Var },
    Attention { qkv: Var, n_head: usize, out: Var, lse: Var, bwd_tiles: Var },
    CrossEntropy { logits: Var, targets: Var, out: Var, lse: Var },
    Dropout { x: Var, out: Var, mask: Var },
}

impl Op {
    /// The float tensors whose gradients this op's backward adds to (parameters included).
    pub(crate) fn grad_inputs(&self) -> [Option<Var>; 3] {
        match *self {
            Op::Embedding { table, .. } => [Some(table), None, None],
            Op::Add { a, b, .. } => [Some(a), Some(b), None],
            Op::Linear { x, w, b, .. } => [Some(x), Some(w), b],
            Op::LayerNorm { x, gamma, beta, .. } => [Some(x), Some(gamma), Some(beta)],
            Op::Gelu { x, .. } | Op::Dropout { x, .. } => [Some(x), None, None],
            Op::Attention { qkv, .. } => [Some(qkv), None, None],
            Op::CrossEntropy { logits, .. } => [Some(logits), None, None],
        }
    }

    /// The tensors with gradient slots that this op creates: its output and backward scratch.
    pub(crate) fn grad_outputs(&self) -> [Option<Var>; 2] {
        match *self {
            Op::LayerNorm { out, partials, .. } => [Some(out), Some(partials)],
            Op::Attention { out, bwd_tiles, .. } => [Some(out), Some(bwd_tiles)],
            Op::Embedding { out, .. }
            | Op::Add { out, .. }
            | Op::Linear { out, .. }
            | Op::Gelu { out, .. }
            | Op::CrossEntropy { out, .. }
            | Op::Dropout { out, .. } => [Some(out), None],
        }
    }
}

pub struct Graph<F: Real> {
    pub store: Store<F>,
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

    pub fn tape_len(&self) -> usize {
        self.tape.len()
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

    pub fn value(&self, v: Var) -> Result<&[F]> {
        self.store.float_shape(v)?;
        Ok(self.store.values(v))
    }

    /// The gradient of an input or a parameter from the last backward.
    pub fn grad(&self, v: Var) -> Result<&[F]> {
        self.store.kept_grad_shape(v)?;
        Ok(self.store.grads(v))
    }

    pub fn shape(&self, v: Var) -> Result<Shape> {
        self.store.shape(v)
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
        self.store.zero_param_grads();
        let order = &self.grad_plan.by_start;
        let mut next = 0; // entries in `order` before this one are zeroed
        let mut zero_until = |s: &mut Store<F>, p: usize| {
            while next < order.len() && self.grad_plan.start_of(order[next]) <= p {
                s.zero_grad_of(order[next] as usize);
                next += 1;
            }
        };
        zero_until(&mut self.store, 0);
        seed(self.store.grads_mut(out));
        for (p, i) in (0..self.tape.len()).rev().enumerate() {
            zero_until(&mut self.store, p);
            let op = self.tape[i];
            let s = &mut self.store;
            match op {
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
            }
        }
        Ok(())
    }
}

/// Ops whose backward writes several input gradients at once need distinct inputs.
pub(crate) fn require_distinct(vars: &[Var], op: &str) -> Result<()> {
    for (i, a) in vars.iter().enumerate() {
        if vars[i + 1..].contains(a) {
            return Err(Error::Invalid(format!("{op}: the same tensor is passed as two different inputs")));
        }
    }
    Ok(())
}
