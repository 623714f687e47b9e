//! `Optimizer`: what the trainer needs from one. It updates the flat parameter buffer from the
//! flat gradient buffer, and keeps its state in named flat buffers parallel to the parameters
//! (AdamW: `adam_m`, `adam_v`), which the binding reads and writes by name and a checkpoint
//! saves as tensor groups of the same names. A second optimizer is a new file implementing this
//! (Muon: `muon.rs`), and a variant of `OptimizerConfig`, which is how a trainer chooses one.

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::{Error, Result};
use crate::muon::{Muon, MuonConfig};
use crate::real::Real;
use crate::store::Store;

pub trait Optimizer<F: Real>: Send {
    /// A short name, stored in checkpoints ("adamw").
    fn name(&self) -> &'static str;

    /// One update of `params` from `grads`, each gradient multiplied by `grad_scale` first (the
    /// clipping factor). `lr` has been checked: finite and >= 0.
    fn update(&mut self, params: &mut [F], grads: &[F], lr: f64, grad_scale: f64);

    /// Names of the state buffers, each as long as the flat parameters.
    fn state_names(&self) -> &'static [&'static str];

    fn state(&self, name: &str) -> Result<&[F]>;

    /// Write access to a state buffer; `check_state` first says whether values belong in it.
    fn state_mut(&mut self, name: &str) -> Result<&mut [F]>;

    /// Refuse values that cannot be this buffer's (AdamW's second moment is never negative).
    fn check_state(&self, _name: &str, _values: &[F]) -> Result<()> {
        Ok(())
    }

    /// Updates done so far (AdamW's bias-correction t).
    fn step(&self) -> u64;

    fn set_step(&mut self, step: u64);

    /// Its hyperparameters by name (AdamW: beta1, beta2, eps, weight_decay).
    fn settings(&self) -> Vec<(&'static str, f64)>;

    /// Bytes its buffers reserve.
    fn capacity_bytes(&self) -> usize;
}

/// The state buffer names of the optimizer called `name`, known without building one (a
/// checkpoint is checked before a model is made). One line per optimizer.
pub fn state_names(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "adamw" => Some(&crate::adamw::STATE),
        "muon" => Some(&crate::muon::STATE),
        _ => None,
    }
}

/// Which optimizer a trainer uses, with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    AdamW(AdamWConfig),
    Muon(MuonConfig),
}

impl From<AdamWConfig> for OptimizerConfig {
    fn from(c: AdamWConfig) -> Self {
        OptimizerConfig::AdamW(c)
    }
}

impl From<MuonConfig> for OptimizerConfig {
    fn from(c: MuonConfig) -> Self {
        OptimizerConfig::Muon(c)
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            OptimizerConfig::AdamW(c) => c.validate(),
            OptimizerConfig::Muon(c) => c.validate(),
        }
    }

    /// The optimizer's name, as `Optimizer::name` and checkpoints spell it.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::AdamW(_) => "adamw",
            OptimizerConfig::Muon(_) => "muon",
        }
    }

    /// The optimizer for the parameters registered in `store`.
    pub fn build<F: Real>(&self, store: &Store<F>) -> Result<Box<dyn Optimizer<F>>> {
        Ok(match *self {
            OptimizerConfig::AdamW(c) => Box::new(AdamW::new(c, store)?),
            OptimizerConfig::Muon(c) => Box::new(Muon::new(c, store)?),
        })
    }
}

/// The error for a state buffer name the optimizer does not have.
pub(crate) fn unknown_state(optimizer: &str, name: &str, names: &[&str]) -> Error {
    Error::Invalid(format!("{optimizer} has no state buffer {name:?} (it has {names:?})"))
}
