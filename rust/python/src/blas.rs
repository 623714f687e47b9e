//! Python access to the BLAS layer: matmul through sgemm/dgemm and the naive reference, so
//! tests can check every transpose combination, and the thread count.

use crate::arrays::{check_output_memory, contiguous, readonly_floats};
use lmcore_core::blas::{gemm_reference, Gemm};
use lmcore_core::matmul::gemm_rows;
use lmcore_core::parallel;
use lmcore_core::Real;
use numpy::{Element, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

fn matmul_generic<'py, F: Real + Element>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    trans_a: bool,
    trans_b: bool,
    reference: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (a_ro, b_ro) = (readonly_floats::<F>(a, "a")?, readonly_floats::<F>(b, "b")?);
    let (sa, sb) = (a_ro.shape().to_vec(), b_ro.shape().to_vec());
    let (&[ar, ac], &[br, bc]) = (sa.as_slice(), sb.as_slice()) else {
        return Err(crate::LmcoreError::new_err(format!("matmul needs 2-D arrays, got shapes {sa:?} and {sb:?}")));
    };
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(crate::LmcoreError::new_err(format!("matmul: inner dimensions differ ({k} vs {k2}) for shapes {sa:?}, {sb:?}")));
    }
    if m.max(n).max(k) > i32::MAX as usize {
        return Err(crate::LmcoreError::new_err("matmul: dimensions exceed what BLAS can index"));
    }
    // Contiguous inputs are read in place; only strided views are copied.
    let (av, bv) = (contiguous(&a_ro)?, contiguous(&b_ro)?);
    check_output_memory::<F>(m.saturating_mul(n), &format!("a ({m}, {n}) matmul result"))?;
    let out = PyArray2::<F>::zeros(py, [m, n], false);
    {
        let mut c = out.readwrite();
        let c = c.as_slice_mut().expect("a new array is contiguous");
        let f = if reference { gemm_reference::<F> } else { gemm_rows::<F> };
        // The GIL stays held: the inputs are numpy's memory, which no other thread may change meanwhile.
        f(&Gemm::new(trans_a, trans_b, m, n, k, &av, ac.max(1), &bv, bc.max(1)), c, n.max(1));
    }
    Ok(out.into_any())
}

fn matmul_dispatch<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    trans_a: bool,
    trans_b: bool,
    reference: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if a.downcast::<numpy::PyArrayDyn<f64>>().is_ok() {
        matmul_generic::<f64>(py, a, b, trans_a, trans_b, reference)
    } else {
        matmul_generic::<f32>(py, a, b, trans_a, trans_b, reference)
    }
}

/// op(a) @ op(b) through BLAS (sgemm for float32, dgemm for float64), op = transpose if asked.
#[pyfunction]
#[pyo3(signature = (a, b, trans_a=false, trans_b=false))]
fn matmul<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>, trans_a: bool, trans_b: bool) -> PyResult<Bound<'py, PyAny>> {
    matmul_dispatch(py, a, b, trans_a, trans_b, false)
}

/// The same product by the naive triple loop the engine's tests trust.
#[pyfunction]
#[pyo3(signature = (a, b, trans_a=false, trans_b=false))]
fn matmul_reference<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>, trans_a: bool, trans_b: bool) -> PyResult<Bound<'py, PyAny>> {
    matmul_dispatch(py, a, b, trans_a, trans_b, true)
}

/// Set the number of threads the engine uses (BLAS itself always runs single-threaded inside
/// them). More than the cores this process may use is capped, with a `RuntimeWarning`.
/// Returns the number in use.
#[pyfunction]
fn set_num_threads(py: Python<'_>, n: usize) -> PyResult<usize> {
    if n == 0 {
        return Err(crate::LmcoreError::new_err("thread count must be at least 1"));
    }
    let used = parallel::set_num_threads(n);
    if used < n {
        let msg = format!("{n} threads requested, but this process may use {used} cores: using {used} (more threads than cores only wait for each other)");
        PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(), &std::ffi::CString::new(msg)?, 1)?;
    }
    Ok(used)
}

/// The kernel family OpenBLAS runs on this CPU ("Haswell", "Zen", "SkylakeX", ...).
#[pyfunction]
fn blas_core() -> String {
    lmcore_core::blas::core_name()
}

/// OpenBLAS's build description: its version, the kernel family, MAX_THREADS.
#[pyfunction]
fn blas_config() -> String {
    lmcore_core::blas::config()
}

/// The widest SIMD this CPU has, as the engine's own loops chose it: "avx512", "avx2" or "baseline".
#[pyfunction]
fn simd_level() -> &'static str {
    match lmcore_core::simd::level() {
        lmcore_core::simd::Level::Avx512 => "avx512",
        lmcore_core::simd::Level::Avx2 => "avx2",
        lmcore_core::simd::Level::Baseline => "baseline",
    }
}

/// Turn the engine's per-op timers on (clearing them) or off.
#[pyfunction]
fn profile_enable(on: bool) {
    lmcore_core::profile::enable(on);
}

/// The per-op timers since `profile_enable(True)`: (op family, forward seconds, backward seconds).
#[pyfunction]
fn profile_report() -> Vec<(&'static str, f64, f64)> {
    lmcore_core::profile::report().into_iter().map(|r| (r.name, r.forward_s, r.backward_s)).collect()
}

/// The number of threads the engine uses.
#[pyfunction]
fn num_threads() -> usize {
    parallel::num_threads()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(matmul_reference, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(blas_core, m)?)?;
    m.add_function(wrap_pyfunction!(blas_config, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(profile_enable, m)?)?;
    m.add_function(wrap_pyfunction!(profile_report, m)?)?;
    Ok(())
}
