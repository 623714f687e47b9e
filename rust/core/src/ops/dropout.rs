//! Dropout: out = x * mask, mask = 0 with probability p, else 1 / (1 - p). The mask comes from
//! the graph's seeded generator, so a run is deterministic and a resumed run draws the same masks.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::real::Real;
use crate::rng::Rng;
use crate::store::{Slots, Store, Var};

/// Identity (nothing recorded) when `p == 0`.
pub(crate) fn record<F: Real>(store: &mut Store<F>, rng: &mut Rng, x: Var, p: f64) -> Result<(Var, Option<Op>)> {
    let shape = store.float_shape(x)?;
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Invalid(format!("dropout probability must be in [0, 1), got {p}")));
    }
    if p == 0.0 {
        return Ok((x, None));
    }
    let out = store.alloc(shape)?;
    let mask = store.alloc_slots(shape, Slots::ValueOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, m] = w.many([out, mask]);
    let keep = F::from_f64(1.0 / (1.0 - p));
    for ((o, m), &v) in o.iter_mut().zip(m.iter_mut()).zip(r.f(x)) {
        *m = if rng.uniform() < p { F::ZERO } else { keep };
        *o = v * *m;
    }
    Ok((out, Some(Op::Dropout { x, out, mask })))
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, out: Var, mask: Var) {
    let (r, [dout, dx]) = s.backward_io([out, x]);
    for ((g, &d), &m) in dx.iter_mut().zip(dout.iter()).zip(r.f(mask)) {
        *g += d * m;
    }
}
