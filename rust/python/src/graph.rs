//! `Graph` and `Tensor` for Python: every engine op on numpy arrays, in float32 or float64, so
//! tests can check each op and its gradient in isolation.

use crate::arrays::{read_floats, read_ids_into, to_numpy};
use crate::exclusive::Exclusive;
use crate::{to_py, LmcoreError};
use lmcore_core::{Graph as CoreGraph, Real, Rng, Var};
use numpy::Element;
use pyo3::prelude::*;

/// A handle to a tensor in a `Graph`. It goes stale when the graph is reset.
#[pyclass(frozen, module = "lmcore._core")]
#[derive(Clone, Copy)]
pub struct Tensor {
    var: Var,
}

enum Inner {
    F32(CoreGraph<f32>),
    F64(CoreGraph<f64>),
}

/// Run `$body` with `$g` bound to the graph, whatever its precision (`$F` names the float type),
/// once no other thread uses it.
macro_rules! with_graph {
    ($self:expr, $py:expr, $g:ident, $F:ident => $body:expr) => {
        match &mut *$self.inner.lock($py) {
            Inner::F32($g) => {
                #[allow(dead_code)]
                type $F = f32;
                $body
            }
            Inner::F64($g) => {
                #[allow(dead_code)]
                type $F = f64;
                $body
            }
        }
    };
}

/// A tape of engine ops on tensors made from numpy arrays. Calls from several Python threads
/// take turns.
#[pyclass(frozen, module = "lmcore._core")]
pub struct Graph {
    inner: Exclusive<Inner>,
}

fn tensor(r: lmcore_core::Result<Var>) -> PyResult<Tensor> {
    r.map(|var| Tensor { var }).map_err(to_py)
}

fn new_input<F: Real + Element>(g: &mut CoreGraph<F>, array: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let (shape, data) = read_floats::<F>(array, "array")?;
    if data.is_empty() {
        return Err(LmcoreError::new_err(format!("array is empty (shape {shape:?})")));
    }
    tensor(g.input(&shape, &data))
}

fn read_out<'py, F: Real + Element>(py: Python<'py>, g: &CoreGraph<F>, t: &Tensor, grad: bool) -> PyResult<Bound<'py, PyAny>> {
    let shape = g.shape(t.var).map_err(to_py)?;
    let data = if grad { g.grad(t.var) } else { g.value(t.var) }.map_err(to_py)?;
    to_numpy(py, data, shape.dims())
}

#[pymethods]
impl Graph {
    #[new]
    #[pyo3(signature = (dtype="float64", seed=0))]
    fn new(dtype: &str, seed: u64) -> PyResult<Self> {
        fn graph<F: Real>(seed: u64) -> CoreGraph<F> {
            let mut g = CoreGraph::new();
            g.rng = Rng::new(seed);
            g
        }
        let inner = match dtype {
            "float32" => Inner::F32(graph(seed)),
            "float64" => Inner::F64(graph(seed)),
            other => return Err(LmcoreError::new_err(format!("dtype must be 'float32' or 'float64', got {other:?}"))),
        };
        Ok(Graph { inner: Exclusive::new(inner) })
    }

    #[getter]
    fn dtype(&self, py: Python<'_>) -> &'static str {
        match *self.inner.lock(py) {
            Inner::F32(_) => "float32",
            Inner::F64(_) => "float64",
        }
    }

    /// How many times the graph has been reset.
    #[getter]
    fn generation(&self, py: Python<'_>) -> u64 {
        with_graph!(self, py, g, F => g.generation())
    }

    /// Forget the tape and rewind the arena: every tensor made so far becomes stale.
    fn reset(&self, py: Python<'_>) {
        with_graph!(self, py, g, F => g.reset())
    }

    /// A leaf tensor holding a copy of `array` (dtype must match the graph's).
    fn tensor(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => new_input::<F>(g, array))
    }

