//! `Model` for Python: a GPT with its optimizer's state (AdamW's or Muon's). One training step
//! releases the GIL; every parameter, gradient and optimizer state buffer can be read and written
//! by name as numpy arrays (that is all a checkpoint needs, with `step` and `rng_state`). Calls
//! from several Python threads take turns (see `exclusive`).

use crate::arrays::{batch_dims, flat_floats_mut, read_floats, read_ids_into, require_finite, to_numpy};
use crate::exclusive::Exclusive;
use crate::{to_py, LmcoreError};
use crate::settings::Settings;
use lmcore_core::{Real, Trainer};
use numpy::Element;
use pyo3::prelude::*;
use pyo3::types::PyDict;

enum Inner {
    F32(Trainer<f32>),
    F64(Trainer<f64>),
}

macro_rules! with_trainer {
    ($inner:expr, $t:ident => $body:expr) => {
        match $inner {
            Inner::F32($t) => $body,
            Inner::F64($t) => $body,
        }
    };
}

/// Which per-parameter buffer to read or write: the value, the gradient, or one of the
/// optimizer's state buffers by name.
#[derive(Clone, Copy)]
enum Buffer<'a> {
    Value,
    Grad,
    Optimizer(&'a str),
}

fn read_buffer<'py, F: Real + Element>(py: Python<'py>, t: &Trainer<F>, name: &str, which: Buffer) -> PyResult<Bound<'py, PyAny>> {
    let info = t.graph.param(name).map_err(to_py)?;
    let data = match which {
        Buffer::Value => t.graph.value(info.var),
        Buffer::Grad => t.graph.grad(info.var),
        Buffer::Optimizer(buffer) => t.opt.state(buffer).map(|b| &b[info.offset..info.offset + info.shape.numel()]),
    };
    to_numpy(py, data.map_err(to_py)?, info.shape.dims())
}

fn write_buffer<F: Real + Element>(t: &mut Trainer<F>, name: &str, which: Buffer, array: &Bound<'_, PyAny>) -> PyResult<()> {
    let info = t.graph.param(name).map_err(to_py)?.clone();
    let (shape, data) = read_floats::<F>(array, name)?;
    if shape != info.shape.dims() {
        return Err(LmcoreError::new_err(format!("{name}: expected shape {:?}, got {shape:?}", info.shape.dims())));
    }
    require_finite(&data, name)?;
    let in_name = |e: lmcore_core::Error| LmcoreError::new_err(format!("{name}: {e}"));
    let slot = match which {
        Buffer::Value => t.graph.value_mut(info.var).map_err(in_name)?,
        Buffer::Optimizer(buffer) => {
            t.opt.check_state(buffer, &data).map_err(in_name)?;
            &mut t.opt.state_mut(buffer).map_err(in_name)?[info.offset..info.offset + info.shape.numel()]
        }
        Buffer::Grad => return Err(LmcoreError::new_err("gradients are computed, not set")),
    };
    slot.copy_from_slice(&data);
    Ok(())
}

/// The flat gradient buffer copied into a caller's array (data-parallel training reduces it).
fn grads_into<F: Real + Element>(t: &mut Trainer<F>, out: &Bound<'_, PyAny>) -> PyResult<()> {
    let grads = t.param_grads_mut();
    let mut rw = flat_floats_mut::<F>(out, "out", grads.len())?;
    rw.as_slice_mut().expect("checked contiguous").copy_from_slice(grads);
    Ok(())
}

/// The flat gradient buffer set to a caller's array times `scale`.
fn grads_from<F: Real + Element>(t: &mut Trainer<F>, grads: &Bound<'_, PyAny>, scale: f64) -> PyResult<()> {
    let mine = t.param_grads_mut();
    let rw = flat_floats_mut::<F>(grads, "grads", mine.len())?;
    let s = F::from_f64(scale);
    for (g, &src) in mine.iter_mut().zip(rw.as_slice().expect("checked contiguous")) {
        *g = src * s;
    }
    Ok(())
}

struct State {
    inner: Inner,
    // Reused for every batch so a step allocates nothing once warm.
    idx_buf: Vec<i64>,
    tgt_buf: Vec<i64>,
}

impl State {
    /// A training batch's ids and targets into the reused buffers; its (batch, time) dimensions.
    fn read_batch(&mut self, idx: &Bound<'_, PyAny>, targets: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
        let shape = read_ids_into(idx, "idx", &mut self.idx_buf)?;
        let dims = batch_dims(&shape, "idx")?;
        let tshape = read_ids_into(targets, "targets", &mut self.tgt_buf)?;
        if tshape != shape {
            return Err(LmcoreError::new_err(format!("targets shape {tshape:?} differs from idx shape {shape:?}")));
        }
        Ok(dims)
    }
}

