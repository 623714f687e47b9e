//! `Real`: the float type the kernels are generic over. Training runs f32; gradient checks run
//! the very same kernels in f64. BLAS dispatch (sgemm vs dgemm) hangs off this trait so a kernel
//! never names a precision.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + Sum
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    /// "float32" or "float64", as numpy spells it.
    const NAME: &'static str;

    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn is_finite(self) -> bool;

    /// Row-major C = alpha * op(A) * op(B) + beta * C through BLAS; see `blas::gemm`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_raw(
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        lda: usize,
        b: &[Self],
        ldb: usize,
        beta: Self,
        c: &mut [Self],
        ldc: usize,
    );
}

macro_rules! impl_real {
    ($t:ty, $name:literal, $gemm:ident, $tanh:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const NAME: &'static str = $name;

            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }

            fn gemm_raw(
                trans_a: bool,
                trans_b: bool,
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: &[Self],
                lda: usize,
                b: &[Self],
                ldb: usize,
                beta: Self,
                c: &mut [Self],
                ldc: usize,
            ) {
                use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE};
                let t = |x: bool| if x { CBLAS_TRANSPOSE::CblasTrans } else { CBLAS_TRANSPOSE::CblasNoTrans };
                // SAFETY: `blas::gemm` checked that every slice covers the rows and leading
                // dimensions BLAS will touch, so no access falls outside them.
                unsafe {
                    cblas_sys::$gemm(
                        CBLAS_LAYOUT::CblasRowMajor,
                        t(trans_a),
                        t(trans_b),
                        m as i32,
                        n as i32,
                        k as i32,
                        alpha,
                        a.as_ptr(),
                        lda as i32,
                        b.as_ptr(),
                        ldb as i32,
                        beta,
                        c.as_mut_ptr(),
                        ldc as i32,
                    )
                }
            }
        }
    };
}

impl_real!(f32, "float32", cblas_sgemm, tanh_via_exp);
impl_real!(f64, "float64", cblas_dgemm, f64::tanh);

/// tanh(x) = 1 - 2 / (e^(2x) + 1): one expf, several times faster than libm's tanhf, and within
/// a few f32 ulps of it in absolute terms (GELU adds it to 1, so relative error near 0 is moot).
/// Saturates correctly: e^(2x) overflows to inf for large x (giving 1) and underflows to 0 for
/// very negative x (giving -1).
#[inline(always)]
fn tanh_via_exp(x: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * x).exp() + 1.0)
}
