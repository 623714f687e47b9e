//! The only door to BLAS. A product is described once, by `Gemm`; `gemm` checks its bounds and
//! calls sgemm/dgemm with transpose flags (no copies), or sgemv/dgemv for a single output row;
//! `gemm_reference` is the naive triple loop the tests compare against. The cblas calls for each
//! precision are here too (`BlasFloat`), so no other file touches BLAS.

use std::ffi::{c_char, c_int, CStr};
use std::ops::{Add, Mul};

/// Row-major `C = alpha * op(A) * op(B) + beta * C`, where op(A) is (m, k) and op(B) is (k, n).
/// `lda` and `ldb` are the row strides of A and B as stored (A is stored (k, m) when transposed).
/// C and its row stride are given to `gemm` beside it.
#[derive(Clone, Copy, Debug)]
pub struct Gemm<'a, F> {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: F,
    pub a: &'a [F],
    pub lda: usize,
    pub b: &'a [F],
    pub ldb: usize,
    pub beta: F,
}

impl<'a, F: BlasFloat> Gemm<'a, F> {
    /// op(A) op(B), overwriting C (alpha 1, beta 0).
    #[allow(clippy::too_many_arguments)]
    pub fn new(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize, a: &'a [F], lda: usize, b: &'a [F], ldb: usize) -> Self {
        Gemm { trans_a, trans_b, m, n, k, alpha: F::ONE, a, lda, b, ldb, beta: F::default() }
    }
    /// A B.
    pub fn nn(m: usize, n: usize, k: usize, a: &'a [F], lda: usize, b: &'a [F], ldb: usize) -> Self {
        Self::new(false, false, m, n, k, a, lda, b, ldb)
    }
    /// A B^T.
    pub fn nt(m: usize, n: usize, k: usize, a: &'a [F], lda: usize, b: &'a [F], ldb: usize) -> Self {
        Self::new(false, true, m, n, k, a, lda, b, ldb)
    }
    /// A^T B.
    pub fn tn(m: usize, n: usize, k: usize, a: &'a [F], lda: usize, b: &'a [F], ldb: usize) -> Self {
        Self::new(true, false, m, n, k, a, lda, b, ldb)
    }
    pub fn alpha(self, alpha: F) -> Self {
        Gemm { alpha, ..self }
    }
    pub fn beta(self, beta: F) -> Self {
        Gemm { beta, ..self }
    }
    /// Add to C instead of overwriting it (beta 1).
    pub fn accumulate(self) -> Self {
        self.beta(F::ONE)
    }
}

/// Extent a row-major operand must have: `rows` rows of stride `ld`, the last one `cols` long.
fn required_len(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// Run `g` into C (row stride `ldc`) through BLAS. Panics only on an internal bug (operands too
/// short), never on user input: callers validate shapes first and this check guards the unsafe call.
pub fn gemm<F: BlasFloat>(g: &Gemm<F>, c: &mut [F], ldc: usize) {
    let Gemm { trans_a, trans_b, m, n, k, lda, ldb, .. } = *g;
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(lda >= a_cols.max(1) && g.a.len() >= required_len(a_rows, a_cols, lda), "gemm: A too short");
    assert!(ldb >= b_cols.max(1) && g.b.len() >= required_len(b_rows, b_cols, ldb), "gemm: B too short");
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
        if g.beta == F::default() {
            c[..n].fill(F::default()); // some BLAS scale y by beta, which would keep a NaN already there
        }
        // SAFETY: the extents of A (the vector), B (the matrix) and C were checked above.
        return unsafe { F::gemv_unchecked(!trans_b, rows, cols, g.alpha, g.b, ldb, g.a, incx, g.beta, c) };
    }
    // SAFETY: every slice covers the rows and leading dimensions BLAS will touch (checked above).
    unsafe { F::gemm_unchecked(g, c, ldc) }
}

/// The naive reference for `gemm`, same arguments and semantics. Tests only.
pub fn gemm_reference<F: BlasFloat>(g: &Gemm<F>, c: &mut [F], ldc: usize) {
    let Gemm { trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta } = *g;
    for i in 0..m {
        for j in 0..n {
            let mut acc = F::default();
            for p in 0..k {
                let av = if trans_a { a[p * lda + i] } else { a[i * lda + p] };
                let bv = if trans_b { b[j * ldb + p] } else { b[p * ldb + j] };
                acc = acc + av * bv;
            }
            let cv = &mut c[i * ldc + j];
            // beta == 0 overwrites, as BLAS does, so garbage (even NaN) in C is ignored.
            *cv = if beta == F::default() { alpha * acc } else { alpha * acc + beta * *cv };
        }
    }
}

/// A float BLAS has kernels for: f32 (sgemm, sgemv) and f64 (dgemm, dgemv).
pub trait BlasFloat: Copy + Default + PartialEq + Add<Output = Self> + Mul<Output = Self> {
    const ONE: Self;

    /// # Safety
    /// The operands must cover what `g` describes, and C (`ldc`) its (m, n) result.
    unsafe fn gemm_unchecked(g: &Gemm<Self>, c: &mut [Self], ldc: usize);

