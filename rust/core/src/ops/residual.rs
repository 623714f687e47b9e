//! Elementwise addition, the residual connection: out = a + b (same shapes).

use crate::error::{shape_err, Result};
use crate::op::Op;
use crate::parallel::elementwise;
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, a: Var, b: Var) -> Result<(Var, Op)> {
    let sa = store.float_shape(a)?;
    let sb = store.float_shape(b)?;
    if sa != sb {
        return shape_err!("add needs equal shapes, got {:?} and {:?}", sa.dims(), sb.dims());
    }
    let out = store.alloc(sa)?;
    let (r, mut w) = store.forward_io(out);
    let (o, av, bv) = (w.one(out), r.f(a), r.f(b));
    elementwise(o, |at, o| sum_into(o, &av[at..], &bv[at..]));
    Ok((out, Op::Add { a, b, out }))
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, a: Var, b: Var, out: Var) {
    // One input at a time, so add(x, x) is fine: both contributions accumulate.
    for input in [a, b] {
        let (_, [dout, g]) = s.backward_io([out, input]);
        let dout = &*dout;
        elementwise(g, |at, g| add_into(g, &dout[at..]));
    }
}

simd_loop! {
    fn sum_into<F: Real>(out: &mut [F], a: &[F], b: &[F]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    }
}

simd_loop! {
    /// acc += x, elementwise.
    fn add_into<F: Real>(acc: &mut [F], x: &[F]) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}
