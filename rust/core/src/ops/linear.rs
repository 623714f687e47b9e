//! Linear layer: out = x W^T + b, through BLAS with a transpose flag (no copy of W).
//! Shapes: x (..., K), W (M, K) as in PyTorch, b (M) or none, out (..., M). With no bias and W
//! the token embedding this is the tied output projection.

use crate::blas::Gemm;
use crate::matmul::{gemm_rows, gemm_rows_with};
use crate::error::{shape_err, Result};
use crate::op::{require_distinct, Op};
use crate::real::Real;
use crate::store::{Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var, w: Var, b: Option<Var>) -> Result<(Var, Op)> {
    let xs = store.float_shape(x)?;
    let ws = store.float_shape(w)?;
    if ws.ndim() != 2 {
        return shape_err!("linear weight must be 2-D (out, in), got {:?}", ws.dims());
    }
    let (m, k) = (ws.dims()[0], ws.dims()[1]);
    if xs.ndim() == 0 || xs.last() != k {
        return shape_err!("linear: input {:?} does not end in the weight's in-features {k}", xs.dims());
    }
    if let Some(b) = b {
        let bs = store.float_shape(b)?;
        if bs.dims() != [m] {
            return shape_err!("linear bias must have shape [{m}], got {:?}", bs.dims());
        }
        require_distinct(&[x, w, b], "linear")?;
    } else {
        require_distinct(&[x, w], "linear")?;
    }
    let n = xs.rows();
    let out = store.alloc(xs.with_last(m))?;
    let (r, mut wr) = store.forward_io(out);
    forward(r.f(x), r.f(w), b.map(|b| r.f(b)), wr.one(out), n, m, k);
    Ok((out, Op::Linear { x, w, b, out }))
}

/// out (N, M) = x (N, K) W^T + b, W (M, K).
pub(crate) fn forward<F: Real>(x: &[F], w: &[F], b: Option<&[F]>, out: &mut [F], n: usize, m: usize, k: usize) {
    let product = Gemm::nt(n, m, k, x, k, w, k);
    match b {
        // Each thread puts the bias in its own rows, then adds the product to them (beta = 1).
        Some(b) => gemm_rows_with(&product.accumulate(), out, m, &|rows| rows.chunks_mut(m).for_each(|r| r.copy_from_slice(&b[..r.len()])), &|_, _| {}),
        None => gemm_rows(&product, out, m),
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, w: Var, b: Option<Var>, out: Var) {
    let (m, k) = (s.shape_of(w).dims()[0], s.shape_of(w).dims()[1]);
    let n = s.shape_of(x).rows();
    let (r, [dout, dx, dw]) = s.backward_io([out, x, w]);
    let (wv, xv) = (r.f(w), r.f(x));
    // dx (N, K) += dout (N, M) W (M, K)
    gemm_rows(&Gemm::nn(n, k, m, dout, m, wv, k).accumulate(), dx, k);
    // dW (M, K) += dout^T (M, N) x (N, K)
    gemm_rows(&Gemm::tn(m, k, n, dout, m, xv, k).accumulate(), dw, k);
    if let Some(b) = b {
        let (_, [dout, db]) = s.backward_io([out, b]);
        for row in dout.chunks_exact(m) {
            db.iter_mut().zip(row).for_each(|(g, &d)| *g += d);
        }
    }
}
