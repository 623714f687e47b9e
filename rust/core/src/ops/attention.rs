//! Causal multi-head self-attention core: softmax(Q K^T / sqrt(hs), causal) V, per (b, h).
//! Shapes: qkv (B, T, 3C) with q, k, v side by side in the channels as GPT-2 lays them out;
//! out (B, T, C); lse (B, H, T) each score row's log-sum-exp, saved for backward.
//! Flash-style memory: the (T, T) attention matrix is never stored for the whole batch. Each
//! task (a group of batch elements, run in parallel) works in one (T, T) tile in forward and two
//! in backward, and backward recomputes the probabilities from Q, K and lse. Heads are read in
//! place through BLAS leading dimensions, never copied. Queries go in blocks of BLOCK rows, and
//! a block multiplies only with the keys it may see (0..end of block): with T = 128 that skips
//! 37.5% of the work of a full (T, T) product.

use crate::blas::{gemm, Gemm};
use crate::error::{shape_err, Result};
use crate::op::Op;
use crate::parallel::{for_each_chunk2, for_each_chunk3, rows_per_task};
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Shape, Slots, Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, qkv: Var, n_head: usize) -> Result<(Var, Op)> {
    let qs = store.float_shape(qkv)?;
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
    let out = store.alloc(Shape::new(&[b, t, c])?)?;
    let lse = store.alloc_slots(Shape::new(&[b, n_head, t])?, Slots::ValueOnly)?;
    let fwd_tiles = store.alloc_slots(Shape::new(&[tasks, t, t])?, Slots::ValueOnly)?;
    let bwd_tiles = store.alloc_slots(Shape::new(&[tasks, 2, t, t])?, Slots::GradOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, l, tiles] = w.many([out, lse, fwd_tiles]);
    forward(r.f(qkv), o, l, tiles, Dims { b, t, c, nh: n_head });
    Ok((out, Op::Attention { qkv, n_head, out, lse, bwd_tiles }))
}

/// Query rows per block of the causal product.
const BLOCK: usize = 32;

/// Query blocks of a (T, T) causal product: (first row, rows, keys it sees).
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..t).step_by(BLOCK).map(move |r0| {
        let end = (r0 + BLOCK).min(t);
        (r0, end - r0, end)
    })
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
                for (r0, rows, keys) in blocks(t) {
                    let (xq, pb) = (&x[q + r0 * 3 * c..], &mut p[r0 * t..(r0 + rows) * t]);
                    // P[block] (rows, keys) = scale * Q[block] K[..keys]^T, then causal softmax
                    gemm(&Gemm::nt(rows, keys, hs, xq, 3 * c, &x[q + c..], 3 * c).alpha(scale), pb, t);
                    for (i, row) in pb.chunks_exact_mut(t).enumerate() {
                        lse[h * t + r0 + i] = causal_softmax_row(row, r0 + i);
                    }
                    // out[block, h] (rows, hs) = P[block] V[..keys]
                    let o = &mut out[q + r0 * c..];
                    gemm(&Gemm::nn(rows, hs, keys, pb, t, &x[q + 2 * c..], 3 * c), o, c);
                }
            }
        }
    });
}

/// Softmax over row[..=i] in place; entries after i (the future) become exactly zero.
/// Returns the log-sum-exp of the scores row[..=i].
pub(crate) fn causal_softmax_row<F: Real>(row: &mut [F], i: usize) -> F {
    let (past, future) = row.split_at_mut(i + 1);
    let max = past.iter().copied().fold(F::NEG_INFINITY, F::max);
    // Exponentiate, then add up, in two passes: the first vectorises (the sum keeps its order).
    exp_minus(past, max);
    let sum: F = past.iter().copied().sum();
    scale(past, F::ONE / sum);
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
                for (r0, rows, keys) in blocks(t) {
                    let (pb, dpb) = (&mut p[r0 * t..(r0 + rows) * t], &mut dp[r0 * t..(r0 + rows) * t]);
                    let (xq, dout_b) = (&x[q + r0 * 3 * c..], &dout[q + r0 * c..]);
                    // Recompute P[block] from the scores and the saved log-sum-exp.
                    gemm(&Gemm::nt(rows, keys, hs, xq, 3 * c, &x[q + c..], 3 * c).alpha(scale), pb, t);
                    for (i, row) in pb.chunks_exact_mut(t).enumerate() {
                        let (past, future) = row[..keys].split_at_mut(r0 + i + 1);
                        exp_minus(past, lse[r0 + i]);
                        future.fill(F::ZERO);
                    }
                    // dP[block] (rows, keys) = dO[block] V[..keys]^T
                    gemm(&Gemm::nt(rows, keys, hs, dout_b, c, &x[q + 2 * c..], 3 * c), dpb, t);
                    // dV[..keys] (keys, hs) += P[block]^T dO[block]
                    gemm(&Gemm::tn(keys, hs, rows, pb, t, dout_b, c).accumulate(), &mut dx[q + 2 * c..], 3 * c);
                    // Softmax backward in place: dS = P * (dP - rowsum(dP * P)); zero where P is masked.
                    for (drow, prow) in dpb.chunks_exact_mut(t).zip(pb.chunks_exact(t)) {
                        let (drow, prow) = (&mut drow[..keys], &prow[..keys]);
                        let dot: F = drow.iter().zip(prow).map(|(&d, &p)| d * p).sum();
                        softmax_backward_row(drow, prow, dot);
                    }
                    // dQ[block] (rows, hs) += scale dS K[..keys];  dK[..keys] (keys, hs) += scale dS^T Q[block]
                    gemm(&Gemm::nn(rows, hs, keys, dpb, t, &x[q + c..], 3 * c).alpha(scale).accumulate(), &mut dx[q + r0 * 3 * c..], 3 * c);
                    gemm(&Gemm::tn(keys, hs, rows, dpb, t, xq, 3 * c).alpha(scale).accumulate(), &mut dx[q + c..], 3 * c);
                }
            }
        }
    });
}

simd_loop! {
    /// x = e^(x - shift), in place.
    fn exp_minus<F: Real>(xs: &mut [F], shift: F) {
        for x in xs {
            *x = (*x - shift).exp();
        }
    }
}

simd_loop! {
    fn scale<F: Real>(xs: &mut [F], factor: F) {
        for x in xs {
            *x *= factor;
        }
    }
}

simd_loop! {
    /// dS = P * (dP - dot), in place over dP.
    fn softmax_backward_row<F: Real>(dp: &mut [F], p: &[F], dot: F) {
        for (d, &p) in dp.iter_mut().zip(p) {
            *d = p * (*d - dot);
        }
    }
}
