//! Muon (Keller Jordan): the hidden 2-D weights take a Nesterov-momentum update orthogonalised
//! by Newton-Schulz (`newton_schulz`), every other parameter (embeddings, gains, biases) an
//! AdamW update, from an inner `AdamW` that only touches those. Which parameters are Muon's,
//! and in how many row blocks (a fused Q, K, V weight: three), the model's layout says
//! (`ParamSpec::muon_blocks`, carried into the store's `ParamInfo`).
//!
//! For a Muon matrix W with gradient G (times the clipping factor), momentum mu, learning rate
//! lr_m = lr * lr_ratio and weight decay wd:
//!   buf = mu buf + G;  U = G + mu buf (Nesterov);  for each row block: O = NS5(U_block)
//!   W = (1 - lr_m wd) W - lr_m sqrt(max(1, rows / cols)) O      (rows, cols of the block)
//! The scheduled `lr` of a step is AdamW's; Muon's follows it at `lr_ratio` times it.

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::{Error, Result};
use crate::memory;
use crate::newton_schulz::NewtonSchulz;
use crate::optimizer::{unknown_state, Optimizer};
use crate::parallel::{for_each_chunk, for_each_chunk2, for_each_span, num_threads};
use std::sync::{Mutex, PoisonError};
use crate::real::Real;
use crate::simd::simd_loop;
use crate::store::Store;

/// Elements per span of the elementwise passes.
const SPAN: usize = 1 << 15;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MuonConfig {
    /// For the parameters that are not Muon's; its weight decay applies to Muon's matrices too.
    pub adamw: AdamWConfig,
    /// Nesterov momentum of the matrices' updates.
    pub momentum: f64,
    /// The matrices' learning rate over AdamW's (the step's scheduled `lr`).
    pub lr_ratio: f64,
}

impl Default for MuonConfig {
    /// Keller Jordan's momentum; a matrix LR of 0.02 beside an AdamW LR of 1e-3.
    fn default() -> Self {
        MuonConfig { adamw: AdamWConfig::default(), momentum: 0.95, lr_ratio: 20.0 }
    }
}

impl MuonConfig {
    pub fn validate(&self) -> Result<()> {
        self.adamw.validate()?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Invalid(format!("muon_momentum must be in [0, 1), got {}", self.momentum)));
        }
        if !(self.lr_ratio.is_finite() && self.lr_ratio >= 0.0) {
            return Err(Error::Invalid(format!("muon_lr_ratio must be a finite number >= 0, got {}", self.lr_ratio)));
        }
        Ok(())
    }
}

/// One of Muon's matrices in the flat buffers.
struct Matrix {
    offset: usize,
    rows: usize,
    cols: usize,
    /// Equal row blocks, each orthogonalised on its own.
    blocks: usize,
    decay: bool,
    /// Where its update is made in `Muon::update`.
    at: usize,
}

/// The Newton-Schulz work of one thread: its run of consecutive row blocks of `update`, each
/// (rows, cols), and its own scratch.
struct Share<F> {
    blocks: Vec<(usize, usize)>,
    ns: Mutex<NewtonSchulz<F>>,
}

pub struct Muon<F: Real> {
    pub config: MuonConfig,
    adamw: AdamW<F>,
    /// Momentum buffer, parallel to the parameters (zero outside Muon's matrices).
    momentum: Vec<F>,
    matrices: Vec<Matrix>,
    /// Every matrix's update, one after another, as the step makes it.
    update: Vec<F>,
    /// The threads' shares of the row blocks, and where each share ends in `update`.
    shares: Vec<Share<F>>,
    share_ends: Vec<usize>,
}

/// Muon's state buffers: its momentum, then the inner AdamW's moments.
pub const STATE: [&str; 3] = ["muon_momentum", "adam_m", "adam_v"];

impl<F: Real> Muon<F> {
    /// An optimizer for the parameters registered in `store` (register them all first).
    pub fn new(config: MuonConfig, store: &Store<F>) -> Result<Self> {
        config.validate()?;
        let adamw = AdamW::for_params(config.adamw, store, |p| p.muon_blocks.is_none())?;
        let (mut matrices, mut len) = (Vec::new(), 0usize);
        for p in store.params() {
            let Some(blocks) = p.muon_blocks else { continue };
            match *p.shape.dims() {
                [rows, cols] if blocks > 0 && rows.is_multiple_of(blocks) => {
                    matrices.push(Matrix { offset: p.offset, rows, cols, blocks, decay: p.decay, at: len });
                    len += rows * cols;
                }
                _ => return Err(Error::Invalid(format!("Muon needs {} to be a matrix of {blocks} equal row blocks, got shape {:?}", p.name, p.shape.dims()))),
            }
        }
        let (shares, share_ends) = share_blocks(&matrices, num_threads())?;
        Ok(Muon {
            config,
            adamw,
            momentum: memory::filled(store.param_len(), F::ZERO, "Muon's momentum")?,
            matrices,
            update: memory::filled(len, F::ZERO, "Muon's update")?,
            shares,
            share_ends,
        })
    }
}

