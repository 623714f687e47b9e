//! `Trainer`: a GPT, its graph and its optimizer, driven one step at a time. This is what the
//! Python binding wraps. A step rewinds the arena, runs forward and backward, then updates the
//! parameters; once the first step has sized the arena, a step allocates nothing.

use crate::grad_clip::GradClip;
use crate::optimizer::{Optimizer, OptimizerConfig};
use crate::error::{Error, Result};
use crate::gpt::{Gpt, GptConfig};
use crate::graph::Graph;
use crate::kv_cache::KvCache;
use crate::memory;
use crate::profile::{self, Section};
use crate::real::Real;
use crate::rng::Rng;
use crate::store::{Var, IGNORE_ID};

/// A learning rate is a finite number >= 0.
fn check_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!("learning rate must be a finite number >= 0, got {lr}")))
    }
}

/// Bytes of tables per layer beside the floats (parameter names and entries, the tape and the
/// gradient plan of its ~30 tensors), an upper bound: a model of millions of tiny layers is
/// refused for its bookkeeping, not aborted by it.
const BOOKKEEPING_PER_LAYER: usize = 8 << 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

pub struct Trainer<F: Real> {
    pub graph: Graph<F>,
    pub gpt: Gpt,
    pub opt: Box<dyn Optimizer<F>>,
    pub clip: GradClip,
    /// Key/value cache for generation, made on first use.
    pub kv: Option<KvCache<F>>,
}

impl<F: Real> Trainer<F> {
    /// A freshly initialised model trained with `opt` (an `AdamWConfig`, a `MuonConfig`), its
    /// global gradient norm clipped to `grad_clip` (0: no clipping). `seed` drives the initial
    /// weights and the dropout stream.
    pub fn new(config: GptConfig, seed: u64, opt: impl Into<OptimizerConfig>, grad_clip: f64) -> Result<Self> {
        let opt = opt.into();
        config.validate()?;
        opt.validate()?;
        GradClip::check(grad_clip)?;
        let n = config.param_count().expect("a valid config's parameter count fits");
        // Weights, their gradients and the optimizer's state buffers (AdamW's m and v; Muon's
        // momentum besides): one float each per parameter.
        let floats = 2 + crate::optimizer::state_names(opt.name()).map_or(0, |s| s.len());
        let in_model_terms = || {
            (
                format!("a model of {n} parameters (weights, gradients and {}'s state, {floats} x {} bytes each)", opt.name(), size_of::<F>()),
                "parameters grow with vocab_size x d_model, block_size x d_model and n_layer x 12 d_model^2".to_string(),
            )
        };
        let build = || -> Result<Self> {
            let bookkeeping = config.n_layer.saturating_mul(BOOKKEEPING_PER_LAYER);
            memory::check_available(n.saturating_mul(floats * size_of::<F>()).saturating_add(bookkeeping), "")?;
            let mut graph = Graph::new();
            let gpt = Gpt::new(&mut graph, config, seed)?;
            // A stream of its own for dropout, distinct from the one that drew the weights.
            graph.rng = Rng::new(seed ^ 0xD1B5_4A32_D192_ED03);
            let opt = opt.build(&graph.store)?;
            let clip = GradClip::new(grad_clip, graph.param_len());
            Ok(Trainer { graph, gpt, opt, clip, kv: None })
        };
        build().map_err(|e| e.out_of_memory_as(in_model_terms))
    }

    /// The error of a (b, t) step that ran out of memory, in the terms of its batch.
    fn batch_out_of_memory(e: Error, pass: &str, b: usize, t: usize) -> Error {
        e.out_of_memory_as(|| {
            (
                format!("{pass} on a batch of {b} x {t} tokens"),
                "the arena grows with batch x sequence length x d_model x n_layer, and attention with the \
                 square of the sequence length: use a smaller batch or a shorter sequence (block size)"
                    .to_string(),
            )
        })
    }

