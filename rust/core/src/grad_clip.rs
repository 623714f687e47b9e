//! Global-norm gradient clipping, a step of its own between backward and the optimizer: the L2
//! norm of the flat gradient buffer, and the factor that scales it down to `max_norm` (applied
//! by the optimizer as it reads each gradient, so clipping costs no extra pass over memory).

use crate::error::{Error, Result};
use crate::parallel::for_each_chunk;
use crate::real::Real;

/// Elements per partial sum of the norm: fixed, so the norm never depends on the thread count.
const SPAN: usize = 1 << 15;

pub struct GradClip {
    /// Clip the global norm to this; 0 turns clipping off.
    pub max_norm: f64,
    partials: Vec<f64>,
}

impl GradClip {
    /// Refuse a clipping norm that is not a finite number >= 0.
    pub fn check(max_norm: f64) -> Result<()> {
        if max_norm.is_finite() && max_norm >= 0.0 {
            Ok(())
        } else {
            Err(Error::Invalid(format!("grad_clip must be a finite number >= 0, got {max_norm}")))
        }
    }

    /// For `len` gradient floats.
    pub fn new(max_norm: f64, len: usize) -> Self {
        GradClip { max_norm, partials: vec![0.0; len.div_ceil(SPAN)] }
    }

    /// Global L2 norm, accumulated in f64 so it does not depend on the buffer's precision, span
    /// by span in parallel, then the spans' sums in order.
    pub fn norm<F: Real>(&mut self, grads: &[F]) -> f64 {
        for_each_chunk(&mut self.partials, 1, |i, sum| {
            let span = &grads[i * SPAN..((i + 1) * SPAN).min(grads.len())];
            sum[0] = span.iter().map(|&g| g.to_f64() * g.to_f64()).sum::<f64>();
        });
        self.partials.iter().sum::<f64>().sqrt()
    }

    /// The factor that brings a gradient of norm `norm` down to `max_norm` (1 if it is below).
    pub fn scale(&self, norm: f64) -> f64 {
        if self.max_norm > 0.0 && norm > self.max_norm {
            self.max_norm / (norm + 1e-6)
        } else {
            1.0
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.partials.capacity() * size_of::<f64>()
    }
}
