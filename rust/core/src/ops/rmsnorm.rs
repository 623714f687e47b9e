//! RMS normalisation over the last dimension: out = x * rstd * gain, rstd = 1 / sqrt(mean(x^2) + eps).
//! No mean is subtracted and there is no bias (as in T5, Llama). Shapes: x (..., C), gain (C), out
//! like x, stats (N) the rstd of each row, saved for backward; partials (GROUPS, C) is backward's
//! scratch (in its gradient slot) for per-group sums of dgain. Rows run in parallel; the fixed
//! number of groups makes those sums independent of the thread count. The row kernels are also
//! QK-norm's (`qk_norm.rs`), which normalises each head's query and key.

use crate::error::{shape_err, Result};
use crate::op::{require_distinct, Op};
use crate::ops::layernorm::EPS;
use crate::parallel::{for_each_chunk2, rows_per_task};
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Shape, Slots, Store, Var};

/// Row groups whose dgain partial sums backward adds up in a fixed order.
pub(crate) const GROUPS: usize = 16;

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var, gain: Var) -> Result<(Var, Op)> {
    let xs = store.float_shape(x)?;
    let c = xs.last();
    let gs = store.float_shape(gain)?;
    if gs.dims() != [c] {
        return shape_err!("rmsnorm gain must have shape [{c}] to match input {:?}, got {:?}", xs.dims(), gs.dims());
    }
    if xs.ndim() == 0 || c == 0 {
        return shape_err!("rmsnorm needs a non-empty last dimension, got {:?}", xs.dims());
    }
    require_distinct(&[x, gain], "rmsnorm")?;
    let out = store.alloc(xs)?;
    let stats = store.alloc_slots(Shape::new(&[xs.rows()])?, Slots::ValueOnly)?;
    let partials = store.alloc_slots(Shape::new(&[GROUPS, c])?, Slots::GradOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, st] = w.many([out, stats]);
    forward(r.f(x), r.f(gain), o, st, c);
    Ok((out, Op::RmsNorm { x, gain, out, stats, partials }))
}

pub(crate) fn forward<F: Real>(x: &[F], gain: &[F], out: &mut [F], stats: &mut [F], c: usize) {
    let rows = rows_per_task(stats.len());
    for_each_chunk2(out, rows * c, stats, rows, |i, out, stats| {
        let x = &x[i * rows * c..];
        for ((xr, or), st) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).zip(stats.iter_mut()) {
            *st = rstd(xr);
            normalise_row(xr, gain, or, *st);
        }
    });
}

/// 1 / sqrt(mean(x^2) + eps) of one row.
pub(crate) fn rstd<F: Real>(x: &[F]) -> F {
    let ms = x.iter().map(|&v| v * v).sum::<F>() * F::from_f64(1.0 / x.len() as f64);
    F::ONE / (ms + F::from_f64(EPS)).sqrt()
}

simd_loop! {
    /// out = x * rstd * gain, one row.
    pub(crate) fn normalise_row<F: Real>(x: &[F], gain: &[F], out: &mut [F], rstd: F) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(gain) {
            *o = v * rstd * g;
        }
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, gain: Var, out: Var, stats: Var, partials: Var) {
    let c = s.shape_of(gain).numel();
    let n = s.shape_of(stats).numel();
    let (r, [dout, partials, dx, dgain]) = s.backward_io([out, partials, x, gain]);
    let (xv, gv, st) = (r.f(x), r.f(gain), r.f(stats));
    let rows = n.div_ceil(GROUPS).max(1);
    partials.fill(F::ZERO);
    let dout = &*dout;
    for_each_chunk2(dx, rows * c, partials, c, |i, dx, pg| {
        let (dout, xv, st) = (&dout[i * rows * c..], &xv[i * rows * c..], &st[i * rows..]);
        for (((xr, dr), dxr), &rs) in xv.chunks_exact(c).zip(dout.chunks_exact(c)).zip(dx.chunks_exact_mut(c)).zip(st) {
            backward_row(xr, dr, gv, dxr, pg, rs);
        }
    });
    for pg in partials.chunks_exact(c) {
        dgain.iter_mut().zip(pg).for_each(|(g, &p)| *g += p);
    }
}

/// One row's dx (added), and its terms of dgain added to `pg`. With n = x * rstd and
/// dn = dout * gain: dx = rstd * (dn - n * mean(dn * n)).
pub(crate) fn backward_row<F: Real>(x: &[F], dout: &[F], gain: &[F], dx: &mut [F], pg: &mut [F], rstd: F) {
    let dot: F = x.iter().zip(dout).zip(gain).map(|((&v, &d), &g)| d * g * v * rstd).sum();
    backward_span(x, dout, gain, dx, pg, [rstd, dot * F::from_f64(1.0 / x.len() as f64)]);
}

simd_loop! {
    /// `m` is (rstd, mean(dn * n)).
    fn backward_span<F: Real>(x: &[F], dout: &[F], gain: &[F], dx: &mut [F], pg: &mut [F], m: [F; 2]) {
        let [rstd, mean_dn_n] = m;
        for ((((&v, &d), &g), dx), pg) in x.iter().zip(dout).zip(gain).zip(dx.iter_mut()).zip(pg.iter_mut()) {
            let nv = v * rstd;
            *pg += d * nv;
            *dx += rstd * (d * g - nv * mean_dn_n);
        }
    }
}
