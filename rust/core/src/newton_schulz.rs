//! Newton-Schulz orthogonalisation, Muon's core: a matrix G = U S V^T is replaced by about
//! U V^T, its singular values pushed towards 1, with matrix products only (no SVD). Five steps of
//! Keller Jordan's quintic X <- a X + (b A + c A^2) X, A = X X^T, on X = G / ||G||_F. The
//! coefficients trade exactness for speed: singular values land in roughly [0.7, 1.2], not at 1,
//! which training does not mind. X is kept wide (rows <= columns, G transposed if it is tall), so
//! A is the smaller Gram matrix. One matrix runs on one thread (Muon gives the threads different
//! matrices: its products are too small to split well), so its result does not depend on the
//! thread count; the scratch is sized once, for the largest matrix, so a call allocates nothing.
//! It runs in the model's float type: float32 for training, float64 for the gradient checks (and
//! the tests that compare it with a float64 reference).

use crate::blas::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::memory;
use crate::real::Real;
use crate::simd::simd_loop;

/// (a, b, c) of the quintic a x + b x^3 + c x^5.
pub const COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
pub const STEPS: usize = 5;
/// Added to the Frobenius norm, so a zero matrix stays zero instead of becoming NaN.
const NORM_EPS: f64 = 1e-7;

pub struct NewtonSchulz<F> {
    /// The iterate X (m, n), m <= n, and the next one.
    x: Vec<F>,
    y: Vec<F>,
    /// A = X X^T and B = b A + c A A, both (m, m).
    a: Vec<F>,
    b: Vec<F>,
}

impl<F: Real> NewtonSchulz<F> {
    /// Scratch for every (rows, cols) matrix of `shapes`.
    pub fn new(shapes: impl IntoIterator<Item = (usize, usize)>) -> Result<Self> {
        let (mut wide, mut gram) = (0usize, 0usize);
        for (r, c) in shapes {
            let too_large = || Error::Invalid(format!("a ({r}, {c}) matrix is too large to orthogonalise"));
            wide = wide.max(r.checked_mul(c).ok_or_else(too_large)?);
            gram = gram.max(r.min(c).checked_mul(r.min(c)).ok_or_else(too_large)?);
        }
        let what = "Muon's Newton-Schulz scratch";
        Ok(NewtonSchulz {
            x: memory::filled(wide, F::ZERO, what)?,
            y: memory::filled(wide, F::ZERO, what)?,
            a: memory::filled(gram, F::ZERO, what)?,
            b: memory::filled(gram, F::ZERO, what)?,
        })
    }

    /// Replace the row-major (rows, cols) matrix `g` by its orthogonalisation. Panics only on an
    /// internal bug: a shape larger than the ones this scratch was made for.
    pub fn orthogonalise(&mut self, g: &mut [F], rows: usize, cols: usize) {
        let (m, n, tall) = (rows.min(cols), rows.max(cols), rows > cols);
        assert!(g.len() == rows * cols && m * n <= self.x.len() && m * m <= self.a.len(), "newton_schulz: a shape beyond its scratch");
        let norm = g.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>().sqrt();
        let inv = F::from_f64(1.0 / (norm + NORM_EPS));
        let x = &mut self.x[..m * n];
        if tall {
            transpose(g, rows, cols, x, inv);
        } else {
            for (x, &v) in x.iter_mut().zip(g.iter()) {
                *x = v * inv;
            }
        }
        let (ka, kb, kc) = (F::from_f64(COEFFS.0), F::from_f64(COEFFS.1), F::from_f64(COEFFS.2));
        for _ in 0..STEPS {
            let (x, y, a, b) = (&self.x[..m * n], &mut self.y[..m * n], &mut self.a[..m * m], &mut self.b[..m * m]);
            // A = X X^T
            gemm(&Gemm::nt(m, m, n, x, n, x, n), a, m);
            let a = &*a;
            // B = c A A + b A
            gemm(&Gemm::nn(m, m, m, a, m, a, m).alpha(kc), b, m);
            add_scaled(b, a, kb);
            // Y = B X + a X
            let b = &*b;
            gemm(&Gemm::nn(m, n, m, b, m, x, n), y, n);
            add_scaled(y, x, ka);
            std::mem::swap(&mut self.x, &mut self.y);
        }
        let x = &self.x[..m * n];
        if tall {
            transpose(x, cols, rows, g, F::from_f64(1.0));
        } else {
            g.copy_from_slice(x);
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        (self.x.capacity() + self.y.capacity() + self.a.capacity() + self.b.capacity()) * size_of::<F>()
    }
}

/// out (cols, rows) = k * src^T, src (rows, cols) row-major.
fn transpose<F: Real>(src: &[F], rows: usize, cols: usize, out: &mut [F], k: F) {
    for (i, row) in src.chunks_exact(cols).enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate() {
            out[j * rows + i] = v * k;
        }
    }
}

