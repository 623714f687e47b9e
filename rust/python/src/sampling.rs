//! Python access to the sampler: one token id per row of logits, and the check of its settings.

use crate::arrays::{contiguous, readonly_floats};
use crate::to_py;
use lmcore_core::sampling::{sample_row, Sampling, Scratch};
use lmcore_core::Real;
use numpy::{Element, PyArray1, PyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

fn settings(temperature: f64, top_k: Option<i64>, top_p: Option<f64>) -> PyResult<Sampling> {
    let top_k = match top_k {
        Some(k) if k < 1 => return Err(crate::LmcoreError::new_err(format!("top-k must be at least 1, got {k}"))),
        k => k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
    };
    let cfg = Sampling { temperature, top_k, top_p };
    cfg.validate().map_err(to_py)?;
    Ok(cfg)
}

fn sample_rows<'py, F: Real + Element>(py: Python<'py>, logits: &Bound<'py, PyAny>, u: &[f64], cfg: &Sampling) -> PyResult<Bound<'py, PyAny>> {
    let ro = readonly_floats::<F>(logits, "logits")?;
    let &[rows, vocab] = ro.shape() else {
        return Err(crate::LmcoreError::new_err(format!("logits must be 2-D (rows, vocab), got shape {:?}", ro.shape())));
    };
    if vocab == 0 || u.len() != rows {
        return Err(crate::LmcoreError::new_err(format!("{} uniform numbers for logits of shape ({rows}, {vocab})", u.len())));
    }
    let data = contiguous(&ro)?;
    let mut scratch = Scratch::default();
    let mut ids = Vec::with_capacity(rows);
    for (row, &u) in data.chunks_exact(vocab).zip(u) {
        ids.push(sample_row(row, u, cfg, &mut scratch).map_err(|e| crate::LmcoreError::new_err(format!("row {}: {e}", ids.len())))? as i64);
    }
    Ok(PyArray1::from_vec(py, ids).into_any())
}

/// One token id per row of `logits` (rows, vocab), float32 or float64: temperature (0 = greedy),
/// top-k, top-p, then the inverse CDF at `u` (rows,), uniform numbers in [0, 1) from the caller.
#[pyfunction]
#[pyo3(signature = (logits, u, temperature=1.0, top_k=None, top_p=None))]
fn sample<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    u: &Bound<'py, PyAny>,
    temperature: f64,
    top_k: Option<i64>,
    top_p: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let cfg = settings(temperature, top_k, top_p)?;
    let u_ro = readonly_floats::<f64>(u, "u")?;
    let u = contiguous(&u_ro)?;
    if let Some(bad) = u.iter().find(|x| !(0.0..1.0).contains(*x)) {
        return Err(crate::LmcoreError::new_err(format!("u must lie in [0, 1), got {bad}")));
    }
    if logits.downcast::<PyArrayDyn<f32>>().is_ok() {
        sample_rows::<f32>(py, logits, &u, &cfg)
    } else {
        sample_rows::<f64>(py, logits, &u, &cfg)
    }
}

/// Raise ValueError unless the sampling settings are usable.
#[pyfunction]
#[pyo3(signature = (temperature=1.0, top_k=None, top_p=None))]
fn validate_sampling(temperature: f64, top_k: Option<i64>, top_p: Option<f64>) -> PyResult<()> {
    settings(temperature, top_k, top_p).map(|_| ())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(validate_sampling, m)?)?;
    Ok(())
}