    /// Row-major y = alpha * op(A) x + beta * y, A stored (rows, cols) with row stride `lda`, x
    /// with stride `incx`.
    ///
    /// # Safety
    /// A, x and y must cover those extents.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemv_unchecked(trans: bool, rows: usize, cols: usize, alpha: Self, a: &[Self], lda: usize, x: &[Self], incx: usize, beta: Self, y: &mut [Self]);
}

/// The CBLAS enumerations, as every CBLAS defines them.
const ROW_MAJOR: c_int = 101;
fn transpose(t: bool) -> c_int {
    if t {
        112 // CblasTrans
    } else {
        111 // CblasNoTrans
    }
}

macro_rules! impl_blas {
    ($t:ty, $gemm:ident, $gemv:ident) => {
        impl BlasFloat for $t {
            const ONE: Self = 1.0;

            unsafe fn gemm_unchecked(g: &Gemm<Self>, c: &mut [Self], ldc: usize) {
                let (ta, tb) = (transpose(g.trans_a), transpose(g.trans_b));
                let (m, n, k) = (g.m as c_int, g.n as c_int, g.k as c_int);
                $gemm(ROW_MAJOR, ta, tb, m, n, k, g.alpha, g.a.as_ptr(), g.lda as c_int, g.b.as_ptr(), g.ldb as c_int, g.beta, c.as_mut_ptr(), ldc as c_int)
            }

            unsafe fn gemv_unchecked(trans: bool, rows: usize, cols: usize, alpha: Self, a: &[Self], lda: usize, x: &[Self], incx: usize, beta: Self, y: &mut [Self]) {
                $gemv(ROW_MAJOR, transpose(trans), rows as c_int, cols as c_int, alpha, a.as_ptr(), lda as c_int, x.as_ptr(), incx as c_int, beta, y.as_mut_ptr(), 1)
            }
        }
    };
}

impl_blas!(f32, cblas_sgemm, cblas_sgemv);
impl_blas!(f64, cblas_dgemm, cblas_dgemv);

// OpenBLAS of PyPI's scipy-openblas32 wheel, whose every symbol carries the `scipy_` prefix
// (build.rs finds and links it).
#[rustfmt::skip]
extern "C" {
    #[link_name = "scipy_cblas_sgemm"]
    fn cblas_sgemm(layout: c_int, ta: c_int, tb: c_int, m: c_int, n: c_int, k: c_int, alpha: f32, a: *const f32, lda: c_int, b: *const f32, ldb: c_int, beta: f32, c: *mut f32, ldc: c_int);
    #[link_name = "scipy_cblas_dgemm"]
    fn cblas_dgemm(layout: c_int, ta: c_int, tb: c_int, m: c_int, n: c_int, k: c_int, alpha: f64, a: *const f64, lda: c_int, b: *const f64, ldb: c_int, beta: f64, c: *mut f64, ldc: c_int);
    #[link_name = "scipy_cblas_sgemv"]
    fn cblas_sgemv(layout: c_int, trans: c_int, m: c_int, n: c_int, alpha: f32, a: *const f32, lda: c_int, x: *const f32, incx: c_int, beta: f32, y: *mut f32, incy: c_int);
    #[link_name = "scipy_cblas_dgemv"]
    fn cblas_dgemv(layout: c_int, trans: c_int, m: c_int, n: c_int, alpha: f64, a: *const f64, lda: c_int, x: *const f64, incx: c_int, beta: f64, y: *mut f64, incy: c_int);
    #[link_name = "scipy_openblas_set_num_threads"]
    fn openblas_set_num_threads(num_threads: c_int);
    #[link_name = "scipy_openblas_get_num_threads"]
    fn openblas_get_num_threads() -> c_int;
    #[link_name = "scipy_openblas_get_corename"]
    fn openblas_get_corename() -> *const c_char;
    #[link_name = "scipy_openblas_get_config"]
    fn openblas_get_config() -> *const c_char;
}

/// The kernel family OpenBLAS chose for this CPU ("Haswell", "Zen", "SkylakeX", ...), which
/// `OPENBLAS_CORETYPE` can force.
pub fn core_name() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(openblas_get_corename()) }.to_string_lossy().into_owned()
}

/// OpenBLAS's description of its build: version, DYNAMIC_ARCH, the kernel family, MAX_THREADS.
pub fn config() -> String {
    // SAFETY: as above, a static NUL-terminated string.
    unsafe { CStr::from_ptr(openblas_get_config()) }.to_string_lossy().trim().to_string()
}

/// Threads OpenBLAS uses inside one call. `parallel` keeps this at 1: the engine splits work
/// itself, so BLAS threads never nest inside its threads (the core bench lifts it to compare).
pub fn set_blas_threads(n: usize) {
    // SAFETY: a plain setter in OpenBLAS; it takes effect for the next call.
    unsafe { openblas_set_num_threads(n.clamp(1, 1024) as c_int) }
}

/// Threads OpenBLAS uses inside one call now.
pub fn blas_threads() -> usize {
    // SAFETY: a plain getter in OpenBLAS.
    unsafe { openblas_get_num_threads() }.max(1) as usize
}