    /// A leaf tensor of integer ids (token ids or targets; -100, the ignore id, is accepted and
    /// refused by every op but cross_entropy, which does not count it).
    fn ids(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Tensor> {
        let mut ids = Vec::new();
        let shape = read_ids_into(array, "ids", &mut ids)?;
        if ids.is_empty() {
            return Err(LmcoreError::new_err(format!("ids array is empty (shape {shape:?})")));
        }
        with_graph!(self, py, g, F => tensor(g.input_targets(&shape, ids.iter().copied(), u32::MAX as usize)))
    }

    fn embedding(&self, py: Python<'_>, ids: Tensor, table: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.embedding(ids.var, table.var)))
    }

    fn add(&self, py: Python<'_>, a: Tensor, b: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.add(a.var, b.var)))
    }

    #[pyo3(signature = (x, weight, bias=None))]
    fn linear(&self, py: Python<'_>, x: Tensor, weight: Tensor, bias: Option<Tensor>) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.linear(x.var, weight.var, bias.map(|b| b.var))))
    }

    fn layernorm(&self, py: Python<'_>, x: Tensor, gamma: Tensor, beta: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.layernorm(x.var, gamma.var, beta.var)))
    }

    fn gelu(&self, py: Python<'_>, x: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.gelu(x.var)))
    }

    /// RMS normalisation of the last dimension: x * rstd * gain (no mean, no bias).
    fn rmsnorm(&self, py: Python<'_>, x: Tensor, gain: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.rmsnorm(x.var, gain.var)))
    }

    /// max(x, 0)^2.
    fn relu_squared(&self, py: Python<'_>, x: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.relu_squared(x.var)))
    }

    /// qkv (..., 3C) with every query and key head RMS-normalised, gains q_gain and k_gain (hs).
    fn qk_norm(&self, py: Python<'_>, qkv: Tensor, q_gain: Tensor, k_gain: Tensor, n_head: usize) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.qk_norm(qkv.var, q_gain.var, k_gain.var, n_head)))
    }

    /// qkv (B, T, 3C) with every query and key head rotated by its position (rotary embeddings).
    fn rope(&self, py: Python<'_>, qkv: Tensor, n_head: usize) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.rope(qkv.var, n_head)))
    }

    /// silu(gate) * up of x (..., 2H) holding the gate, then up: (..., H).
    fn swiglu(&self, py: Python<'_>, x: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.swiglu(x.var)))
    }

    /// cap * tanh(x / cap).
    fn softcap(&self, py: Python<'_>, x: Tensor, cap: f64) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.softcap(x.var, cap)))
    }

    /// Causal self-attention on qkv (B, T, 3C) with `n_head` heads; returns (B, T, C).
    fn attention(&self, py: Python<'_>, qkv: Tensor, n_head: usize) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.attention(qkv.var, n_head)))
    }

    /// Mean cross-entropy of logits (..., V) against integer targets (...); a scalar.
    fn cross_entropy(&self, py: Python<'_>, logits: Tensor, targets: Tensor) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.cross_entropy(logits.var, targets.var)))
    }

    /// Dropout with probability `p`, masks drawn from the graph's seeded generator.
    fn dropout(&self, py: Python<'_>, x: Tensor, p: f64) -> PyResult<Tensor> {
        with_graph!(self, py, g, F => tensor(g.dropout(x.var, p)))
    }

    /// Backpropagate from `t`: a scalar, or any tensor given `grad`, the gradient of some
    /// scalar with respect to it.
    #[pyo3(signature = (t, grad=None))]
    fn backward(&self, py: Python<'_>, t: Tensor, grad: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        with_graph!(self, py, g, F => {
            match grad {
                None => py.allow_threads(|| g.backward(t.var)).map_err(to_py),
                Some(arr) => {
                    let (_, data) = read_floats::<F>(arr, "grad")?;
                    py.allow_threads(|| g.backward_with(t.var, &data)).map_err(to_py)
                }
            }
        })
    }

    /// A copy of the tensor's values.
    fn value<'py>(&self, py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyAny>> {
        with_graph!(self, py, g, F => read_out(py, g, &t, false))
    }

    /// A copy of the tensor's gradient from the last backward.
    fn grad<'py>(&self, py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyAny>> {
        with_graph!(self, py, g, F => read_out(py, g, &t, true))
    }

    fn shape(&self, py: Python<'_>, t: Tensor) -> PyResult<Vec<usize>> {
        with_graph!(self, py, g, F => g.shape(t.var).map(|s| s.dims().to_vec()).map_err(to_py))
    }
}
