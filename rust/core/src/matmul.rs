//! Products split across the engine's threads: the BLAS policy of the training step. Each
//! thread runs a single-threaded `gemm` on its own rows of C (or, for one row, its own columns),
//! so splits never change what an element of C computes.

use crate::blas::{gemm, BlasFloat, Gemm};
use crate::parallel::{for_each_chunk, rows_per_task};

/// Size of B (floats) from which a one-row product is split across the threads. Smaller ones sit
/// in cache and splitting costs more than it saves (measured: the small model's cached step);
/// larger ones stream from memory, which two cores read faster than one (medium: 1.6x).
const GEMV_SPLIT_MIN: usize = 128 * 1024;

/// `gemm` with its output rows (for a single row, its columns) split among the threads; same
/// arguments and result.
pub fn gemm_rows<F: BlasFloat + Send + Sync>(g: &Gemm<F>, c: &mut [F], ldc: usize) {
    gemm_rows_with(g, c, ldc, &|_| {}, &|_, _| {});
}

/// `gemm_rows` with work on each thread's own rows of C around its product, while they are in
/// its cache: `prepare(rows)` before (filling C for beta = 1, say), `finish(first_row, rows)`
/// after (an activation). Each gets whole rows of C (`ldc` apart).
pub fn gemm_rows_with<F: BlasFloat + Send + Sync>(
    g: &Gemm<F>,
    c: &mut [F],
    ldc: usize,
    prepare: &(dyn Fn(&mut [F]) + Sync),
    finish: &(dyn Fn(usize, &mut [F]) + Sync),
) {
    let Gemm { trans_a, trans_b, m, n, k, a, lda, b, ldb, .. } = *g;
    if m == 1 && n * k >= GEMV_SPLIT_MIN {
        // One row (a token step of the key/value cache) is a matrix-vector product that reads
        // all of B: split its columns, so each thread streams its part of B.
        let cols = rows_per_task(n);
        prepare(&mut c[..n]);
        for_each_chunk(&mut c[..n], cols, |i, c_part| {
            let j0 = i * cols; // column j0 of op(B) is row j0 of B, or column j0 when not transposed
            let b = if trans_b { &b[j0 * ldb..] } else { &b[j0..] };
            gemm(&Gemm { n: c_part.len(), b, ..*g }, c_part, ldc);
        });
        return finish(0, &mut c[..n]);
    }
    let rows = rows_per_task(m);
    if rows >= m || n == 0 || k == 0 {
        let c = &mut c[..if m == 0 || n == 0 { 0 } else { (m - 1) * ldc + n }];
        prepare(c);
        gemm(g, c, ldc);
        return finish(0, c);
    }
    let c = &mut c[..(m - 1) * ldc + n];
    for_each_chunk(c, rows * ldc, |i, c_part| {
        let r0 = i * rows;
        // Row r0 of op(A) starts at row r0 of A, or at column r0 when A is transposed.
        let a = if trans_a { &a[r0..] } else { &a[r0 * lda..] };
        prepare(c_part);
        gemm(&Gemm { m: rows.min(m - r0), a, ..*g }, c_part, ldc);
        finish(r0, c_part);
    });
}
