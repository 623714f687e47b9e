//! Cross-entropy of logits against integer targets, averaged over rows, with the log-softmax
//! fused in. Shapes: logits (..., V), targets (...), out a scalar, lse (N) the per-row
//! log-sum-exp saved for backward, where d logits = (softmax - onehot) / N.

use crate::error::{shape_err, Error, Result};
use crate::graph::{Graph, Op};
use crate::real::Real;
use crate::store::{Shape, Store, Var};

impl<F: Real> Graph<F> {
    pub fn cross_entropy(&mut self, logits: Var, targets: Var) -> Result<Var> {
        let ls = self.store.float_shape(logits)?;
        let ts = self.store.ids_shape(targets)?;
        let v = ls.last();
        if ls.ndim() == 0 || ts.numel() != ls.rows() || ts.dims() != &ls.dims()[..ls.ndim() - 1] {
            return shape_err!("cross_entropy: targets {:?} must match logits {:?} without the last dim", ts.dims(), ls.dims());
        }
        if ls.rows() == 0 || v == 0 {
            return shape_err!("cross_entropy needs at least one row and one class, got {:?}", ls.dims());
        }
        if let Some(&bad) = self.store.id_values(targets).iter().find(|&&t| t as usize >= v) {
            return Err(Error::TokenOutOfRange { id: bad as i64, limit: v });
        }
        let out = self.store.alloc(Shape::new(&[])?);
        let lse = self.store.alloc(Shape::new(&[ls.rows()])?);
        let (r, mut w) = self.store.forward_io(out);
        let [o, lse_out] = w.many([out, lse]);
        o[0] = forward(r.f(logits), r.ids(targets), lse_out, v);
        self.tape.push(Op::CrossEntropy { logits, targets, out, lse });
        Ok(out)
    }
}

/// Mean negative log-likelihood; fills `lse` with each row's log-sum-exp.
fn forward<F: Real>(logits: &[F], targets: &[u32], lse: &mut [F], v: usize) -> F {
    let mut total = 0.0f64; // accumulate in f64 so the mean does not depend on N's size
    for ((row, &t), l) in logits.chunks_exact(v).zip(targets).zip(lse.iter_mut()) {
        let max = row.iter().copied().fold(F::NEG_INFINITY, F::max);
        let sum: F = row.iter().map(|&x| (x - max).exp()).sum();
        *l = max + sum.ln();
        total += (*l - row[t as usize]).to_f64();
    }
    F::from_f64(total / targets.len() as f64)
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, logits: Var, targets: Var, out: Var, lse: Var) {
    let v = s.shape_of(logits).last();
    let (r, mut inputs, mut own) = s.backward_io(out);
    let targets = r.ids(targets);
    let scale = own.one(out)[0] / F::from_f64(targets.len() as f64);
    let dlogits = inputs.one(logits);
    let rows = r.f(logits).chunks_exact(v).zip(dlogits.chunks_exact_mut(v));
    for (((row, drow), &t), &l) in rows.zip(targets).zip(r.f(lse)) {
        for (g, &x) in drow.iter_mut().zip(row) {
            *g += (x - l).exp() * scale;
        }
        drow[t as usize] -= scale;
    }
}
