//! GELU, tanh approximation (as in GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

use crate::error::Result;
use crate::op::Op;
use crate::parallel::elementwise;
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Store, Var};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC: f64 = 0.044_715;

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var) -> Result<(Var, Op)> {
    let shape = store.float_shape(x)?;
    let out = store.alloc(shape)?;
    let (r, mut w) = store.forward_io(out);
    forward(r.f(x), w.one(out));
    Ok((out, Op::Gelu { x, out }))
}

pub(crate) fn forward<F: Real>(x: &[F], out: &mut [F]) {
    elementwise(out, |at, out| forward_span(&x[at..], out));
}

simd_loop! {
    fn forward_span<F: Real>(x: &[F], out: &mut [F]) {
        let (s, c, half) = (F::from_f64(SQRT_2_OVER_PI), F::from_f64(CUBIC), F::from_f64(0.5));
        for (o, &v) in out.iter_mut().zip(x) {
            *o = half * v * (F::ONE + (s * (v + c * v * v * v)).tanh());
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
        let (k, c, half) = (F::from_f64(SQRT_2_OVER_PI), F::from_f64(CUBIC), F::from_f64(0.5));
        let three_c = F::from_f64(3.0 * CUBIC);
        for ((g, &d), &v) in dx.iter_mut().zip(dout).zip(x) {
            let t = (k * (v + c * v * v * v)).tanh();
            let dt = k * (F::ONE + three_c * v * v) * (F::ONE - t * t);
            *g += d * (half * (F::ONE + t) + half * v * dt);
        }
    }
}
