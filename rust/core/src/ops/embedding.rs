//! Embedding lookup: out[i] = table[ids[i]]. Used for token and position embeddings.
//! Shapes: ids (...), table (V, C), out (..., C).

use crate::error::{shape_err, Error, Result};
use crate::op::Op;
use crate::real::Real;
use crate::store::{id_as_written, Store, Var};

pub(crate) fn record<F: Real>(store: &mut Store<F>, ids: Var, table: Var) -> Result<(Var, Op)> {
    let ids_shape = store.ids_shape(ids)?;
    let table_shape = store.float_shape(table)?;
    if table_shape.ndim() != 2 {
        return shape_err!("embedding table must be 2-D (rows, channels), got {:?}", table_shape.dims());
    }
    let rows = table_shape.dims()[0];
    if let Some(&bad) = store.id_values(ids).iter().find(|&&id| id as usize >= rows) {
        return Err(Error::TokenOutOfRange { id: id_as_written(bad), limit: rows });
    }
    let out = store.alloc(ids_shape.appended(table_shape.last())?)?;
    let (r, mut w) = store.forward_io(out);
    forward(r.ids(ids), r.f(table), w.one(out), table_shape.last());
    Ok((out, Op::Embedding { ids, table, out }))
}

pub(crate) fn forward<F: Real>(ids: &[u32], table: &[F], out: &mut [F], c: usize) {
    for (row, &id) in out.chunks_exact_mut(c).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * c..(id + 1) * c]);
    }
}

pub(crate) fn backward<F: Real>(s: &mut Store<F>, ids: Var, table: Var, out: Var) {
    let (r, [dout, dtable]) = s.backward_io([out, table]);
    let c = dout.len() / r.ids(ids).len().max(1);
    for (drow, &id) in dout.chunks_exact(c).zip(r.ids(ids)) {
        let id = id as usize;
        for (dt, &d) in dtable[id * c..(id + 1) * c].iter_mut().zip(drow) {
            *dt += d;
        }
    }
}
