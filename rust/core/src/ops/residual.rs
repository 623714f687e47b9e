//! Elementwise addition, the residual connection: out = a + b (same shapes).

use crate::error::{shape_err, Result};
use crate::op::Op;
use crate::parallel::{for_each_chunk, rows_per_task};
use crate::real::Real;
use crate::store::{Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, a: Var, b: Var) -> Result<(Var, Op)> {
    let sa = store.float_shape(a)?;
    let sb = store.float_shape(b)?;
    if sa != sb {
        return shape_err!("add needs equal shapes, got {:?} and {:?}", sa.dims(), sb.dims());
    }
    let out = store.alloc(sa)?;
    let (r, mut w) = store.forward_io(out);
    let chunk = rows_per_task(sa.numel()).max(4096);
    let (o, av, bv) = (w.one(out), r.f(a), r.f(b));
    for_each_chunk(o, chunk, |i, o| {
        o.iter_mut().zip(&av[i * chunk..]).zip(&bv[i * chunk..]).for_each(|((o, &x), &y)| *o = x + y);
    });
    Ok((out, Op::Add { a, b, out }))
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, a: Var, b: Var, out: Var) {
    // One input at a time, so add(x, x) is fine: both contributions accumulate.
    for input in [a, b] {
        let (_, [dout, g]) = s.backward_io([out, input]);
        g.iter_mut().zip(dout.iter()).for_each(|(g, &d)| *g += d);
    }
}
