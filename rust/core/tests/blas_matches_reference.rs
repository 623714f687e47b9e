//! BLAS gemm (every transpose combination, strided operands, one-row products that go through
//! gemv, beta = 0 over NaN garbage) against the naive reference.

use lmcore_core::blas::{gemm, gemm_reference, Gemm};
use lmcore_core::Rng;

fn check<F: lmcore_core::Real>(tol: f64) {
    let mut rng = Rng::new(7);
    for &(m, n, k) in &[(1, 1, 1), (1, 9, 33), (1, 65, 128), (3, 5, 7), (17, 9, 33), (64, 65, 128)] {
        for (ta, tb, beta) in (0..8).map(|i| (i & 1 == 1, i & 2 == 2, if i & 4 == 4 { 0.0 } else { -1.3 })) {
            let pad = 3; // leading dimensions larger than the rows: strided views
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
            let mut fill = |len: usize| (0..len).map(|_| F::from_f64(rng.normal())).collect::<Vec<F>>();
            let a = fill(ar * lda);
            let b = fill(br * ldb);
            // With beta = 0, C is garbage that BLAS must overwrite, not scale.
            let c0 = if beta == 0.0 { vec![F::from_f64(f64::NAN); m * ldc] } else { fill(m * ldc) };
            let (alpha, beta) = (F::from_f64(0.7), F::from_f64(beta));
            let mut c1 = c0.clone();
            let mut c2 = c0.clone();
            let product = Gemm::new(ta, tb, m, n, k, &a, lda, &b, ldb).alpha(alpha).beta(beta);
            gemm(&product, &mut c1, ldc);
            gemm_reference(&product, &mut c2, ldc);
            for (i, (x, y)) in c1.iter().zip(&c2).enumerate() {
                if i % ldc >= n {
                    continue; // padding between rows is not part of C
                }
                let (x, y) = (x.to_f64(), y.to_f64());
                assert!((x - y).abs() <= tol * (1.0 + y.abs()), "m{m} n{n} k{k} ta{ta} tb{tb}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn sgemm_matches_reference() {
    check::<f32>(1e-4);
}

#[test]
fn dgemm_matches_reference() {
    check::<f64>(1e-12);
}
