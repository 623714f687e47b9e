//! Causal multi-head self-attention core: softmax(Q K^T / sqrt(hs), causal) V, per (b, h).
//! Shapes: qkv (B, T, 3C) with q, k, v side by side in the channels as GPT-2 lays them out;
//! out (B, T, C); lse (B, H, T) each score row's log-sum-exp, saved for backward.
//! Flash-style memory: the (T, T) attention matrix is never stored for the whole batch. Each
//! task (a group of batch elements, run in parallel) works in one (T, T) tile in forward and two
//! in backward, and backward recomputes the probabilities from Q, K and lse. Heads are read in
//! place through BLAS leading dimensions, never copied. Only the causal part (j <= i) of each
//! score row is exponentiated.

use crate::blas::gemm;
use crate::error::{shape_err, Result};
use crate::graph::{Graph, Op};
use crate::parallel::{for_each_chunk2, for_each_chunk3, rows_per_task};
use crate::real::Real;
use crate::store::{Shape, Slots, Store, Var};

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
        let tasks = b.div_ceil(rows_per_task(b));
        let out = self.store.alloc(Shape::new(&[b, t, c])?);
        let lse = self.store.alloc_slots(Shape::new(&[b, n_head, t])?, Slots::ValueOnly);
        let fwd_tiles = self.store.alloc_slots(Shape::new(&[tasks, t, t])?, Slots::ValueOnly);
        let bwd_tiles = self.store.alloc_slots(Shape::new(&[tasks, 2, t, t])?, Slots::GradOnly);
        let (r, mut w) = self.store.forward_io(out);
        let [o, l, tiles] = w.many([out, lse, fwd_tiles]);
        forward(r.f(qkv), o, l, tiles, Dims { b, t, c, nh: n_head });
        self.tape.push(Op::Attention { qkv, n_head, out, lse, bwd_tiles });
        Ok(out)
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
}

fn forward<F: Real>(qkv: &[F], out: &mut [F], lse: &mut [F], tiles: &mut [F], d: Dims) {
    let Dims { b, t, c, nh } = d;
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    let per_task = rows_per_task(b);
    for_each_chunk3(out, per_task * t * c, lse, per_task * nh * t, tiles, t * t, |task, out, lse, p| {
        for (j, (out, lse)) in out.chunks_exact_mut(t * c).zip(lse.chunks_exact_mut(nh * t)).enumerate() {
            let bi = task * per_task + j;
            let x = &qkv[bi * t * 3 * c..(bi + 1) * t * 3 * c];
            for h in 0..nh {
                let q = h * hs; // q of head h at time 0; its k at q + c, its v at q + 2c
                // P (T, T) = scale * Q K^T, then the causal softmax of each row
                gemm(false, true, t, t, hs, scale, &x[q..], 3 * c, &x[q + c..], 3 * c, F::ZERO, p, t);
                for (i, row) in p.chunks_exact_mut(t).enumerate() {
                    lse[h * t + i] = causal_softmax_row(row, i);
                }
                // out[:, h] (T, hs) = P V
                gemm(false, false, t, hs, t, F::ONE, p, t, &x[q + 2 * c..], 3 * c, F::ZERO, &mut out[q..], c);
            }
        }
    });
}

/// Softmax over row[..=i] in place; entries after i (the future) become exactly zero.
/// Returns the log-sum-exp of the scores row[..=i].
pub(crate) fn causal_softmax_row<F: Real>(row: &mut [F], i: usize) -> F {
    let (past, future) = row.split_at_mut(i + 1);
    let max = past.iter().copied().fold(F::NEG_INFINITY, F::max);
    // Exponentiate, then add up, in two passes: the first vectorises.
    past.iter_mut().for_each(|x| *x = (*x - max).exp());
    let sum: F = past.iter().copied().sum();
    let inv = F::ONE / sum;
    past.iter_mut().for_each(|x| *x *= inv);
    future.fill(F::ZERO);
    max + sum.ln()
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, qkv: Var, nh: usize, out: Var, lse: Var, bwd_tiles: Var) {
    let dims = s.shape_of(qkv);
    let (b, t, c) = (dims.dims()[0], dims.dims()[1], dims.dims()[2] / 3);
    let hs = c / nh;
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    let per_task = rows_per_task(b);
    let (r, [dout, tiles, dqkv]) = s.backward_io([out, bwd_tiles, qkv]);
    let (dout, x_all, lse) = (&*dout, r.f(qkv), r.f(lse));
    for_each_chunk2(dqkv, per_task * t * 3 * c, tiles, 2 * t * t, |task, dqkv, tiles| {
        let (p, dp) = tiles.split_at_mut(t * t);
        for (j, dx) in dqkv.chunks_exact_mut(t * 3 * c).enumerate() {
            let bi = task * per_task + j;
            let x = &x_all[bi * t * 3 * c..(bi + 1) * t * 3 * c];
            let dout = &dout[bi * t * c..(bi + 1) * t * c];
            for h in 0..nh {
                let q = h * hs;
                let lse = &lse[(bi * nh + h) * t..(bi * nh + h + 1) * t];
                // Recompute P from the scores and the saved log-sum-exp.
                gemm(false, true, t, t, hs, scale, &x[q..], 3 * c, &x[q + c..], 3 * c, F::ZERO, p, t);
                for (i, row) in p.chunks_exact_mut(t).enumerate() {
                    let (past, future) = row.split_at_mut(i + 1);
                    past.iter_mut().for_each(|s| *s = (*s - lse[i]).exp());
                    future.fill(F::ZERO);
                }
                // dP (T, T) = dO V^T
                gemm(false, true, t, t, hs, F::ONE, &dout[q..], c, &x[q + 2 * c..], 3 * c, F::ZERO, dp, t);
                // dV (T, hs) += P^T dO
                gemm(true, false, t, hs, t, F::ONE, p, t, &dout[q..], c, F::ONE, &mut dx[q + 2 * c..], 3 * c);
                // Softmax backward in place: dS = P * (dP - rowsum(dP * P)); zero where P is masked.
                for (drow, prow) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                    let dot: F = drow.iter().zip(prow).map(|(&d, &p)| d * p).sum();
                    drow.iter_mut().zip(prow).for_each(|(d, &p)| *d = p * (*d - dot));
                }
                // dQ (T, hs) += scale dS K;  dK (T, hs) += scale dS^T Q
                gemm(false, false, t, hs, t, scale, dp, t, &x[q + c..], 3 * c, F::ONE, &mut dx[q..], 3 * c);
                gemm(true, false, t, hs, t, scale, dp, t, &x[q..], 3 * c, F::ONE, &mut dx[q + c..], 3 * c);
            }
        }
    });
}
