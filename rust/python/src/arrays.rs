//! numpy <-> Rust conversions with clear errors for wrong dtypes, empty arrays and bad values.

use lmcore_core::Real;
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use std::borrow::Cow;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// The numpy dtype name of `obj`, or its Python type name if it is not an array.
fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    match obj.getattr("dtype") {
        Ok(d) => d.str().map(|s| s.to_string()).unwrap_or_else(|_| "unknown".into()),
        Err(_) => obj.get_type().name().map(|s| s.to_string()).unwrap_or_else(|_| "unknown".into()),
    }
}

/// A read-only view of a float array of exactly dtype `F`, or a TypeError naming both dtypes.
pub fn readonly_floats<'py, F: Real + Element>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArrayDyn<'py, F>> {
    let arr = obj.downcast::<PyArrayDyn<F>>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a numpy array of dtype {}, got {}", F::NAME, dtype_name(obj)))
    })?;
    arr.try_readonly().map_err(|e| crate::LmcoreError::new_err(format!("{what}: {e}")))
}

/// The array's elements in row-major order: borrowed when contiguous, copied when strided (a
/// view of a few bytes can describe terabytes: the copy's memory is checked first).
pub fn contiguous<'a, F: Real + Element>(ro: &'a PyReadonlyArrayDyn<'_, F>) -> PyResult<Cow<'a, [F]>> {
    match ro.as_slice() {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(_) => {
            let mut copy = Vec::new();
            copy_into(ro, &mut copy)?;
            Ok(Cow::Owned(copy))
        }
    }
}

/// Replace `out`'s contents with the array's elements in row-major order, memory checked.
fn copy_into<F: Real + Element>(ro: &PyReadonlyArrayDyn<'_, F>, out: &mut Vec<F>) -> PyResult<()> {
    out.clear();
    let what = format!("a contiguous copy of a {:?} array", ro.shape());
    lmcore_core::memory::reserve(out, ro.len(), &what).map_err(crate::to_py)?;
    match ro.as_slice() {
        Ok(s) => out.extend_from_slice(s),
        Err(_) => out.extend(ro.as_array().iter().copied()),
    }
    Ok(())
}

/// Copy a float array of exactly dtype `F` into `out` (cleared first); returns its shape.
pub fn read_floats_into<F: Real + Element>(obj: &Bound<'_, PyAny>, what: &str, out: &mut Vec<F>) -> PyResult<Vec<usize>> {
    let ro = readonly_floats::<F>(obj, what)?;
    copy_into(&ro, out)?;
    Ok(ro.shape().to_vec())
}

pub fn read_floats<F: Real + Element>(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<usize>, Vec<F>)> {
    let mut v = Vec::new();
    let shape = read_floats_into(obj, what, &mut v)?;
    Ok((shape, v))
}

/// Reject NaN and infinities (for values that are stored, such as parameters).
pub fn require_finite<F: Real>(data: &[F], what: &str) -> PyResult<()> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(crate::LmcoreError::new_err(format!("{what} contains a non-finite value ({:?}) at flat index {i}", data[i]))),
        None => Ok(()),
    }
}

macro_rules! try_int_dtype {
    ($obj:expr, $out:expr, $($t:ty),*) => {
        $(
            if let Ok(arr) = $obj.downcast::<PyArrayDyn<$t>>() {
                let ro = arr.readonly();
                $out.clear();
                lmcore_core::memory::reserve($out, arr.len(), "a copy of the ids").map_err(crate::to_py)?;
                $out.extend(ro.as_array().iter().map(|&x| x as i64));
                return Ok(arr.shape().to_vec());
            }
        )*
    };
}

/// Copy an integer array (int64, int32, int16, uint8/16/32) into `out` as i64; returns its shape.
/// Range checks against the vocabulary happen in the engine, which reports the offending id.
pub fn read_ids_into(obj: &Bound<'_, PyAny>, what: &str, out: &mut Vec<i64>) -> PyResult<Vec<usize>> {
    try_int_dtype!(obj, out, i64, i32, i16, u32, u16, u8);
    if let Ok(arr) = obj.downcast::<PyArrayDyn<u64>>() {
        let ro = arr.readonly();
        out.clear();
        lmcore_core::memory::reserve(out, arr.len(), "a copy of the ids").map_err(crate::to_py)?;
        for &x in ro.as_array().iter() {
            out.push(i64::try_from(x).map_err(|_| crate::LmcoreError::new_err(format!("{what}: id {x} is out of range")))?);
        }
        return Ok(arr.shape().to_vec());
    }
    Err(PyTypeError::new_err(format!("{what} must be a numpy integer array, got {}", dtype_name(obj))))
}

/// Shape check for a (B, T) batch of ids.
pub fn batch_dims(shape: &[usize], what: &str) -> PyResult<(usize, usize)> {
    match shape {
        [b, t] if *b > 0 && *t > 0 => Ok((*b, *t)),
        [_, _] => Err(crate::LmcoreError::new_err(format!("{what} is empty (shape {shape:?})"))),
        _ => Err(crate::LmcoreError::new_err(format!("{what} must be 2-D (batch, time), got shape {shape:?}"))),
    }
}

/// A new numpy array of the given shape holding `data`.
pub fn to_numpy<'py, F: Real + Element>(py: Python<'py>, data: &[F], shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    check_output_memory::<F>(data.len(), "the result")?;
    let flat = numpy::PyArray1::<F>::from_slice(py, data);
    Ok(flat.reshape(shape.to_vec())?.into_any())
}

/// Refuse an output array of `len` floats that this process has no memory for (numpy's own
/// allocation would be granted lazily and the process killed when it is filled).
pub fn check_output_memory<F>(len: usize, what: &str) -> PyResult<()> {
    let bytes = len.saturating_mul(size_of::<F>());
    lmcore_core::memory::check_available(bytes, what).map_err(crate::to_py)
}

/// A contiguous 1-D float array of exactly dtype `F` and `len` elements, borrowed for writing
/// (data-parallel training's gradient buffer: mpi4py reduces it in place, the model copies in and
/// out of it, and nothing is allocated per step).
pub fn flat_floats_mut<'py, F: Real + Element>(obj: &Bound<'py, PyAny>, what: &str, len: usize) -> PyResult<numpy::PyReadwriteArray1<'py, F>> {
    let arr = obj.downcast::<numpy::PyArray1<F>>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a 1-D numpy array of dtype {}, got {}", F::NAME, dtype_name(obj)))
    })?;
    let rw = arr.try_readwrite().map_err(|e| crate::LmcoreError::new_err(format!("{what}: {e}")))?;
    if rw.len() != len {
        return Err(crate::LmcoreError::new_err(format!("{what} must hold {len} floats (one per parameter), got {}", rw.len())));
    }
    if rw.as_slice().is_err() {
        return Err(crate::LmcoreError::new_err(format!("{what} must be contiguous")));
    }
    Ok(rw)
}