simd_loop! {
    /// acc += k x, elementwise.
    fn add_scaled<F: Real>(acc: &mut [F], x: &[F], k: F) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += k * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blas::gemm_reference;
    use crate::rng::Rng;

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..rows * cols).map(|_| rng.normal()).collect()
    }

    /// Eigenvalues of the symmetric (n, n) matrix `s` by cyclic Jacobi rotations.
    fn symmetric_eigenvalues(mut s: Vec<f64>, n: usize) -> Vec<f64> {
        for _ in 0..100 {
            let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| s[i * n + j].powi(2)).sum();
            if off < 1e-22 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    if s[p * n + q].abs() < 1e-300 {
                        continue;
                    }
                    let theta = (s[q * n + q] - s[p * n + p]) / (2.0 * s[p * n + q]);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let (c, sn) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                    for k in 0..n {
                        let (skp, skq) = (s[k * n + p], s[k * n + q]);
                        s[k * n + p] = c * skp - sn * skq;
                        s[k * n + q] = sn * skp + c * skq;
                    }
                    for k in 0..n {
                        let (spk, sqk) = (s[p * n + k], s[q * n + k]);
                        s[p * n + k] = c * spk - sn * sqk;
                        s[q * n + k] = sn * spk + c * sqk;
                    }
                }
            }
        }
        (0..n).map(|i| s[i * n + i]).collect()
    }

    /// The singular values of a (rows, cols) matrix: square roots of the eigenvalues of its
    /// smaller Gram matrix.
    fn singular_values(g: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let (m, tall) = (rows.min(cols), rows > cols);
        let mut gram = vec![0.0; m * m];
        let product = if tall { Gemm::tn(m, m, rows, g, cols, g, cols) } else { Gemm::nt(m, m, cols, g, cols, g, cols) };
        gemm_reference(&product, &mut gram, m);
        symmetric_eigenvalues(gram, m).into_iter().map(|e| e.max(0.0).sqrt()).collect()
    }

    /// The quintic applied STEPS times to one normalised singular value.
    fn quintic_steps(mut x: f64) -> f64 {
        for _ in 0..STEPS {
            x = COEFFS.0 * x + COEFFS.1 * x.powi(3) + COEFFS.2 * x.powi(5);
        }
        x
    }

    #[test]
    fn singular_values_land_in_the_quintics_band() {
        // Wide, square, tall (transposed inside), and a fused Q, K, V block's shape.
        for (rows, cols, seed) in [(8, 24, 1), (16, 16, 2), (40, 12, 3), (96, 32, 4)] {
            // Rows scaled from 1 down to 1/10, so the singular values start far from equal.
            let mut g = random(rows, cols, seed);
            for (i, row) in g.chunks_exact_mut(cols).enumerate() {
                row.iter_mut().for_each(|v| *v *= 0.1f64.powf(i as f64 / rows as f64));
            }
            let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            let before: Vec<f64> = singular_values(&g, rows, cols).iter().map(|s| s / norm).collect();
            let spread = before.iter().cloned().fold(0.0, f64::max) / before.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(spread > 5.0, "a test matrix with spread singular values ({spread})");
            let mut ns = NewtonSchulz::<f64>::new([(rows, cols)]).unwrap();
            ns.orthogonalise(&mut g, rows, cols);
            let mut after = singular_values(&g, rows, cols);
            // Each singular value goes through the scalar quintic, the vectors stay.
            let mut expected: Vec<f64> = before.iter().map(|&x| quintic_steps(x)).collect();
            after.sort_by(f64::total_cmp);
            expected.sort_by(f64::total_cmp);
            for (a, e) in after.iter().zip(&expected) {
                assert!((a - e).abs() < 1e-6, "({rows}, {cols}): singular value {a}, the quintic gives {e}");
            }
            // All but the tiniest (below 0.2% of the norm: a square matrix's smallest) land in the band.
            for (&x, &y) in before.iter().zip(&before.iter().map(|&x| quintic_steps(x)).collect::<Vec<_>>()) {
                assert!(x < 2e-3 || (0.65..1.2).contains(&y), "({rows}, {cols}): {x} of the norm became {y}");
            }
            let in_band = after.iter().filter(|s| (0.65..1.2).contains(*s)).count();
            assert!(in_band + 1 >= after.len(), "({rows}, {cols}): {in_band} of {} singular values in [0.65, 1.2]: {after:?}", after.len());
        }
    }

    #[test]
    fn a_tall_matrix_gives_the_transpose_of_its_transposes_result() {
        let (rows, cols) = (30, 10);
        let mut tall = random(rows, cols, 7);
        let mut wide = vec![0.0; rows * cols];
        transpose(&tall, rows, cols, &mut wide, 1.0);
        let mut ns = NewtonSchulz::<f64>::new([(rows, cols), (cols, rows)]).unwrap();
        ns.orthogonalise(&mut tall, rows, cols);
        ns.orthogonalise(&mut wide, cols, rows);
        let mut back = vec![0.0; rows * cols];
        transpose(&wide, cols, rows, &mut back, 1.0);
        for (t, b) in tall.iter().zip(&back) {
            assert!((t - b).abs() < 1e-12, "{t} vs {b}");
        }
        // The result is U V^T's approximation: the same singular vectors, so G^T O is symmetric
        // positive semi-definite (V S V^T up to the band), here checked for symmetry.
        let g = random(rows, cols, 7);
        let mut gto = vec![0.0; cols * cols];
        gemm_reference(&Gemm::tn(cols, cols, rows, &g, cols, &tall, cols), &mut gto, cols);
        for i in 0..cols {
            assert!(gto[i * cols + i] > 0.0);
            for j in 0..cols {
                assert!((gto[i * cols + j] - gto[j * cols + i]).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn f32_follows_f64_and_zero_stays_zero() {
        let (rows, cols) = (24, 48);
        let g = random(rows, cols, 11);
        let mut g64 = g.clone();
        let mut g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        NewtonSchulz::<f64>::new([(rows, cols)]).unwrap().orthogonalise(&mut g64, rows, cols);
        NewtonSchulz::<f32>::new([(rows, cols)]).unwrap().orthogonalise(&mut g32, rows, cols);
        let worst = g64.iter().zip(&g32).map(|(a, &b)| (a - b as f64).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "float32 differs from float64 by {worst}");
        let mut zero = vec![0.0f32; 12];
        NewtonSchulz::<f32>::new([(3, 4)]).unwrap().orthogonalise(&mut zero, 3, 4);
        assert!(zero.iter().all(|&v| v == 0.0));
    }
}
