//! ReLU^2 (the "squared ReLU" of Primer, used by modded-nanogpt): max(x, 0)^2, elementwise.
//! Cheaper than GELU (no tanh) and sparse: negative inputs pass no gradient.

use crate::error::Result;
use crate::op::Op;
use crate::parallel::elementwise;
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var) -> Result<(Var, Op)> {
    let shape = store.float_shape(x)?;
    let out = store.alloc(shape)?;
    let (r, mut w) = store.forward_io(out);
    forward(r.f(x), w.one(out));
    Ok((out, Op::ReluSquared { x, out }))
}

pub(crate) fn forward<F: Real>(x: &[F], out: &mut [F]) {
    elementwise(out, |at, out| forward_span(&x[at..], out));
}

simd_loop! {
    fn forward_span<F: Real>(x: &[F], out: &mut [F]) {
        for (o, &v) in out.iter_mut().zip(x) {
            let r = v.max(F::ZERO);
            *o = r * r;
        }
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, out: Var) {
    let (r, [dout, dx]) = s.backward_io([out, x]);
    let (dout, xv) = (&*dout, r.f(x));
    elementwise(dx, |at, dx| backward_span(&dout[at..], &xv[at..], dx));
}

simd_loop! {
    fn backward_span<F: Real>(dout: &[F], x: &[F], dx: &mut [F]) {
        let two = F::from_f64(2.0);
        for ((g, &d), &v) in dx.iter_mut().zip(dout).zip(x) {
            *g += d * two * v.max(F::ZERO);
        }
    }
}
