//! The hot elementwise loops, compiled for the widest SIMD the CPU has: `simd_loop!` compiles a
//! loop three times (AVX-512, AVX2 with FMA, and the baseline of the target) and picks one at run
//! time, once, so one build runs well on every x86-64 and elsewhere. Elementwise results do not
//! depend on the width (Rust never contracts a * b + c into an FMA on its own), so every machine
//! computes the same bits.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2,
    Baseline,
}

/// The widest instruction set this CPU runs (detected once).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("fma") {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// `simd_loop! { fn name<F: Real>(args) { body } }`: a function that runs `body` compiled for
/// `level()`. The body should be a plain loop over slices (no closures: they would not inherit the
/// target features).
macro_rules! simd_loop {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$F:ident: Real>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name<$F: Real>($($arg: $ty),*) {
            #[inline(always)]
            fn body<$F: Real>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512<$F: Real>($($arg: $ty),*) { body::<$F>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$F: Real>($($arg: $ty),*) { body::<$F>($($arg),*) }
                match $crate::simd::level() {
                    // SAFETY: level() checked that this CPU has these instructions.
                    $crate::simd::Level::Avx512 => return unsafe { avx512::<$F>($($arg),*) },
                    $crate::simd::Level::Avx2 => return unsafe { avx2::<$F>($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            body::<$F>($($arg),*)
        }
    };
}
pub(crate) use simd_loop;
