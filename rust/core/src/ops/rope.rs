//! Rotary position embeddings (RoPE): every head's query and key vector is rotated by angles that
//! grow with its position, so the score of a query and a key depends on their distance. Channel j
//! of a head's first half pairs with channel j of its second half (the GPT-NeoX layout), rotated
//! by pos * BASE^(-j / half). Values pass through unchanged. It runs on the fused qkv tensor
//! (B, T, 3C) of `attention`, positions 0..T; the KV cache rotates at absolute positions with
//! the same kernels. Shapes: out like qkv, table (T, hs): each position's cos (first half) and
//! sin (second half), saved for backward.

use crate::error::{shape_err, Result};
use crate::op::Op;
use crate::parallel::{for_each_chunk, rows_per_task};
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Shape, Slots, Store, Var};

pub const BASE: f64 = 10_000.0;

pub(crate) fn record<F: Real>(store: &mut Store<F>, qkv: Var, n_head: usize) -> Result<(Var, Op)> {
    let qs = store.float_shape(qkv)?;
    if qs.ndim() != 3 || qs.dims()[2] % 3 != 0 || qs.numel() == 0 {
        return shape_err!("rope input must be a non-empty (B, T, 3C), got {:?}", qs.dims());
    }
    let (t, c) = (qs.dims()[1], qs.dims()[2] / 3);
    if n_head == 0 || c % n_head != 0 || !(c / n_head).is_multiple_of(2) {
        return shape_err!("rope: {n_head} heads must divide {c} channels into heads of an even size");
    }
    let hs = c / n_head;
    let out = store.alloc(qs)?;
    let table = store.alloc_slots(Shape::new(&[t, hs])?, Slots::ValueOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, tab] = w.many([out, table]);
    fill_table(tab, 0, hs);
    o.copy_from_slice(r.f(qkv));
    rotate_rows(o, tab, hs, n_head);
    Ok((out, Op::Rope { qkv, n_head, out, table }))
}

/// Each row of `table` (rows of hs) gets the cos and sin of position first + row.
pub(crate) fn fill_table<F: Real>(table: &mut [F], first: usize, hs: usize) {
    let half = hs / 2;
    for (p, row) in table.chunks_exact_mut(hs).enumerate() {
        let (cos, sin) = row.split_at_mut(half);
        for (j, (c, s)) in cos.iter_mut().zip(sin).enumerate() {
            let angle = (first + p) as f64 * BASE.powf(-(j as f64) / half as f64);
            (*c, *s) = (F::from_f64(angle.cos()), F::from_f64(angle.sin()));
        }
    }
}

/// Rotate, in place, the query and key heads (of size hs) of rows of (3C) channels; row i has
/// the angles of table row i mod (the table's rows).
pub(crate) fn rotate_rows<F: Real>(qkv: &mut [F], table: &[F], hs: usize, n_head: usize) {
    let (c, t) = (hs * n_head, table.len() / hs);
    let rows = rows_per_task(qkv.len() / (3 * c));
    for_each_chunk(qkv, rows * 3 * c, |i, chunk| {
        for (k, row) in chunk.chunks_exact_mut(3 * c).enumerate() {
            rotate_row(&mut row[..2 * c], &table[((i * rows + k) % t) * hs..][..hs]);
        }
    });
}

/// Rotate every head of one row's query and key channels (2C) by one position's angles.
fn rotate_row<F: Real>(qk: &mut [F], angles: &[F]) {
    let (cos, sin) = angles.split_at(angles.len() / 2);
    for head in qk.chunks_exact_mut(angles.len()) {
        let (lo, hi) = head.split_at_mut(cos.len());
        rotate(lo, hi, cos, sin);
    }
}

simd_loop! {
    /// (lo, hi) = (lo cos - hi sin, lo sin + hi cos), in place.
    fn rotate<F: Real>(lo: &mut [F], hi: &mut [F], cos: &[F], sin: &[F]) {
        for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
            let (x, y) = (*a, *b);
            *a = x * c - y * s;
            *b = x * s + y * c;
        }
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, qkv: Var, n_head: usize, out: Var, table: Var) {
    let dims = s.shape_of(qkv);
    let c = dims.last() / 3;
    let hs = c / n_head;
    let t = dims.dims()[1];
    let (r, [dout, dx]) = s.backward_io([out, qkv]);
    let (dout, table) = (&*dout, r.f(table));
    let rows = rows_per_task(dx.len() / (3 * c));
    for_each_chunk(dx, rows * 3 * c, |i, chunk| {
        let dout = &dout[i * rows * 3 * c..];
        for (k, (dxr, dr)) in chunk.chunks_exact_mut(3 * c).zip(dout.chunks_exact(3 * c)).enumerate() {
            let (cos, sin) = table[((i * rows + k) % t) * hs..][..hs].split_at(hs / 2);
            // The rotation's transpose is the rotation by minus the angle.
            for (dxh, dh) in dxr[..2 * c].chunks_exact_mut(hs).zip(dr[..2 * c].chunks_exact(hs)) {
                let (dlo, dhi) = dxh.split_at_mut(hs / 2);
                let (glo, ghi) = dh.split_at(hs / 2);
                unrotate_add(dlo, dhi, glo, ghi, cos, sin);
            }
            dxr[2 * c..].iter_mut().zip(&dr[2 * c..]).for_each(|(g, &d)| *g += d);
        }
    });
}

simd_loop! {
    /// (dlo, dhi) += (glo cos + ghi sin, ghi cos - glo sin).
    fn unrotate_add<F: Real>(dlo: &mut [F], dhi: &mut [F], glo: &[F], ghi: &[F], cos: &[F], sin: &[F]) {
        for (((((a, b), &x), &y), &c), &s) in dlo.iter_mut().zip(dhi.iter_mut()).zip(glo).zip(ghi).zip(cos).zip(sin) {
            *a += x * c + y * s;
            *b += y * c - x * s;
        }
    }
}
