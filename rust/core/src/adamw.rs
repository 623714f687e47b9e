//! AdamW (Loshchilov & Hutter) as one fused pass over the flat parameter buffers, with bias
//! correction, decoupled weight decay on 2-D weights only, and global-norm gradient clipping.
//! The moments m and v are flat buffers parallel to the parameters, so a checkpoint can read and
//! write them as plain arrays.

use crate::error::{Error, Result};
use crate::real::Real;
use crate::store::Store;

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
}

impl<F: Real> AdamW<F> {
    pub fn new(config: AdamWConfig, n_params: usize) -> Result<Self> {
        config.validate()?;
        Ok(AdamW { config, m: vec![F::ZERO; n_params], v: vec![F::ZERO; n_params], step: 0 })
    }

    /// Bytes reserved by the moment buffers m and v.
    pub fn capacity_bytes(&self) -> usize {
        (self.m.capacity() + self.v.capacity()) * std::mem::size_of::<F>()
    }

    /// One update of every parameter in `store` from its gradient. Returns the gradient norm
    /// before clipping. A non-finite norm is an error and leaves parameters and moments untouched.
    pub fn update(&mut self, store: &mut Store<F>, lr: f64) -> Result<f64> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Invalid(format!("learning rate must be a finite number >= 0, got {lr}")));
        }
        let norm = grad_norm(&store.grads[..store.param_len()]);
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
        let n_params = store.params().len();
        for i in 0..n_params {
            let info = &store.params()[i];
            let (r, decay) = (info.offset..info.offset + info.shape.numel(), info.decay);
            let (values, grads) = store.param_buffers_mut();
            let decay_factor = if decay { shrink } else { F::ONE };
            update_span(&mut values[r.clone()], &grads[r.clone()], &mut self.m[r.clone()], &mut self.v[r], decay_factor, &k);
        }
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

/// Global L2 norm, accumulated in f64 so it does not depend on the buffer's precision.
pub fn grad_norm<F: Real>(grads: &[F]) -> f64 {
    grads.iter().map(|&g| g.to_f64() * g.to_f64()).sum::<f64>().sqrt()
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
