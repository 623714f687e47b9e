//! A model's settings cross from Python once, as keyword arguments (`Model(**settings)`), into the
//! engine's typed configurations; the engine validates them, and only it. Unknown names and
//! negative sizes are refused here with the setting's name.

use crate::to_py;
use lmcore_core::grad_clip::GradClip;
use lmcore_core::{AdamWConfig, GptConfig, MuonConfig, OptimizerConfig};
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Every setting `Model` takes, and its default (None: required; the block options are booleans,
/// default off, but `logit_softcap`, a number).
const KNOWN: [(&str, Option<f64>); 25] = [
    ("vocab_size", None),
    ("d_model", None),
    ("n_head", None),
    ("n_layer", None),
    ("block_size", None),
    ("dropout", Some(0.0)),
    ("seed", Some(0.0)),
    ("dtype", None), // a string, default "float32"
    ("beta1", Some(0.9)),
    ("beta2", Some(0.999)),
    ("eps", Some(1e-8)),
    ("weight_decay", Some(0.01)),
    ("grad_clip", Some(0.0)),
    ("optimizer", None), // a string, default "adamw"
    ("muon_lr_ratio", Some(20.0)),
    ("muon_momentum", Some(0.95)),
    ("rope", Some(0.0)),
    ("rmsnorm", Some(0.0)),
    ("qk_norm", Some(0.0)),
    ("relu2", Some(0.0)),
    ("swiglu", Some(0.0)),
    ("no_bias", Some(0.0)),
    ("untied_head", Some(0.0)),
    ("zero_init", Some(0.0)),
    ("logit_softcap", Some(0.0)),
];

/// The optimizers `optimizer` may name.
const OPTIMIZERS: [&str; 2] = ["adamw", "muon"];

pub struct Settings {
    pub model: GptConfig,
    pub optimizer: OptimizerConfig,
    pub grad_clip: f64,
    pub seed: u64,
    pub dtype: String,
}

fn size(d: &Bound<'_, PyDict>, name: &str) -> PyResult<usize> {
    let item = d.get_item(name)?.ok_or_else(|| PyTypeError::new_err(format!("Model needs the setting {name}")))?;
    if !item.is_instance_of::<pyo3::types::PyInt>() {
        return Err(PyTypeError::new_err(format!("{name} must be an integer")));
    }
    match item.extract::<i64>() {
        Ok(value) => usize::try_from(value).map_err(|_| PyOverflowError::new_err(format!("{name} must be at least 1, got {value}"))),
        Err(_) => Err(PyOverflowError::new_err(format!("{name} {item} is too large"))),
    }
}

fn number(d: &Bound<'_, PyDict>, name: &str) -> PyResult<f64> {
    let default = KNOWN.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v).expect("a known setting with a default");
    match d.get_item(name)? {
        None => Ok(default),
        Some(v) => v.extract().map_err(|_| PyTypeError::new_err(format!("{name} must be a number"))),
    }
}

/// A block option: True or False (default False).
fn flag(d: &Bound<'_, PyDict>, name: &str) -> PyResult<bool> {
    match d.get_item(name)? {
        None => Ok(false),
        Some(v) => v.extract().map_err(|_| PyTypeError::new_err(format!("{name} must be True or False, got {v}"))),
    }
}