    /// Size the arena for a training step on a (b, t) batch now: a batch too large for this
    /// machine's memory is an `Error::OutOfMemory` before any work is done, and the first real
    /// step allocates nothing. Runs forward and backward on a batch of zeros; the weights, the
    /// optimizer and the dropout stream are untouched, the parameters' gradients are zeroed.
    pub fn reserve(&mut self, b: usize, t: usize) -> Result<()> {
        if b > 1 {
            // A batch of one first: the arena grows with the batch (attention's tiles do not), so
            // b times its need is what the whole batch will take, and a batch far too large is
            // refused at once, with its size, instead of after gigabytes of work.
            self.reserve_batch(1, t).map_err(|e| Self::batch_out_of_memory(e, "a training step", b, t))?;
            let estimate = self.graph.store.last_step_bytes().saturating_mul(b);
            let held = self.graph.capacity_bytes();
            memory::check_available(estimate.saturating_sub(held), "")
                .map_err(|e| Self::batch_out_of_memory(e.needing(estimate), "a training step", b, t))?;
        }
        self.reserve_batch(b, t)
    }

    fn reserve_batch(&mut self, b: usize, t: usize) -> Result<()> {
        let n = b.checked_mul(t).ok_or_else(|| Error::Shape(format!("a ({b}, {t}) batch is too large")))?;
        let zeros = memory::filled(n, 0i64, "the batch's token ids").map_err(|e| Self::batch_out_of_memory(e, "a training step", b, t))?;
        let rng = self.graph.rng;
        let result = self.forward_backward(&zeros, &zeros, b, t);
        self.graph.rng = rng;
        self.graph.store.zero_param_grads();
        self.graph.reset();
        result.map(|_| ())
    }

    /// Forward with dropout and backward on a batch: the loss, and the gradients in the store.
    /// A non-finite loss is an error before backward; running out of memory is told in the
    /// batch's terms.
    fn forward_backward(&mut self, idx: &[i64], targets: &[i64], b: usize, t: usize) -> Result<f64> {
        let step = |tr: &mut Self| -> Result<f64> {
            let (ids, tg) = tr.load_batch(idx, Some(targets), b, t)?;
            let (_, loss) = tr.gpt.forward(&mut tr.graph, ids, tg, true)?;
            let loss = loss.expect("targets were given");
            let loss_value = tr.graph.value(loss)?[0].to_f64();
            if !loss_value.is_finite() {
                return Err(Error::NonFinite(format!("loss is {loss_value}")));
            }
            tr.graph.backward(loss)?;
            Ok(loss_value)
        };
        step(self).map_err(|e| Self::batch_out_of_memory(e, "a training step", b, t))
    }

    /// Rewind the arena and load one batch: ids and optional targets, both (B, T) row-major.
    fn load_batch(&mut self, idx: &[i64], targets: Option<&[i64]>, b: usize, t: usize) -> Result<(Var, Option<Var>)> {
        if b.checked_mul(t) != Some(idx.len()) {
            return Err(Error::Shape(format!("{} token ids do not form a ({b}, {t}) batch", idx.len())));
        }
        self.graph.reset();
        let v = self.gpt.config.vocab_size;
        let ids = self.graph.input_ids(&[b, t], idx.iter().copied(), v)?;
        let tg = match targets {
            Some(tg) if tg.len() != idx.len() => {
                return Err(Error::Shape(format!("targets have {} ids, inputs have {}", tg.len(), idx.len())));
            }
            Some(tg) => Some(self.graph.input_targets(&[b, t], tg.iter().copied(), v)?),
            None => None,
        };
        Ok((ids, tg))
    }

    /// One optimizer step on a batch at learning rate `lr` (AdamW's; Muon's matrices take
    /// `lr_ratio` times it): `compute_gradients`, then `apply_gradients`. Returns the loss before
    /// the update. A non-finite loss or gradient is an error that leaves weights and optimizer
    /// untouched.
    pub fn train_step(&mut self, idx: &[i64], targets: &[i64], b: usize, t: usize, lr: f64) -> Result<StepStats> {
        check_lr(lr)?; // before any work, as a step always did
        let loss = self.compute_gradients(idx, targets, b, t)?;
        let grad_norm = self.apply_gradients(lr)?;
        Ok(StepStats { loss, grad_norm })
    }

