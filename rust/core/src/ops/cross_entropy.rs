//! Cross-entropy of logits against integer targets, averaged over the counted rows, with the
//! log-softmax fused in. Shapes: logits (..., V), targets (...), out a scalar, rows (N, 2) =
//! per-row (log-sum-exp, loss); backward uses the log-sum-exp: d logits = (softmax - onehot) / N.
//! A target equal to `IGNORE` (written -100 by callers) is not counted: its row's loss is 0, its
//! logits get exactly zero gradient, and N is the number of counted rows. With no counted row
//! the loss is 0 and every gradient is 0 (not 0/0). With every row counted, the result is bit
//! for bit what it was before masks existed.
//! Rows run in parallel; the mean adds the per-row losses in order, so it is deterministic.

use crate::error::{shape_err, Error, Result};
use crate::op::Op;
use crate::parallel::{for_each_chunk, rows_per_task};
use crate::real::Real;
use crate::store::{id_as_written, Shape, Slots, Store, Var, IGNORE};

pub(crate) fn record<F: Real>(store: &mut Store<F>, logits: Var, targets: Var) -> Result<(Var, Op)> {
    let ls = store.float_shape(logits)?;
    let ts = store.ids_shape(targets)?;
    let v = ls.last();
    if ls.ndim() == 0 || ts.numel() != ls.rows() || ts.dims() != &ls.dims()[..ls.ndim() - 1] {
        return shape_err!("cross_entropy: targets {:?} must match logits {:?} without the last dim", ts.dims(), ls.dims());
    }
    if ls.rows() == 0 || v == 0 {
        return shape_err!("cross_entropy needs at least one row and one class, got {:?}", ls.dims());
    }
    if let Some(&bad) = store.id_values(targets).iter().find(|&&t| t != IGNORE && t as usize >= v) {
        return Err(Error::TokenOutOfRange { id: id_as_written(bad), limit: v });
    }
    let out = store.alloc(Shape::new(&[])?)?;
    let lse = store.alloc_slots(Shape::new(&[ls.rows(), 2])?, Slots::ValueOnly)?;
    let (r, mut w) = store.forward_io(out);
    let [o, lse_out] = w.many([out, lse]);
    o[0] = forward(r.f(logits), r.ids(targets), lse_out, v);
    Ok((out, Op::CrossEntropy { logits, targets, out, lse }))
}

/// How many targets count (are not `IGNORE`); 1 when none do, so a mean over them is 0, not NaN.
fn counted(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE).count().max(1)
}

/// Mean negative log-likelihood over the counted rows; fills `rows` with each row's
/// (log-sum-exp, loss), (0, 0) for an ignored row.
fn forward<F: Real>(logits: &[F], targets: &[u32], rows: &mut [F], v: usize) -> F {
    let per_task = rows_per_task(targets.len());
    for_each_chunk(rows, per_task * 2, |i, rows| {
        let (logits, targets) = (&logits[i * per_task * v..], &targets[i * per_task..]);
        for ((row, &t), out) in logits.chunks_exact(v).zip(targets).zip(rows.chunks_exact_mut(2)) {
            if t == IGNORE {
                out.fill(F::ZERO);
                continue;
            }
            let max = row.iter().copied().fold(F::NEG_INFINITY, F::max);
            let sum: F = row.iter().map(|&x| (x - max).exp()).sum();
            out[0] = max + sum.ln();
            out[1] = out[0] - row[t as usize];
        }
    });
    // Accumulate in f64 so the mean does not depend on N's size.
    let total: f64 = rows.chunks_exact(2).map(|r| r[1].to_f64()).sum();
    F::from_f64(total / counted(targets) as f64)
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, logits: Var, targets: Var, out: Var, lse: Var) {
    let v = s.shape_of(logits).last();
    let (r, [dout, dlogits]) = s.backward_io([out, logits]);
    let targets = r.ids(targets);
    let scale = dout[0] / F::from_f64(counted(targets) as f64);
    let per_task = rows_per_task(targets.len());
    let (logits, lse) = (r.f(logits), r.f(lse));
    for_each_chunk(dlogits, per_task * v, |i, dlogits| {
        let (logits, targets, rows) = (&logits[i * per_task * v..], &targets[i * per_task..], &lse[i * per_task * 2..]);
        for (((row, drow), &t), st) in logits.chunks_exact(v).zip(dlogits.chunks_exact_mut(v)).zip(targets).zip(rows.chunks_exact(2)) {
            if t == IGNORE {
                continue; // adds nothing: the row's gradient stays exactly zero
            }
            for (g, &x) in drow.iter_mut().zip(row) {
                *g += (x - st[0]).exp() * scale;
            }
            drow[t as usize] -= scale;
        }
    });
}
