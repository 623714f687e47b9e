//! Causal multi-head self-attention core: softmax(Q K^T / sqrt(hs), causal) V, per (b, h).
//! Shapes: qkv (B, T, 3C) with q, k, v side by side in the channels as GPT-2 lays them out;
//! out (B, T, C); probs (B, H, T, T) the attention weights saved for backward (zero above the
//! diagonal); scratch (B, T, T) working space for backward (it lives in its gradient slot).
//! Batch elements run in parallel; heads within one run in order.
//! Heads are read in place through BLAS leading dimensions, never copied.

use crate::blas::gemm;
use crate::error::{shape_err, Result};
use crate::graph::{Graph, Op};
use crate::parallel::for_each_chunk2;
use crate::real::Real;
use crate::store::{Shape, Store, Var};

impl<F: Real> Graph<F> {
    pub fn attention(&mut self, qkv: Var, n_head: usize) -> Result<Var> {
        let qs = self.store.float_shape(qkv)?;
        if qs.ndim() != 3 || qs.dims()[2] % 3 != 0 {
            return shape_err!("attention input must be (B, T, 3C), got {:?}", qs.dims());
        }
        let (b, t, c) = (qs.dims()[0], qs.dims()[1], qs.dims()[2] / 3);
        if n_head == 0 || c % n_head != 0 {
            return shape_err!("attention: {n_head} heads do not divide {c} channels");
        }
        if b * t * c == 0 {
            return shape_err!("attention input must not be empty, got {:?}", qs.dims());
        }
        let out = self.store.alloc(Shape::new(&[b, t, c])?);
        let probs = self.store.alloc(Shape::new(&[b, n_head, t, t])?);
        let scratch = self.store.alloc(Shape::new(&[b, t, t])?);
        let (r, mut w) = self.store.forward_io(out);
        let [o, p] = w.many([out, probs]);
        forward(r.f(qkv), o, p, b, t, c, n_head);
        self.tape.push(Op::Attention { qkv, n_head, out, probs, scratch });
        Ok(out)
    }
}

fn forward<F: Real>(qkv: &[F], out: &mut [F], probs: &mut [F], b: usize, t: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    debug_assert_eq!(out.len(), b * t * c);
    for_each_chunk2(out, t * c, probs, nh * t * t, |bi, out, probs| {
        let x = &qkv[bi * t * 3 * c..(bi + 1) * t * 3 * c];
        for h in 0..nh {
            let base = h * hs; // q of head h at time 0; k at +c, v at +2c
            let p = &mut probs[h * t * t..(h + 1) * t * t];
            // P (T, T) = scale * Q K^T
            gemm(false, true, t, t, hs, scale, &x[base..], 3 * c, &x[base + c..], 3 * c, F::ZERO, p, t);
            for (i, row) in p.chunks_exact_mut(t).enumerate() {
                causal_softmax_row(row, i);
            }
            // out[:, h] (T, hs) = P V
            gemm(false, false, t, hs, t, F::ONE, p, t, &x[base + 2 * c..], 3 * c, F::ZERO, &mut out[base..], c);
        }
    });
}

/// Softmax over row[..=i]; entries after i (the future) become exactly zero.
pub(crate) fn causal_softmax_row<F: Real>(row: &mut [F], i: usize) {
    let (past, future) = row.split_at_mut(i + 1);
    let max = past.iter().copied().fold(F::NEG_INFINITY, F::max);
    let mut sum = F::ZERO;
    for x in past.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = F::ONE / sum;
    past.iter_mut().for_each(|x| *x *= inv);
    future.fill(F::ZERO);
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, qkv: Var, nh: usize, out: Var, probs: Var, scratch: Var) {
    let dims = s.shape_of(probs);
    let t = dims.dims()[2];
    let c = s.shape_of(out).last();
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    let (r, mut inputs, mut own) = s.backward_io(out);
    let [dout, scratch] = own.many([out, scratch]);
    let dqkv = inputs.one(qkv);
    let (dout, qkv, probs) = (&*dout, r.f(qkv), r.f(probs));
    for_each_chunk2(dqkv, t * 3 * c, scratch, t * t, |bi, dx, dp| {
        let x = &qkv[bi * t * 3 * c..(bi + 1) * t * 3 * c];
        let dout = &dout[bi * t * c..(bi + 1) * t * c];
        let probs = &probs[bi * nh * t * t..(bi + 1) * nh * t * t];
        for h in 0..nh {
            let base = h * hs;
            let p = &probs[h * t * t..(h + 1) * t * t];
            let dout_h = &dout[base..];
            // dP (T, T) = dO V^T
            gemm(false, true, t, t, hs, F::ONE, dout_h, c, &x[base + 2 * c..], 3 * c, F::ZERO, dp, t);
            // dV (T, hs) += P^T dO
            gemm(true, false, t, hs, t, F::ONE, p, t, dout_h, c, F::ONE, &mut dx[base + 2 * c..], 3 * c);
            // Softmax backward in place: dS = P * (dP - rowsum(dP * P)); zero where P is masked.
            for (drow, prow) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                let dot: F = drow.iter().zip(prow).map(|(&d, &q)| d * q).sum();
                drow.iter_mut().zip(prow).for_each(|(d, &q)| *d = q * (*d - dot));
            }
            // dQ (T, hs) += scale dS K;  dK (T, hs) += scale dS^T Q
            gemm(false, false, t, hs, t, scale, dp, t, &x[base + c..], 3 * c, F::ONE, &mut dx[base..], 3 * c);
            gemm(true, false, t, hs, t, scale, dp, t, &x[base..], 3 * c, F::ONE, &mut dx[base + c..], 3 * c);
        }
    });
}