/// A GPT language model and its optimizer state (AdamW's or Muon's).
#[pyclass(frozen, module = "lmcore._core")]
pub struct Model {
    state: Exclusive<State>,
}

#[pymethods]
impl Model {
    /// `Model(vocab_size=..., d_model=..., n_head=..., n_layer=..., block_size=..., dropout=0.0,
    /// seed=0, dtype="float32", beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
    /// grad_clip=0.0, optimizer="adamw", muon_lr_ratio=20.0, muon_momentum=0.95)`: keyword
    /// settings, converted once and validated by the engine.
    #[new]
    #[pyo3(signature = (**settings))]
    fn new(py: Python<'_>, settings: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let d = settings.cloned().unwrap_or_else(|| PyDict::new(py));
        let Settings { model, optimizer, grad_clip, seed, dtype } = Settings::from_dict(&d)?;
        let inner = match dtype.as_str() {
            "float32" => Inner::F32(Trainer::new(model, seed, optimizer, grad_clip).map_err(to_py)?),
            "float64" => Inner::F64(Trainer::new(model, seed, optimizer, grad_clip).map_err(to_py)?),
            other => return Err(LmcoreError::new_err(format!("dtype must be 'float32' or 'float64', got {other:?}"))),
        };
        Ok(Model { state: Exclusive::new(State { inner, idx_buf: Vec::new(), tgt_buf: Vec::new() }) })
    }

    /// One optimizer step on a batch; returns (loss, gradient norm before clipping). Releases the GIL.
    fn train_step(&self, py: Python<'_>, idx: &Bound<'_, PyAny>, targets: &Bound<'_, PyAny>, lr: f64) -> PyResult<(f64, f64)> {
        let st = &mut *self.state.lock(py);
        let (b, t) = st.read_batch(idx, targets)?;
        let (x, y) = (&st.idx_buf, &st.tgt_buf);
        let stats = with_trainer!(&mut st.inner, tr => py.allow_threads(|| tr.train_step(x, y, b, t, lr))).map_err(to_py)?;
        Ok((stats.loss, stats.grad_norm))
    }

    /// The first half of `train_step`: forward and backward on a batch, the gradients of its mean
    /// loss left in the model (`grads_into` reads them); returns the loss. Nothing is updated.
    /// Releases the GIL.
    fn compute_gradients(&self, py: Python<'_>, idx: &Bound<'_, PyAny>, targets: &Bound<'_, PyAny>) -> PyResult<f64> {
        let st = &mut *self.state.lock(py);
        let (b, t) = st.read_batch(idx, targets)?;
        let (x, y) = (&st.idx_buf, &st.tgt_buf);
        with_trainer!(&mut st.inner, tr => py.allow_threads(|| tr.compute_gradients(x, y, b, t))).map_err(to_py)
    }

    /// The second half of `train_step`: clip the gradients the model holds by their global norm
    /// and update the weights at learning rate `lr`; returns the norm before clipping. Releases
    /// the GIL.
    fn apply_gradients(&self, py: Python<'_>, lr: f64) -> PyResult<f64> {
        let st = &mut *self.state.lock(py);
        with_trainer!(&mut st.inner, tr => py.allow_threads(|| tr.apply_gradients(lr))).map_err(to_py)
    }

    /// Copy every parameter's gradient, flat in `param_names` order, into `out`: a contiguous 1-D
    /// array of the model's dtype and `num_params` floats (a view into a larger buffer is fine).
    fn grads_into(&self, py: Python<'_>, out: &Bound<'_, PyAny>) -> PyResult<()> {
        with_trainer!(&mut self.state.lock(py).inner, tr => grads_into(tr, out))
    }

    /// Replace the model's gradients by `grads` x `scale` (`grads` as `grads_into` writes it):
    /// the sum over processes of data-parallel training, scaled to their mean.
    #[pyo3(signature = (grads, scale=1.0))]
    fn grads_from(&self, py: Python<'_>, grads: &Bound<'_, PyAny>, scale: f64) -> PyResult<()> {
        with_trainer!(&mut self.state.lock(py).inner, tr => grads_from(tr, grads, scale))
    }

    /// A 64-bit fingerprint of every weight's bits: equal on processes that hold the same model.
    fn param_checksum(&self, py: Python<'_>) -> u64 {
        with_trainer!(&self.state.lock(py).inner, t => t.param_checksum())
    }

