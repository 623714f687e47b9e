//! QK-norm: RMS normalisation of every head's query and key vector, with learnable gains (one per
//! head channel, shared by the heads: q_gain and k_gain, (hs)), before the scores are taken, so
//! their size cannot grow without bound. Values pass through unchanged. It runs on the fused qkv
//! tensor (B, T, 3C) of `attention`, with `rmsnorm`'s row kernels. Shapes: out like qkv, stats
//! (B * T, 2H) the rstd of each query and key head, partials (GROUPS, 2 hs) backward's scratch
//! for per-group sums of dq_gain and dk_gain.

use crate::error::{shape_err, Result};
use crate::op::{require_distinct, Op};
use crate::ops::rmsnorm::{backward_row, normalise_row, rstd, GROUPS};
use crate::parallel::{for_each_chunk2, rows_per_task};
use crate::real::Real;
use crate::store::{Shape, Slots, Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, qkv: Var, q_gain: Var, k_gain: Var, n_head: usize) -> Result<(Var, Op)> {
    let qs = store.float_shape(qkv)?;
    if qs.ndim() == 0 || qs.last() % 3 != 0 || qs.numel() == 0 {
        return shape_err!("qk_norm input must be a non-empty (..., 3C), got {:?}", qs.dims());
    }
    let c = qs.last() / 3;
    if n_head == 0 || c % n_head != 0 {
        return shape_err!("qk_norm: {n_head} heads do not divide {c} channels");
    }
    let hs = c / n_head;
    for (name, v) in [("q_gain", q_gain), ("k_gain", k_gain)] {
        let s = store.float_shape(v)?;
        if s.dims() != [hs] {
            return shape_err!("qk_norm {name} must have the head size's shape [{hs}], got {:?}", s.dims());
        }
    }
    require_distinct(&[qkv, q_gain, k_gain], "qk_norm")?;
    let out = store.alloc(qs)?;
    let stats = store.alloc_slots(Shape::new(&[qs.rows(), 2 * n_head])?, Slots::ValueOnly)?;
    let partials = store.alloc_slots(Shape::new(&[GROUPS, 2 * hs])?, Slots::GradOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, st] = w.many([out, stats]);
    forward(r.f(qkv), r.f(q_gain), r.f(k_gain), o, st, n_head);
    Ok((out, Op::QkNorm { qkv, q_gain, k_gain, n_head, out, stats, partials }))
}

/// Rows of (3C) channels: q and k heads normalised, v copied; `stats` gets each head's rstd.
pub(crate) fn forward<F: Real>(qkv: &[F], q_gain: &[F], k_gain: &[F], out: &mut [F], stats: &mut [F], n_head: usize) {
    let hs = q_gain.len();
    let c = hs * n_head;
    let rows = rows_per_task(stats.len() / (2 * n_head));
    for_each_chunk2(out, rows * 3 * c, stats, rows * 2 * n_head, |i, out, stats| {
        let x = &qkv[i * rows * 3 * c..];
        for ((xr, or), st) in x.chunks_exact(3 * c).zip(out.chunks_exact_mut(3 * c)).zip(stats.chunks_exact_mut(2 * n_head)) {
            let heads = xr[..2 * c].chunks_exact(hs).zip(or[..2 * c].chunks_exact_mut(hs)).zip(st.iter_mut());
            for (j, ((xh, oh), st)) in heads.enumerate() {
                *st = rstd(xh);
                normalise_row(xh, if j < n_head { q_gain } else { k_gain }, oh, *st);
            }
            or[2 * c..].copy_from_slice(&xr[2 * c..]);
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<F: Real>(s: &mut Store<F>, qkv: Var, q_gain: Var, k_gain: Var, n_head: usize, out: Var, stats: Var, partials: Var) {
    let hs = s.shape_of(q_gain).numel();
    let c = hs * n_head;
    let n = s.shape_of(stats).dims()[0];
    let (r, [dout, partials, dx, dq_gain, dk_gain]) = s.backward_io([out, partials, qkv, q_gain, k_gain]);
    let (xv, qg, kg, st) = (r.f(qkv), r.f(q_gain), r.f(k_gain), r.f(stats));
    let rows = n.div_ceil(GROUPS).max(1);
    partials.fill(F::ZERO);
    let dout = &*dout;
    for_each_chunk2(dx, rows * 3 * c, partials, 2 * hs, |i, dx, part| {
        let (dout, xv, st) = (&dout[i * rows * 3 * c..], &xv[i * rows * 3 * c..], &st[i * rows * 2 * n_head..]);
        let (pq, pk) = part.split_at_mut(hs);
        let rows = xv.chunks_exact(3 * c).zip(dout.chunks_exact(3 * c)).zip(dx.chunks_exact_mut(3 * c)).zip(st.chunks_exact(2 * n_head));
        for (((xr, dr), dxr), st) in rows {
            let heads = xr[..2 * c].chunks_exact(hs).zip(dr[..2 * c].chunks_exact(hs)).zip(dxr[..2 * c].chunks_exact_mut(hs));
            for (j, ((xh, dh), dxh)) in heads.enumerate() {
                let (gain, pg) = if j < n_head { (qg, &mut *pq) } else { (kg, &mut *pk) };
                backward_row(xh, dh, gain, dxh, pg, st[j]);
            }
            dxr[2 * c..].iter_mut().zip(&dr[2 * c..]).for_each(|(g, &d)| *g += d);
        }
    });
    for part in partials.chunks_exact(2 * hs) {
        let (pq, pk) = part.split_at(hs);
        dq_gain.iter_mut().zip(pq).for_each(|(g, &p)| *g += p);
        dk_gain.iter_mut().zip(pk).for_each(|(g, &p)| *g += p);
    }
}
