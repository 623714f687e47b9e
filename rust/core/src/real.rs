//! `Real`: the float type the kernels are generic over. Training runs f32; gradient checks run
//! the very same kernels in f64. BLAS dispatch (sgemm vs dgemm) comes with it, through
//! `blas::BlasFloat`, so a kernel never names a precision.

use crate::blas::BlasFloat;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Real:
    BlasFloat
    + Copy
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
}

macro_rules! impl_real {
    ($t:ty, $name:literal, $exp:path, $tanh:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
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
                $exp(self)
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
        }
    };
}

impl_real!(f32, "float32", exp_f32, tanh_via_exp);
impl_real!(f64, "float64", f64::exp, f64::tanh);

/// e^x for f32 without a libm call, so loops over it vectorise: x = n ln2 + r with |r| <= ln2/2,
/// e^r by its degree-6 Taylor polynomial (truncation error below 2e-7 relative), and 2^n built
/// in the exponent bits. Inputs are clamped to the finite range: results underflow to about
/// 1e-38 instead of 0, and overflow to about 1.6e38 instead of inf; NaN stays NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split in two so n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest by adding and removing 1.5 * 2^23 (floor() would be a libm call). The
    // sum's low mantissa bits then hold n itself, read as an integer: `n as i32` would be a
    // saturating cast, which LLVM compiles to scalar code per lane (a third of the speed).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32); // = n for |n| < 2^22
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits((n_bits.wrapping_add(127) as u32) << 23)
}

/// tanh(x) = 1 - 2 / (e^(2x) + 1): one exp, several times faster than libm's tanhf, and within
/// a few f32 ulps of it in absolute terms (GELU adds it to 1, so relative error near 0 is moot).
/// Saturates: e^(2x) is huge for large x (giving 1) and tiny for very negative x (giving -1).
#[inline(always)]
fn tanh_via_exp(x: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * x) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_accurate_over_its_range() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.001_7;
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn tanh_via_exp_matches_tanh() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            assert!((tanh_via_exp(x) - x.tanh()).abs() < 1e-6, "x = {x}");
        }
    }
}