    /// Logits (B, T, V) for ids (B, T), and the mean loss if targets are given. No dropout,
    /// no gradient, no change to any state but the arena.
    #[pyo3(signature = (idx, targets=None))]
    fn forward<'py>(&self, py: Python<'py>, idx: &Bound<'py, PyAny>, targets: Option<&Bound<'py, PyAny>>) -> PyResult<(Bound<'py, PyAny>, Option<f64>)> {
        let st = &mut *self.state.lock(py);
        let shape = read_ids_into(idx, "idx", &mut st.idx_buf)?;
        let (b, t) = batch_dims(&shape, "idx")?;
        if let Some(tg) = targets {
            let tshape = read_ids_into(tg, "targets", &mut st.tgt_buf)?;
            if tshape != shape {
                return Err(LmcoreError::new_err(format!("targets shape {tshape:?} differs from idx shape {shape:?}")));
            }
        }
        let (x, y) = (&st.idx_buf, targets.map(|_| st.tgt_buf.as_slice()));
        with_trainer!(&mut st.inner, tr => {
            let v = tr.gpt.config.vocab_size;
            let (logits, loss) = py.allow_threads(|| tr.forward(x, y, b, t)).map_err(to_py)?;
            Ok((to_numpy(py, logits, &[b, t, v])?, loss))
        })
    }

    /// Size the arena for a training step on a (batch, seq_len) batch now, so a batch too large
    /// for this machine's memory raises here, before any work, and the first step allocates
    /// nothing. Weights, optimizer state and the dropout stream are untouched; the parameters'
    /// gradients are zeroed.
    fn reserve(&self, py: Python<'_>, batch: usize, seq_len: usize) -> PyResult<()> {
        let st = &mut *self.state.lock(py);
        with_trainer!(&mut st.inner, t => py.allow_threads(|| t.reserve(batch, seq_len))).map_err(to_py)
    }

    /// Start cached generation for `batch` rows (an empty key/value cache).
    fn kv_start(&self, py: Python<'_>, batch: &Bound<'_, PyAny>) -> PyResult<()> {
        let batch: usize = match batch.extract::<i128>() {
            Ok(n) if n < 1 => return Err(LmcoreError::new_err(format!("kv_start needs a number of rows >= 1, got {n}"))),
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX), // (more rows than memory: refused below)
            Err(_) => return Err(pyo3::exceptions::PyTypeError::new_err("kv_start needs an integer number of rows")),
        };
        let st = &mut *self.state.lock(py);
        with_trainer!(&mut st.inner, t => py.allow_threads(|| t.kv_start(batch))).map_err(to_py)
    }

    /// Feed tokens at the next positions of the cache: ids of shape (B,), one per row, or
    /// (B, P), P per row (a whole prompt in one call). Returns the logits (B, V) that follow each
    /// row's last token. Costs P positions plus attention over the cache, not a full forward.
    fn kv_push<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let st = &mut *self.state.lock(py);
        let shape = read_ids_into(tokens, "tokens", &mut st.idx_buf)?;
        let (rows, steps) = match shape[..] {
            [b] => (b, 1),
            [b, p] => (b, p),
            _ => return Err(LmcoreError::new_err(format!("tokens must be (B,) or (B, P), got shape {shape:?}"))),
        };
        let x = &st.idx_buf;
        with_trainer!(&mut st.inner, t => {
            let v = t.gpt.config.vocab_size;
            let logits = py.allow_threads(|| t.kv_push(x, steps)).map_err(to_py)?;
            to_numpy(py, logits, &[rows, v])
        })
    }

    /// Positions held in the key/value cache (0 before kv_start).
    #[getter]
    fn kv_len(&self, py: Python<'_>) -> usize {
        with_trainer!(&self.state.lock(py).inner, t => t.kv.as_ref().map_or(0, |kv| kv.len()))
    }

    /// Parameter names in a fixed order.
    fn param_names(&self, py: Python<'_>) -> Vec<String> {
        with_trainer!(&self.state.lock(py).inner, t => t.graph.params().iter().map(|p| p.name.clone()).collect())
    }

    fn get_param<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        with_trainer!(&self.state.lock(py).inner, t => read_buffer(py, t, name, Buffer::Value))
    }

    fn set_param(&self, py: Python<'_>, name: &str, array: &Bound<'_, PyAny>) -> PyResult<()> {
        with_trainer!(&mut self.state.lock(py).inner, t => write_buffer(t, name, Buffer::Value, array))
    }

    /// The gradient from the last training step.
    fn get_grad<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        with_trainer!(&self.state.lock(py).inner, t => read_buffer(py, t, name, Buffer::Grad))
    }

    /// The optimizer's name ("adamw"), as a checkpoint records it.
    #[getter]
    fn optimizer(&self, py: Python<'_>) -> &'static str {
        with_trainer!(&self.state.lock(py).inner, t => t.opt.name())
    }

    /// Names of the optimizer's state buffers (AdamW: adam_m, adam_v); each holds one array per
    /// parameter.
    fn optimizer_state_names(&self, py: Python<'_>) -> Vec<&'static str> {
        with_trainer!(&self.state.lock(py).inner, t => t.opt.state_names().to_vec())
    }

    /// A parameter's part of an optimizer state buffer.
    fn get_optimizer_state<'py>(&self, py: Python<'py>, name: &str, buffer: &str) -> PyResult<Bound<'py, PyAny>> {
        with_trainer!(&self.state.lock(py).inner, t => read_buffer(py, t, name, Buffer::Optimizer(buffer)))
    }

    fn set_optimizer_state(&self, py: Python<'_>, name: &str, buffer: &str, array: &Bound<'_, PyAny>) -> PyResult<()> {
        with_trainer!(&mut self.state.lock(py).inner, t => write_buffer(t, name, Buffer::Optimizer(buffer), array))
    }

    /// AdamW's first and second moments (m, v) for a parameter (`get_optimizer_state` of
    /// adam_m and adam_v).
    fn get_adam_state<'py>(&self, py: Python<'py>, name: &str) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        Ok((self.get_optimizer_state(py, name, "adam_m")?, self.get_optimizer_state(py, name, "adam_v")?))
    }

    fn set_adam_state(&self, py: Python<'_>, name: &str, m: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_optimizer_state(py, name, "adam_m", m)?;
        self.set_optimizer_state(py, name, "adam_v", v)
    }

    /// Optimizer updates done so far (AdamW's bias-correction t).
    #[getter]
    fn get_step(&self, py: Python<'_>) -> u64 {
        with_trainer!(&self.state.lock(py).inner, t => t.opt.step())
    }

    #[setter]
    fn set_step(&self, py: Python<'_>, step: u64) {
        with_trainer!(&mut self.state.lock(py).inner, t => t.opt.set_step(step))
    }

    /// State of the dropout generator (one 64-bit integer).
    #[getter]
    fn get_rng_state(&self, py: Python<'_>) -> u64 {
        with_trainer!(&self.state.lock(py).inner, t => t.graph.rng.state)
    }

    #[setter]
    fn set_rng_state(&self, py: Python<'_>, state: u64) {
        with_trainer!(&mut self.state.lock(py).inner, t => t.graph.rng.state = state)
    }

    #[getter]
    fn num_params(&self, py: Python<'_>) -> usize {
        with_trainer!(&self.state.lock(py).inner, t => t.graph.param_len())
    }

    /// Bytes the activation arena has needed at most (values, gradients and ids).
    #[getter]
    fn arena_high_water_bytes(&self, py: Python<'_>) -> usize {
        with_trainer!(&self.state.lock(py).inner, t => t.graph.arena_high_water_bytes())
    }

    /// Bytes reserved by all of the engine's buffers for this model (parameters included).
    #[getter]
    fn arena_capacity_bytes(&self, py: Python<'_>) -> usize {
        with_trainer!(&self.state.lock(py).inner, t => t.graph.capacity_bytes() + t.opt.capacity_bytes() + t.clip.capacity_bytes())
    }

    #[getter]
    fn dtype(&self, py: Python<'_>) -> &'static str {
        match self.state.lock(py).inner {
            Inner::F32(_) => "float32",
            Inner::F64(_) => "float64",
        }
    }

    /// The model's configuration as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = with_trainer!(&self.state.lock(py).inner, t => t.gpt.config);
        let d = PyDict::new(py);
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("n_head", c.n_head)?;
        d.set_item("n_layer", c.n_layer)?;
        d.set_item("block_size", c.block_size)?;
        d.set_item("dropout", c.dropout)?;
        d.set_item("rope", c.rope)?;
        d.set_item("rmsnorm", c.rmsnorm)?;
        d.set_item("qk_norm", c.qk_norm)?;
        d.set_item("relu2", c.relu2)?;
        d.set_item("swiglu", c.swiglu)?;
        d.set_item("no_bias", c.no_bias)?;
        d.set_item("untied_head", c.untied_head)?;
        d.set_item("zero_init", c.zero_init)?;
        d.set_item("logit_softcap", c.logit_softcap)?;
        Ok(d)
    }

    /// The optimizer's configuration as a dict.
    #[getter]
    fn optimizer_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (settings, clip) = with_trainer!(&self.state.lock(py).inner, t => (t.opt.settings(), t.clip.max_norm));
        let d = PyDict::new(py);
        for (name, value) in settings {
            d.set_item(name, value)?;
        }
        d.set_item("grad_clip", clip)?;
        Ok(d)
    }
}