    /// The first half of a step: forward with dropout and backward on a batch, leaving the
    /// gradients of the mean loss in the flat buffer (`param_grads_mut`), where data-parallel
    /// training sums them over processes. Returns the loss; nothing is updated.
    pub fn compute_gradients(&mut self, idx: &[i64], targets: &[i64], b: usize, t: usize) -> Result<f64> {
        // A step on no counted target would still move the weights (momentum, weight decay).
        if !targets.is_empty() && targets.iter().all(|&tg| tg == IGNORE_ID) {
            return Err(Error::Invalid(format!("every target of the batch is the ignore id {IGNORE_ID}: a training step needs at least one counted target")));
        }
        self.forward_backward(idx, targets, b, t)
    }

    /// The second half of a step: the global norm of the gradients in the flat buffer, clipping
    /// and the optimizer's update at learning rate `lr`. Returns the norm before clipping; a
    /// non-finite one is an error that leaves weights and optimizer untouched.
    pub fn apply_gradients(&mut self, lr: f64) -> Result<f64> {
        check_lr(lr)?;
        let (params, grads) = self.graph.store.param_buffers_mut();
        let grad_norm = profile::timed(Section::GradNorm, true, || self.clip.norm(grads));
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite(format!("gradient norm is {grad_norm}")));
        }
        let scale = self.clip.scale(grad_norm);
        profile::timed(Section::Optimizer, true, || self.opt.update(params, grads, lr, scale));
        Ok(grad_norm)
    }

    /// The parameters' gradients, one flat buffer in layout order (what `compute_gradients` left).
    pub fn param_grads_mut(&mut self) -> &mut [F] {
        self.graph.store.param_grads_mut()
    }

    /// A 64-bit fingerprint of every parameter's bits, in layout order: processes that must hold
    /// the same weights compare it (FNV-1a over the values' bit patterns, one pass, no allocation).
    pub fn param_checksum(&self) -> u64 {
        self.graph.store.param_values().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &p| (h ^ p.to_f64().to_bits()).wrapping_mul(0x0100_0000_01b3))
    }

    /// Forward without dropout and without a backward pass. Returns the logits (B, T, V) and the
    /// loss when targets are given. Does not touch the dropout stream.
    pub fn forward(&mut self, idx: &[i64], targets: Option<&[i64]>, b: usize, t: usize) -> Result<(&[F], Option<f64>)> {
        let in_batch_terms = |e| Self::batch_out_of_memory(e, "a forward pass", b, t);
        let (ids, tg) = self.load_batch(idx, targets, b, t).map_err(in_batch_terms)?;
        let (logits, loss) = self.gpt.forward(&mut self.graph, ids, tg, false).map_err(in_batch_terms)?;
        let loss = match loss {
            Some(l) => Some(self.graph.value(l)?[0].to_f64()),
            None => None,
        };
        Ok((self.graph.value(logits)?, loss))
    }

    /// Start incremental generation for `batch` rows with an empty cache.
    pub fn kv_start(&mut self, batch: usize) -> Result<()> {
        match &mut self.kv {
            Some(kv) if kv.batch() == batch => kv.clear(),
            _ => self.kv = Some(KvCache::new(&self.gpt, batch)?),
        }
        Ok(())
    }

    /// Feed `steps` tokens per row, (B, steps) row-major, to the cache; returns the next-token
    /// logits (B, V).
    pub fn kv_push(&mut self, tokens: &[i64], steps: usize) -> Result<&[F]> {
        let kv = self.kv.as_mut().ok_or_else(|| Error::Invalid("call kv_start before kv_push".into()))?;
        kv.push(&self.gpt, &self.graph.store, tokens, steps)
    }
}
