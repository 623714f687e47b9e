//! AdamW (Loshchilov & Hutter) as one fused pass over the flat parameter buffers, with bias
//! correction, decoupled weight decay on 2-D weights only, and global-norm gradient clipping.
//! The moments m and v are flat buffers parallel to the parameters, so a checkpoint can read and
//! write them as plain arrays. The pass runs in parallel over fixed spans of the buffers, so
//! results never depend on the thread count.

use crate::error::{Error, Result};
use crate::memory;
use crate::parallel::{for_each_chunk, for_each_chunk3};
use crate::real::Real;
use crate::store::Store;

/// Elements per span of the parallel pass (and per partial sum of the gradient norm).
const SPAN: usize = 1 << 15;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub grad_clip: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's AdamW defaults, no clipping.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, grad_clip: 0.0 }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0
            && self.grad_clip >= 0.0
            && [self.beta1, self.beta2, self.eps, self.weight_decay, self.grad_clip].iter().all(|x| x.is_finite());
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!("AdamW needs betas in [0, 1), eps > 0, weight_decay >= 0, grad_clip >= 0; got {self:?}")))
        }
    }
}

pub struct AdamW<F: Real> {
    pub config: AdamWConfig,
    pub m: Vec<F>,
    pub v: Vec<F>,
    /// Updates done so far (the t of bias correction).
    pub step: u64,
    /// The gradient norm's partial sums of squares, one per span.
    partials: Vec<f64>,
    /// Each parameter's (start, end, decays) in the flat buffers.
    layout: Vec<(usize, usize, bool)>,
}

impl<F: Real> AdamW<F> {
    /// An optimizer for the parameters registered in `store` (register them all first).
    pub fn new(config: AdamWConfig, store: &Store<F>) -> Result<Self> {
        config.validate()?;
        let n = store.param_len();
        let layout = store.params().iter().map(|p| (p.offset, p.offset + p.shape.numel(), p.decay)).collect();
        let (m, v) = (memory::filled(n, F::ZERO, "AdamW's m")?, memory::filled(n, F::ZERO, "AdamW's v")?);
        Ok(AdamW { config, m, v, step: 0, partials: vec![0.0; n.div_ceil(SPAN)], layout })
    }

    /// Bytes reserved by the moment buffers m and v and the optimizer's bookkeeping.
    pub fn capacity_bytes(&self) -> usize {
        (self.m.capacity() + self.v.capacity()) * size_of::<F>()
            + self.partials.capacity() * size_of::<f64>()
            + self.layout.capacity() * size_of::<(usize, usize, bool)>()
    }

    /// One update of every parameter in `store` (the one it was made for) from its gradient.
    /// Returns the gradient norm before clipping. A non-finite norm is an error and leaves
    /// parameters and moments untouched.
    pub fn update(&mut self, store: &mut Store<F>, lr: f64) -> Result<f64> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Invalid(format!("learning rate must be a finite number >= 0, got {lr}")));
        }
        let norm = self.grad_norm(&store.grads[..store.param_len()]);
        if !norm.is_finite() {
            return Err(Error::NonFinite(format!("gradient norm is {norm}")));
        }
        let clip = self.config.grad_clip;
        let clip_scale = if clip > 0.0 && norm > clip { clip / (norm + 1e-6) } else { 1.0 };
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let k = Consts {
            clip: F::from_f64(clip_scale),
            b1: F::from_f64(c.beta1),
            one_minus_b1: F::from_f64(1.0 - c.beta1),
            b2: F::from_f64(c.beta2),
            one_minus_b2: F::from_f64(1.0 - c.beta2),
            step_size: F::from_f64(lr / bc1),
            inv_bc2_sqrt: F::from_f64(1.0 / bc2_sqrt),
            eps: F::from_f64(c.eps),
        };
        let shrink = F::from_f64(1.0 - lr * c.weight_decay);
        let layout = &self.layout;
        let (values, grads) = store.param_buffers_mut();
        for_each_chunk3(values, SPAN, &mut self.m, SPAN, &mut self.v, SPAN, |i, p, m, v| {
            let (start, end) = (i * SPAN, i * SPAN + p.len());
            // Each parameter's part of this span, with its own weight decay.
            for &(lo, hi, decay) in layout.iter().filter(|&&(lo, hi, _)| lo < end && hi > start) {
                let r = lo.max(start) - start..hi.min(end) - start;
                let decay_factor = if decay { shrink } else { F::ONE };
                let g = &grads[start + r.start..start + r.end];
                update_span(&mut p[r.clone()], g, &mut m[r.clone()], &mut v[r], decay_factor, &k);
            }
        });
        Ok(norm)
    }
}

struct Consts<F> {
    clip: F,
    b1: F,
    one_minus_b1: F,
    b2: F,
    one_minus_b2: F,
    step_size: F,
    inv_bc2_sqrt: F,
    eps: F,
}

impl<F: Real> AdamW<F> {
    /// Global L2 norm, accumulated in f64 so it does not depend on the buffer's precision, span
    /// by span in parallel, then the spans' sums in order.
    fn grad_norm(&mut self, grads: &[F]) -> f64 {
        for_each_chunk(&mut self.partials, 1, |i, sum| {
            let span = &grads[i * SPAN..((i + 1) * SPAN).min(grads.len())];
            sum[0] = span.iter().map(|&g| g.to_f64() * g.to_f64()).sum::<f64>();
        });
        self.partials.iter().sum::<f64>().sqrt()
    }
}

fn update_span<F: Real>(p: &mut [F], g: &[F], m: &mut [F], v: &mut [F], decay_factor: F, k: &Consts<F>) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.clip;
        *p *= decay_factor;
        *m = k.b1 * *m + k.one_minus_b1 * g;
        *v = k.b2 * *v + k.one_minus_b2 * g * g;
        *p -= k.step_size * *m / ((*v).sqrt() * k.inv_bc2_sqrt + k.eps);
    }
}