/// The row blocks of `matrices` in `threads` shares of about equal Newton-Schulz work, each a run
/// of consecutive blocks. Small models' products are too small to split across threads well, so
/// the threads take whole blocks instead; each block's result does not depend on which thread
/// runs it, so neither does a run's.
fn share_blocks<F: Real>(matrices: &[Matrix], threads: usize) -> Result<(Vec<Share<F>>, Vec<usize>)> {
    let threads = threads.max(1);
    // Multiply-adds of one step of the quintic on a (rows, cols) block: X X^T, A A and B X.
    let cost = |&(r, c): &(usize, usize)| (r.min(c) * r.min(c) * (2 * r.max(c) + r.min(c))) as f64;
    let blocks: Vec<(usize, usize)> = matrices.iter().flat_map(|m| (0..m.blocks).map(move |_| (m.rows / m.blocks, m.cols))).collect();
    let total: f64 = blocks.iter().map(cost).sum();
    // A block goes to the thread whose fraction of the total work its middle falls in.
    let mut owner = Vec::with_capacity(blocks.len());
    let mut done = 0.0;
    for b in &blocks {
        owner.push(((done + cost(b) / 2.0) / total * threads as f64) as usize);
        done += cost(b);
    }
    let (mut shares, mut ends, mut at) = (Vec::new(), Vec::new(), 0);
    for t in 0..threads {
        let mine: Vec<(usize, usize)> = blocks.iter().zip(&owner).filter(|(_, &o)| o.min(threads - 1) == t).map(|(&b, _)| b).collect();
        at += mine.iter().map(|(r, c)| r * c).sum::<usize>();
        shares.push(Share { ns: Mutex::new(NewtonSchulz::new(mine.iter().copied())?), blocks: mine });
        ends.push(at);
    }
    Ok((shares, ends))
}

impl<F: Real> Optimizer<F> for Muon<F> {
    fn name(&self) -> &'static str {
        "muon"
    }

    fn update(&mut self, params: &mut [F], grads: &[F], lr: f64, grad_scale: f64) {
        self.adamw.update(params, grads, lr, grad_scale);
        let lr = lr * self.config.lr_ratio;
        let (mu, clip) = (F::from_f64(self.config.momentum), F::from_f64(grad_scale));
        // The Nesterov update of every matrix, then every row block orthogonalised (the
        // threads' shares side by side), then the descent.
        for m in &self.matrices {
            let span = m.offset..m.offset + m.rows * m.cols;
            let (u, g) = (&mut self.update[m.at..m.at + span.len()], &grads[span.clone()]);
            for_each_chunk2(&mut self.momentum[span], SPAN, u, SPAN, |i, buf, u| nesterov(buf, u, &g[i * SPAN..], mu, clip));
        }
        let shares = &self.shares;
        for_each_span(&mut self.update, &self.share_ends, |t, mut part| {
            let mut ns = shares[t].ns.lock().unwrap_or_else(PoisonError::into_inner);
            for &(rows, cols) in &shares[t].blocks {
                let (block, rest) = part.split_at_mut(rows * cols);
                ns.orthogonalise(block, rows, cols);
                part = rest;
            }
        });
        for m in &self.matrices {
            let rows = m.rows / m.blocks;
            let shrink = F::from_f64(if m.decay { 1.0 - lr * self.config.adamw.weight_decay } else { 1.0 });
            let step = F::from_f64(lr * (rows as f64 / m.cols as f64).max(1.0).sqrt());
            let u = &self.update[m.at..m.at + m.rows * m.cols];
            for_each_chunk(&mut params[m.offset..m.offset + m.rows * m.cols], SPAN, |i, p| descend(p, &u[i * SPAN..], shrink, step));
        }
    }

    fn state_names(&self) -> &'static [&'static str] {
        &STATE
    }

    fn state(&self, name: &str) -> Result<&[F]> {
        match name {
            "muon_momentum" => Ok(&self.momentum),
            "adam_m" | "adam_v" => self.adamw.state(name),
            _ => Err(unknown_state("muon", name, &STATE)),
        }
    }

    fn state_mut(&mut self, name: &str) -> Result<&mut [F]> {
        match name {
            "muon_momentum" => Ok(&mut self.momentum),
            "adam_m" | "adam_v" => self.adamw.state_mut(name),
            _ => Err(unknown_state("muon", name, &STATE)),
        }
    }

    fn check_state(&self, name: &str, values: &[F]) -> Result<()> {
        self.adamw.check_state(name, values)
    }

    /// Shared with the inner AdamW: its bias correction counts Muon's steps.
    fn step(&self) -> u64 {
        self.adamw.step()
    }

    fn set_step(&mut self, step: u64) {
        self.adamw.set_step(step);
    }

    fn settings(&self) -> Vec<(&'static str, f64)> {
        let mut settings = self.adamw.settings();
        settings.extend([("muon_momentum", self.config.momentum), ("muon_lr_ratio", self.config.lr_ratio)]);
        settings
    }

    fn capacity_bytes(&self) -> usize {
        self.adamw.capacity_bytes()
            + (self.momentum.capacity() + self.update.capacity()) * size_of::<F>()
            + self.matrices.capacity() * size_of::<Matrix>()
            + self.shares.iter().map(|s| s.ns.lock().unwrap_or_else(PoisonError::into_inner).capacity_bytes()).sum::<usize>()
    }
}

