//! `Op`: one recorded operation on the tape, naming its tensors by handle. What each op's
//! backward reads and writes is declared here, for `GradPlan` and `Graph::backward`.

use crate::error::{Error, Result};
use crate::profile::Section;
use crate::store::Var;

/// One recorded operation. Inputs first, then `out`, then tensors the op saved for backward.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Embedding { ids: Var, table: Var, out: Var },
    Add { a: Var, b: Var, out: Var },
    Linear { x: Var, w: Var, b: Option<Var>, out: Var },
    LayerNorm { x: Var, gamma: Var, beta: Var, out: Var, stats: Var, partials: Var },
    Gelu { x: Var, out: Var },
    Attention { qkv: Var, n_head: usize, out: Var, lse: Var, bwd_tiles: Var },
    CrossEntropy { logits: Var, targets: Var, out: Var, lse: Var },
    Dropout { x: Var, out: Var, mask: Var },
    RmsNorm { x: Var, gain: Var, out: Var, stats: Var, partials: Var },
    QkNorm { qkv: Var, q_gain: Var, k_gain: Var, n_head: usize, out: Var, stats: Var, partials: Var },
    Rope { qkv: Var, n_head: usize, out: Var, table: Var },
    ReluSquared { x: Var, out: Var },
    Softcap { x: Var, cap: f64, out: Var },
    SwiGlu { x: Var, out: Var },
}

impl Op {
    /// The float tensors whose gradients this op's backward adds to (parameters included).
    pub(crate) fn grad_inputs(&self) -> [Option<Var>; 3] {
        match *self {
            Op::Embedding { table, .. } => [Some(table), None, None],
            Op::Add { a, b, .. } => [Some(a), Some(b), None],
            Op::Linear { x, w, b, .. } => [Some(x), Some(w), b],
            Op::LayerNorm { x, gamma, beta, .. } => [Some(x), Some(gamma), Some(beta)],
            Op::Gelu { x, .. } | Op::Dropout { x, .. } | Op::ReluSquared { x, .. } | Op::Softcap { x, .. } | Op::SwiGlu { x, .. } => [Some(x), None, None],
            Op::RmsNorm { x, gain, .. } => [Some(x), Some(gain), None],
            Op::QkNorm { qkv, q_gain, k_gain, .. } => [Some(qkv), Some(q_gain), Some(k_gain)],
            Op::Rope { qkv, .. } => [Some(qkv), None, None],
            Op::Attention { qkv, .. } => [Some(qkv), None, None],
            Op::CrossEntropy { logits, .. } => [Some(logits), None, None],
        }
    }

    /// The op family it is timed under (see `profile`).
    pub(crate) fn section(&self) -> Section {
        match self {
            Op::Embedding { .. } => Section::Embedding,
            Op::Add { .. } => Section::Residual,
            Op::Linear { .. } => Section::Linear,
            Op::LayerNorm { .. } => Section::LayerNorm,
            Op::Gelu { .. } => Section::Gelu,
            Op::Attention { .. } => Section::Attention,
            Op::CrossEntropy { .. } => Section::CrossEntropy,
            Op::Dropout { .. } => Section::Dropout,
            Op::RmsNorm { .. } => Section::RmsNorm,
            Op::QkNorm { .. } => Section::QkNorm,
            Op::Rope { .. } => Section::Rope,
            Op::ReluSquared { .. } => Section::ReluSquared,
            Op::Softcap { .. } => Section::Softcap,
            Op::SwiGlu { .. } => Section::SwiGlu,
        }
    }

    /// The tensors with gradient slots that this op creates: its output and backward scratch.
    pub(crate) fn grad_outputs(&self) -> [Option<Var>; 2] {
        match *self {
            Op::LayerNorm { out, partials, .. } | Op::RmsNorm { out, partials, .. } | Op::QkNorm { out, partials, .. } => {
                [Some(out), Some(partials)]
            }
            Op::Attention { out, bwd_tiles, .. } => [Some(out), Some(bwd_tiles)],
            Op::Embedding { out, .. }
            | Op::Add { out, .. }
            | Op::Linear { out, .. }
            | Op::Gelu { out, .. }
            | Op::CrossEntropy { out, .. }
            | Op::Dropout { out, .. }
            | Op::Rope { out, .. }
            | Op::ReluSquared { out, .. }
            | Op::Softcap { out, .. }
            | Op::SwiGlu { out, .. } => [Some(out), None],
        }
    }
}

/// Ops whose backward writes several input gradients at once need distinct inputs.
pub(crate) fn require_distinct(vars: &[Var], op: &str) -> Result<()> {
    for (i, a) in vars.iter().enumerate() {
        if vars[i + 1..].contains(a) {
            return Err(Error::Invalid(format!("{op}: the same tensor is passed as two different inputs")));
        }
    }
    Ok(())
}
