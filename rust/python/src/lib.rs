//! `lmcore._core`: the thin PyO3 layer over lmcore-core. Everything here converts numpy arrays
//! in and out and turns engine errors into Python exceptions; no math lives here.

use pyo3::prelude::*;

mod arrays;
mod blas;
mod exclusive;
mod graph;
mod model;
mod sampling;
mod settings;

pyo3::create_exception!(
    _core,
    LmcoreError,
    pyo3::exceptions::PyValueError,
    "An error reported by the lmcore engine (bad shape, stale handle, out-of-range id, ...)."
);

/// Turn an engine error into a Python exception: a `LmcoreError` (a `ValueError`) with its message.
pub(crate) fn to_py(e: lmcore_core::Error) -> PyErr {
    LmcoreError::new_err(e.to_string())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LmcoreError", m.py().get_type::<LmcoreError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The target id cross-entropy does not count (as PyTorch's and Hugging Face's -100).
    m.add("IGNORE_ID", lmcore_core::IGNORE_ID)?;
    m.add_class::<model::Model>()?;
    m.add_class::<graph::Graph>()?;
    m.add_class::<graph::Tensor>()?;
    blas::register(m)?;
    sampling::register(m)?;
    settings::register(m)?;
    Ok(())
}