simd_loop! {
    /// buf = mu buf + g; u = g + mu buf (Nesterov), g being the gradient times the clipping factor.
    fn nesterov<F: Real>(buf: &mut [F], u: &mut [F], g: &[F], mu: F, clip: F) {
        for ((b, u), &g) in buf.iter_mut().zip(u.iter_mut()).zip(g) {
            let g = g * clip;
            *b = mu * *b + g;
            *u = g + mu * *b;
        }
    }
}

simd_loop! {
    /// p = shrink p - step u.
    fn descend<F: Real>(p: &mut [F], u: &[F], shrink: F, step: F) {
        for (p, &u) in p.iter_mut().zip(u) {
            *p = shrink * *p - step * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Shape;

    /// A store of a (6, 4) Muon matrix in 3 blocks, a (5, 3) AdamW matrix and a bias.
    fn store() -> Store<f64> {
        let mut s = Store::new();
        s.add_param("qkv", Shape::new(&[6, 4]).unwrap(), true, Some(3)).unwrap();
        s.add_param("emb", Shape::new(&[5, 3]).unwrap(), true, None).unwrap();
        s.add_param("bias", Shape::new(&[4]).unwrap(), false, None).unwrap();
        s
    }

    #[test]
    fn each_parameter_has_one_optimizers_state() {
        let s = store();
        let mut muon = Muon::new(MuonConfig::default(), &s).unwrap();
        let n = s.param_len();
        let mut params = vec![0.5; n];
        let grads: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37 + 0.1).sin()).collect();
        muon.update(&mut params, &grads, 1e-3, 1.0);
        let (m, a) = (muon.state("muon_momentum").unwrap(), muon.state("adam_m").unwrap());
        assert!(m[..24].iter().all(|&x| x != 0.0) && m[24..].iter().all(|&x| x == 0.0));
        assert!(a[..24].iter().all(|&x| x == 0.0) && a[24..].iter().all(|&x| x != 0.0));
        assert!(params.iter().all(|&p| p != 0.5), "every parameter moved");
        assert_eq!((muon.step(), muon.name()), (1, "muon"));
    }

    #[test]
    fn a_zero_learning_rate_changes_no_weight_but_momentum_moves() {
        let s = store();
        let mut muon = Muon::new(MuonConfig::default(), &s).unwrap();
        let mut params = vec![0.25; s.param_len()];
        muon.update(&mut params, &vec![1.0; s.param_len()], 0.0, 0.5);
        assert!(params.iter().all(|&p| p == 0.25));
        assert_eq!(muon.state("muon_momentum").unwrap()[0], 0.5, "the gradient times the clipping factor");
    }

    #[test]
    fn bad_settings_and_shapes_are_refused() {
        let s = store();
        for (momentum, lr_ratio) in [(1.0, 1.0), (-0.1, 1.0), (0.9, -1.0), (0.9, f64::NAN)] {
            let e = Muon::new(MuonConfig { momentum, lr_ratio, ..Default::default() }, &s).err().unwrap();
            assert!(e.to_string().contains("muon_"), "{e}");
        }
        let mut odd = Store::<f64>::new();
        odd.add_param("w", Shape::new(&[5, 4]).unwrap(), true, Some(3)).unwrap();
        let e = Muon::new(MuonConfig::default(), &odd).err().unwrap();
        assert!(e.to_string().contains("3 equal row blocks"), "{e}");
        assert!(Muon::new(MuonConfig::default(), &s).unwrap().state("adam_x").is_err());
    }
}