impl Settings {
    /// Convert keyword arguments (or a settings dict) and have the engine validate them.
    pub fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Settings> {
        for key in d.keys() {
            let key: String = key.extract()?;
            if !KNOWN.iter().any(|(n, _)| *n == key) {
                let names: Vec<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
                return Err(PyTypeError::new_err(format!("Model has no setting {key:?} (it has {})", names.join(", "))));
            }
        }
        let model = GptConfig {
            vocab_size: size(d, "vocab_size")?,
            d_model: size(d, "d_model")?,
            n_head: size(d, "n_head")?,
            n_layer: size(d, "n_layer")?,
            block_size: size(d, "block_size")?,
            dropout: number(d, "dropout")?,
            rope: flag(d, "rope")?,
            rmsnorm: flag(d, "rmsnorm")?,
            qk_norm: flag(d, "qk_norm")?,
            relu2: flag(d, "relu2")?,
            swiglu: flag(d, "swiglu")?,
            no_bias: flag(d, "no_bias")?,
            untied_head: flag(d, "untied_head")?,
            zero_init: flag(d, "zero_init")?,
            logit_softcap: number(d, "logit_softcap")?,
        };
        let adamw = AdamWConfig { beta1: number(d, "beta1")?, beta2: number(d, "beta2")?, eps: number(d, "eps")?, weight_decay: number(d, "weight_decay")? };
        // Muon's settings are checked whichever optimizer is chosen: a bad one is a mistake either way.
        let muon = MuonConfig { adamw, momentum: number(d, "muon_momentum")?, lr_ratio: number(d, "muon_lr_ratio")? };
        let name = match d.get_item("optimizer")? {
            None => "adamw".to_string(),
            Some(v) => v.extract().map_err(|_| PyTypeError::new_err("optimizer must be a string"))?,
        };
        let optimizer = match name.as_str() {
            "adamw" => OptimizerConfig::AdamW(adamw),
            "muon" => OptimizerConfig::Muon(muon),
            _ => return Err(crate::LmcoreError::new_err(format!("optimizer must be one of {}, got {name:?}", OPTIMIZERS.join(", ")))),
        };
        let seed = match d.get_item("seed")? {
            None => 0,
            Some(v) => v.extract().map_err(|_| PyOverflowError::new_err("seed must be an integer in [0, 2^64)"))?,
        };
        let dtype = match d.get_item("dtype")? {
            None => "float32".to_string(),
            Some(v) => v.extract()?,
        };
        let settings = Settings { model, optimizer, grad_clip: number(d, "grad_clip")?, seed, dtype };
        model.validate_settings().map_err(to_py)?; // (the size limit: when a model is built)
        muon.validate().map_err(to_py)?;
        GradClip::check(settings.grad_clip).map_err(to_py)?;
        Ok(settings)
    }
}

/// Check model settings (the keyword arguments of `Model`) without building a model: the
/// engine's own validation, for a caller that wants its message before any work.
#[pyfunction]
#[pyo3(signature = (**settings))]
fn check_settings(py: Python<'_>, settings: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    let d = settings.cloned().unwrap_or_else(|| PyDict::new(py));
    Settings::from_dict(&d).map(|_| ())
}

/// The parameters the model with these settings has, in order, without building it: a list of
/// (name, shape), from the engine's one declaration of the layout.
#[pyfunction]
#[pyo3(signature = (**settings))]
fn param_layout(settings: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Vec<usize>)>> {
    let d = settings.ok_or_else(|| PyTypeError::new_err("param_layout needs the model's settings"))?;
    let s = Settings::from_dict(d)?;
    // (No size limit: a checkpoint's shapes are compared with these before any model is built.)
    // Names of a few hundred bytes each: check a model of millions of tiny layers fits the list.
    let bytes = s.model.n_layer.saturating_mul(14 * 256);
    lmcore_core::memory::check_available(bytes, &format!("the parameter list of {} layers", s.model.n_layer)).map_err(to_py)?;
    Ok(s.model.layout().map(|p| (p.name, p.dims)).collect())
}

/// The state buffers of the optimizer called `name` ("adamw": adam_m, adam_v; "muon":
/// muon_momentum, adam_m, adam_v), without building one; an LmcoreError for an optimizer this
/// lmcore does not have.
#[pyfunction]
fn optimizer_state_names(name: &str) -> PyResult<Vec<&'static str>> {
    lmcore_core::optimizer::state_names(name)
        .map(|names| names.to_vec())
        .ok_or_else(|| crate::LmcoreError::new_err(format!("no optimizer named {name:?} in this lmcore (it has {})", OPTIMIZERS.join(", "))))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(check_settings, m)?)?;
    m.add_function(wrap_pyfunction!(optimizer_state_names, m)?)?;
    m.add_function(wrap_pyfunction!(param_layout, m)?)?;
    Ok(())
}
