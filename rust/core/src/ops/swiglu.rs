//! SwiGLU, the gated MLP's activation (Shazeer 2020; Llama's and Qwen's): silu(gate) * up, where
//! each row of the input holds the gate (first half) and the up projection (second half), so one
//! fused linear layer makes both. silu(g) = g * sigmoid(g). Shapes: x (..., 2H), out (..., H).
//! Backward: dgate = dout * up * s * (1 + g * (1 - s)) with s = sigmoid(g); dup = dout * silu(g).

use crate::error::{shape_err, Result};
use crate::op::Op;
use crate::parallel::{for_each_chunk, rows_per_task};
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::{Shape, Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, x: Var) -> Result<(Var, Op)> {
    let xs = store.float_shape(x)?;
    if xs.ndim() == 0 || xs.numel() == 0 || xs.last() % 2 != 0 {
        return shape_err!("swiglu input must be a non-empty (..., 2H) (gate, then up), got {:?}", xs.dims());
    }
    let mut dims = xs.dims().to_vec();
    let h = xs.last() / 2;
    *dims.last_mut().expect("ndim > 0") = h;
    let out = store.alloc(Shape::new(&dims)?)?;
    let (r, mut w) = store.forward_io(out);
    forward(r.f(x), w.one(out), h);
    Ok((out, Op::SwiGlu { x, out }))
}

/// Rows of (2H) in `x` to rows of (H) in `out`.
pub(crate) fn forward<F: Real>(x: &[F], out: &mut [F], h: usize) {
    let per = rows_per_task(out.len() / h);
    for_each_chunk(out, per * h, |i, out| {
        for (xr, or) in x[i * per * 2 * h..].chunks_exact(2 * h).zip(out.chunks_exact_mut(h)) {
            let (gate, up) = xr.split_at(h);
            forward_span(gate, up, or);
        }
    });
}

simd_loop! {
    fn forward_span<F: Real>(gate: &[F], up: &[F], out: &mut [F]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (F::ONE + (-g).exp()) * u;
        }
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, x: Var, out: Var) {
    let h = s.shape_of(out).last();
    let (r, [dout, dx]) = s.backward_io([out, x]);
    let (dout, xv) = (&*dout, r.f(x));
    let per = rows_per_task(dout.len() / h);
    for_each_chunk(dx, per * 2 * h, |i, dx| {
        let (xv, dout) = (&xv[i * per * 2 * h..], &dout[i * per * h..]);
        for ((dxr, xr), dr) in dx.chunks_exact_mut(2 * h).zip(xv.chunks_exact(2 * h)).zip(dout.chunks_exact(h)) {
            let (dgate, dup) = dxr.split_at_mut(h);
            let (gate, up) = xr.split_at(h);
            backward_span(dr, gate, up, dgate, dup);
        }
    });
}

simd_loop! {
    fn backward_span<F: Real>(dout: &[F], gate: &[F], up: &[F], dgate: &mut [F], dup: &mut [F]) {
        for ((((&d, &g), &u), dg), du) in dout.iter().zip(gate).zip(up).zip(dgate.iter_mut()).zip(dup.iter_mut()) {
            let s = F::ONE / (F::ONE + (-g).exp());
            *dg += d * u * s * (F::ONE + g * (F::ONE - s));
            *du += d * g * s;
        }
    }
}
