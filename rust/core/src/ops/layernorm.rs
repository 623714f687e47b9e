//! Layer normalisation over the last dimension: out = (x - mean) * rstd * gamma + beta.
//! Shapes: x (..., C), gamma (C), beta (C), out like x, stats (N, 2) = (mean, rstd) per row,
//! saved so backward need not recompute them; partials (GROUPS, 2C) is backward's scratch (in
//! its gradient slot) for per-group sums of dgamma and dbeta. Rows run in parallel; the fixed
//! number of groups makes those sums independent of the thread count.

use crate::error::{shape_err, Result};
use crate::op::{require_distinct, Op};
use crate::parallel::{for_each_chunk2, rows_per_task};
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Shape, Slots, Store, Var};

pub const EPS: f64 = 1e-5;
/// Row groups whose dgamma/dbeta partial sums backward adds up in a fixed order.
const GROUPS: usize = 16;

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var, gamma: Var, beta: Var) -> Result<(Var, Op)> {
    let xs = store.float_shape(x)?;
    let c = xs.last();
    for (name, v) in [("gamma", gamma), ("beta", beta)] {
        let s = store.float_shape(v)?;
        if s.dims() != [c] {
            return shape_err!("layernorm {name} must have shape [{c}] to match input {:?}, got {:?}", xs.dims(), s.dims());
        }
    }
    if xs.ndim() == 0 || c == 0 {
        return shape_err!("layernorm needs a non-empty last dimension, got {:?}", xs.dims());
    }
    require_distinct(&[x, gamma, beta], "layernorm")?;
    let out = store.alloc(xs)?;
    let stats = store.alloc_slots(Shape::new(&[xs.rows(), 2])?, Slots::ValueOnly)?;
    let partials = store.alloc_slots(Shape::new(&[GROUPS, 2 * c])?, Slots::GradOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, st] = w.many([out, stats]);
    forward(r.f(x), r.f(gamma), r.f(beta), o, st, c);
    Ok((out, Op::LayerNorm { x, gamma, beta, out, stats, partials }))
}

pub(crate) fn forward<F: Real>(x: &[F], gamma: &[F], beta: &[F], out: &mut [F], stats: &mut [F], c: usize) {
    let inv_c = F::from_f64(1.0 / c as f64);
    let eps = F::from_f64(EPS);
    let rows = rows_per_task(stats.len() / 2);
    for_each_chunk2(out, rows * c, stats, rows * 2, |i, out, stats| {
        let x = &x[i * rows * c..];
        for ((xr, or), st) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).zip(stats.chunks_exact_mut(2)) {
            let mean = xr.iter().copied().sum::<F>() * inv_c;
            let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<F>() * inv_c;
            let rstd = F::ONE / (var + eps).sqrt();
            normalise_row(xr, gamma, beta, or, mean, rstd);
            st[0] = mean;
            st[1] = rstd;
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, gamma: Var, beta: Var, out: Var, stats: Var, partials: Var) {
    let c = s.shape_of(gamma).numel();
    let n = s.shape_of(stats).dims()[0];
    let (r, [dout, partials, dx, dgamma, dbeta]) = s.backward_io([out, partials, x, gamma, beta]);
    let (xv, gv, st) = (r.f(x), r.f(gamma), r.f(stats));
    let inv_c = F::from_f64(1.0 / c as f64);
    let rows = n.div_ceil(GROUPS).max(1);
    partials.fill(F::ZERO);
    let dout = &*dout;
    for_each_chunk2(dx, rows * c, partials, 2 * c, |i, dx, part| {
        let (dout, xv, st) = (&dout[i * rows * c..], &xv[i * rows * c..], &st[i * rows * 2..]);
        let (pg, pb) = part.split_at_mut(c);
        for (((xr, dr), dxr), st) in xv.chunks_exact(c).zip(dout.chunks_exact(c)).zip(dx.chunks_exact_mut(c)).zip(st.chunks_exact(2)) {
            let (mean, rstd) = (st[0], st[1]);
            // With n = normalised x and dn = dout * gamma:
            // dx = rstd * (dn - mean(dn) - n * mean(dn * n)).
            let mut mean_dn = F::ZERO;
            let mut mean_dn_n = F::ZERO;
            for ((&v, &d), &g) in xr.iter().zip(dr).zip(gv) {
                let nv = (v - mean) * rstd;
                mean_dn += d * g;
                mean_dn_n += d * g * nv;
            }
            mean_dn *= inv_c;
            mean_dn_n *= inv_c;
            backward_row(xr, dr, gv, dxr, pg, pb, [mean, rstd, mean_dn, mean_dn_n]);
        }
    });
    for part in partials.chunks_exact(2 * c) {
        let (pg, pb) = part.split_at(c);
        dgamma.iter_mut().zip(pg).for_each(|(g, &p)| *g += p);
        dbeta.iter_mut().zip(pb).for_each(|(g, &p)| *g += p);
    }
}

simd_loop! {
    /// out = (x - mean) * rstd * gamma + beta, one row.
    fn normalise_row<F: Real>(x: &[F], gamma: &[F], beta: &[F], out: &mut [F], mean: F, rstd: F) {
        for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
            *o = (v - mean) * rstd * g + b;
        }
    }
}

simd_loop! {
    /// One row's dx, and its terms of dgamma (pg) and dbeta (pb); `m` is (mean, rstd, mean(dn),
    /// mean(dn * n)).
    fn backward_row<F: Real>(x: &[F], dout: &[F], gamma: &[F], dx: &mut [F], pg: &mut [F], pb: &mut [F], m: [F; 4]) {
        let [mean, rstd, mean_dn, mean_dn_n] = m;
        let rows = x.iter().zip(dout).zip(gamma).zip(dx.iter_mut()).zip(pg.iter_mut()).zip(pb.iter_mut());
        for (((((&v, &d), &g), dx), pg), pb) in rows {
            let nv = (v - mean) * rstd;
            *pg += d * nv;
            *pb += d;
            *dx += rstd * (d * g - mean_dn - nv * mean_dn_n);
        }
    }
}
