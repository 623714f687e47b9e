//! Logit soft-capping (Gemma 2, modded-nanogpt): cap * tanh(x / cap), elementwise, so no logit
//! leaves (-cap, cap) yet small ones pass almost unchanged. Backward reads the output:
//! d/dx = 1 - (out / cap)^2.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::parallel::elementwise;
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var, cap: f64) -> Result<(Var, Op)> {
    if !(cap.is_finite() && cap > 0.0) {
        return Err(Error::Invalid(format!("softcap: the cap must be a finite number > 0, got {cap}")));
    }
    let shape = store.float_shape(x)?;
    let out = store.alloc(shape)?;
    let (r, mut w) = store.forward_io(out);
    let o = w.one(out);
    o.copy_from_slice(r.f(x));
    forward(o, cap);
    Ok((out, Op::Softcap { x, cap, out }))
}

/// Cap `xs` in place.
pub(crate) fn forward<F: Real>(xs: &mut [F], cap: f64) {
    elementwise(xs, |_, xs| cap_span(xs, F::from_f64(cap), F::from_f64(1.0 / cap)));
}

simd_loop! {
    fn cap_span<F: Real>(xs: &mut [F], cap: F, inv_cap: F) {
        for x in xs {
            *x = cap * (*x * inv_cap).tanh();
        }
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, cap: f64, out: Var) {
    let (r, [dout, dx]) = s.backward_io([out, x]);
    let (dout, ov) = (&*dout, r.f(out));
    let inv_cap = F::from_f64(1.0 / cap);
    elementwise(dx, |at, dx| backward_span(&dout[at..], &ov[at..], dx, inv_cap));
}

simd_loop! {
    fn backward_span<F: Real>(dout: &[F], out: &[F], dx: &mut [F], inv_cap: F) {
        for ((g, &d), &o) in dx.iter_mut().zip(dout).zip(out) {
            let t = o * inv_cap;
            *g += d * (F::ONE - t * t);
        }
    }
}
