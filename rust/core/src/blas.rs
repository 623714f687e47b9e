//! The only door to BLAS. `gemm` checks bounds and then calls sgemm/dgemm with transpose flags
//! (no copies), or sgemv/dgemv for a single output row; `gemm_reference` is the naive triple loop the tests compare against.

use crate::real::Real;

/// Extent a row-major operand must have: `rows` rows of stride `ld`, the last one `cols` long.
fn required_len(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// Row-major `C = alpha * op(A) * op(B) + beta * C`, where op(A) is (m, k) and op(B) is (k, n).
/// `lda`, `ldb`, `ldc` are the row strides of A, B, C as stored (A stored (k, m) when transposed).
/// Panics only on an internal bug (operands too short), never on user input: callers validate
/// shapes first and this check guards the unsafe call.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Real>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: F,
    a: &[F],
    lda: usize,
    b: &[F],
    ldb: usize,
    beta: F,
    c: &mut [F],
    ldc: usize,
) {
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(lda >= a_cols.max(1) && a.len() >= required_len(a_rows, a_cols, lda), "gemm: A too short");
    assert!(ldb >= b_cols.max(1) && b.len() >= required_len(b_rows, b_cols, ldb), "gemm: B too short");
    assert!(ldc >= n.max(1) && c.len() >= required_len(m, n, ldc), "gemm: C too short");
    assert!(m.max(n).max(k).max(lda).max(ldb).max(ldc) <= i32::MAX as usize, "gemm: size overflows BLAS int");
    if m == 0 || n == 0 {
        return;
    }
    if m == 1 && k > 0 {
        // One output row is a matrix-vector product. sgemm would pack all of B first, which
        // costs as much as the product itself (the key/value cache's one-token steps).
        let incx = if trans_a { lda } else { 1 };
        let (rows, cols) = if trans_b { (n, k) } else { (k, n) };
        if beta == F::ZERO {
            c[..n].fill(F::ZERO); // some BLAS scale y by beta, which would keep a NaN already there
        }
        return F::gemv_raw(!trans_b, rows, cols, alpha, b, ldb, a, incx, beta, c);
    }
    F::gemm_raw(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// The naive reference for `gemm`, same arguments and semantics. Tests only.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference<F: Real>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: F,
    a: &[F],
    lda: usize,
    b: &[F],
    ldb: usize,
    beta: F,
    c: &mut [F],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = F::ZERO;
            for p in 0..k {
                let av = if trans_a { a[p * lda + i] } else { a[i * lda + p] };
                let bv = if trans_b { b[j * ldb + p] } else { b[p * ldb + j] };
                acc += av * bv;
            }
            let cv = &mut c[i * ldc + j];
            // beta == 0 overwrites, as BLAS does, so garbage (even NaN) in C is ignored.
            *cv = if beta == F::ZERO { alpha * acc } else { alpha * acc + beta * *cv };
        }
    }
}

extern "C" {
    fn openblas_set_num_threads(num_threads: std::os::raw::c_int);
}

/// Threads OpenBLAS uses inside one call. `parallel` keeps this at 1: the engine splits work
/// itself, so BLAS threads never nest inside its threads.
pub(crate) fn set_blas_threads(n: usize) {
    // SAFETY: a plain setter in OpenBLAS; it takes effect for the next call.
    unsafe { openblas_set_num_threads(n.clamp(1, 1024) as std::os::raw::c_int) }
}
