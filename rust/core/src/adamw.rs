//! AdamW (Loshchilov & Hutter) as one fused pass over the flat parameter buffers, with bias
//! correction and decoupled weight decay on 2-D weights only (clipping is `grad_clip`'s).
//! The moments m and v are flat buffers parallel to the parameters, so a checkpoint can read and
//! write them as plain arrays. The pass runs in parallel over fixed spans of the buffers, so
//! results never depend on the thread count.

use crate::error::{Error, Result};
use crate::memory;
use crate::optimizer::{unknown_state, Optimizer};
use crate::parallel::for_each_chunk3;
use crate::real::Real;
use crate::store::{ParamInfo, Store};

/// Elements per span of the parallel pass.
const SPAN: usize = 1 << 15;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's AdamW defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::Invalid(format!("{name} must be in [0, 1) (AdamW's betas), got {beta}")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::Invalid(format!("eps must be a finite number > 0, got {}", self.eps)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Invalid(format!("weight_decay must be a finite number >= 0, got {}", self.weight_decay)));
        }
        Ok(())
    }
}

pub struct AdamW<F: Real> {
    pub config: AdamWConfig,
    m: Vec<F>,
    v: Vec<F>,
    /// Updates done so far (the t of bias correction).
    step: u64,
    /// Each parameter's (start, end, decays) in the flat buffers.
    layout: Vec<(usize, usize, bool)>,
}

/// AdamW's state buffers: the first and second moments.
pub const STATE: [&str; 2] = ["adam_m", "adam_v"];

impl<F: Real> AdamW<F> {
    /// An optimizer for the parameters registered in `store` (register them all first).
    pub fn new(config: AdamWConfig, store: &Store<F>) -> Result<Self> {
        Self::for_params(config, store, |_| true)
    }

    /// An optimizer for those parameters of `store` that `mine` picks; it never touches the others
    /// (another optimizer's, Muon's matrices), whose parts of m and v stay zero.
    pub fn for_params(config: AdamWConfig, store: &Store<F>, mine: impl Fn(&ParamInfo) -> bool) -> Result<Self> {
        config.validate()?;
        let n = store.param_len();
        let layout = store.params().iter().filter(|p| mine(p)).map(|p| (p.offset, p.offset + p.shape.numel(), p.decay)).collect();
        let (m, v) = (memory::filled(n, F::ZERO, "AdamW's m")?, memory::filled(n, F::ZERO, "AdamW's v")?);
        Ok(AdamW { config, m, v, step: 0, layout })
    }
}

impl<F: Real> Optimizer<F> for AdamW<F> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn update(&mut self, params: &mut [F], grads: &[F], lr: f64, grad_scale: f64) {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let k = Consts {
            clip: F::from_f64(grad_scale),
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
        for_each_chunk3(params, SPAN, &mut self.m, SPAN, &mut self.v, SPAN, |i, p, m, v| {
            let (start, end) = (i * SPAN, i * SPAN + p.len());
            // Each parameter's part of this span, with its own weight decay.
            for &(lo, hi, decay) in layout.iter().filter(|&&(lo, hi, _)| lo < end && hi > start) {
                let r = lo.max(start) - start..hi.min(end) - start;
                let decay_factor = if decay { shrink } else { F::ONE };
                let g = &grads[start + r.start..start + r.end];
                update_span(&mut p[r.clone()], g, &mut m[r.clone()], &mut v[r], decay_factor, &k);
            }
        });
    }

    fn state_names(&self) -> &'static [&'static str] {
        &STATE
    }

    fn state(&self, name: &str) -> Result<&[F]> {
        match name {
            "adam_m" => Ok(&self.m),
            "adam_v" => Ok(&self.v),
            _ => Err(unknown_state("adamw", name, &STATE)),
        }
    }

    fn state_mut(&mut self, name: &str) -> Result<&mut [F]> {
        match name {
            "adam_m" => Ok(&mut self.m),
            "adam_v" => Ok(&mut self.v),
            _ => Err(unknown_state("adamw", name, &STATE)),
        }
    }

    fn check_state(&self, name: &str, values: &[F]) -> Result<()> {
        if name == "adam_v" && values.iter().any(|&x| x < F::ZERO) {
            return Err(Error::Invalid("AdamW's v must be non-negative".into()));
        }
        Ok(())
    }

    fn step(&self) -> u64 {
        self.step
    }

    fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    fn settings(&self) -> Vec<(&'static str, f64)> {
        let c = &self.config;
        vec![("beta1", c.beta1), ("beta2", c.beta2), ("eps", c.eps), ("weight_decay", c.weight_decay)]
    }

    fn capacity_bytes(&self) -> usize {
        (self.m.capacity() + self.v.capacity()) * size_of::<F>() + self.layout.capacity() * size_of::<(usize, usize, bool)>()
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

fn update_span<F: Real>(p: &mut [F], g: &[F], m: &mut [F], v: &mut [F], decay_factor: F, k: &Consts<F>) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.clip;
        *p *= decay_factor;
        *m = k.b1 * *m + k.one_minus_b1 * g;
        *v = k.b2 * *v + k.one_minus_b2 * g * g;
        *p -= k.step_size * *m / ((*v).sqrt() * k.inv_bc2_sqrt + k.eps);
    }
}
