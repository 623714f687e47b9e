//! Incremental inference with a key/value cache: each new token costs one row through every
//! layer plus attention over the cached keys and values, O(T) instead of a full forward of the
//! window. It reuses the training kernels (embedding, layernorm, linear, gelu) and BLAS; no tape.
//! Shapes: B rows decoded together, C channels, L layers; k and v are (L, B, block, C).

use crate::blas::gemm;
use crate::error::{Error, Result};
use crate::gpt::Gpt;
use crate::ops::{attention, embedding, gelu, layernorm, linear};
use crate::real::Real;
use crate::store::Store;

/// The largest key/value cache (16 GiB of f32).
const MAX_CACHE_FLOATS: usize = 1 << 32;

pub struct KvCache<F: Real> {
    batch: usize,
    len: usize,
    k: Vec<F>,
    v: Vec<F>,
    // Per-token scratch for the B rows: (B, C) unless noted.
    x: Vec<F>,
    h: Vec<F>,
    qkv: Vec<F>,    // (B, 3C)
    att: Vec<F>,    // (B, C)
    fc: Vec<F>,     // (B, 4C)
    fc_act: Vec<F>, // (B, 4C)
    proj: Vec<F>,   // (B, C)
    scores: Vec<F>, // (block)
    stats: Vec<F>,  // (B, 2)
    ids: Vec<u32>,  // (B)
    logits: Vec<F>, // (B, V)
}

impl<F: Real> KvCache<F> {
    pub fn new(gpt: &Gpt, batch: usize) -> Result<Self> {
        if batch == 0 {
            return Err(Error::Invalid("generation needs at least one row".into()));
        }
        let c = gpt.config;
        let (d, l, t) = (c.d_model, c.n_layer, c.block_size);
        // Keys and values take 2 * L * B * T * C floats; refuse what no machine could hold
        // (an allocation failure would abort the process instead of raising).
        let floats = l.checked_mul(batch).and_then(|n| n.checked_mul(t * d)).and_then(|n| n.checked_mul(2));
        if floats.is_none_or(|n| n > MAX_CACHE_FLOATS) {
            return Err(Error::Invalid(format!("a key/value cache for {batch} rows would be too large")));
        }
        let z = |n: usize| vec![F::ZERO; n];
        Ok(KvCache {
            batch,
            len: 0,
            k: z(l * batch * t * d),
            v: z(l * batch * t * d),
            x: z(batch * d),
            h: z(batch * d),
            qkv: z(batch * 3 * d),
            att: z(batch * d),
            fc: z(batch * 4 * d),
            fc_act: z(batch * 4 * d),
            proj: z(batch * d),
            scores: z(t),
            stats: z(batch * 2),
            ids: vec![0; batch],
            logits: z(batch * c.vocab_size),
        })
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forget every cached position (start a new window).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Feed one token per row at the next position; returns the logits (B, V) that follow it.
    pub fn push(&mut self, gpt: &Gpt, store: &Store<F>, tokens: &[i64]) -> Result<&[F]> {
        let cfg = gpt.config;
        let (c, bsz, block, pos) = (cfg.d_model, self.batch, cfg.block_size, self.len);
        if tokens.len() != bsz {
            return Err(Error::Shape(format!("{} tokens given for {bsz} rows", tokens.len())));
        }
        if pos == block {
            return Err(Error::Invalid(format!("the cache is full ({block} positions); clear it and re-feed a shorter window")));
        }
        for (slot, &tok) in self.ids.iter_mut().zip(tokens) {
            if tok < 0 || tok as usize >= cfg.vocab_size {
                return Err(Error::TokenOutOfRange { id: tok, limit: cfg.vocab_size });
            }
            *slot = tok as u32;
        }
        let p = |v| store.values(v);
        // x = wte[token] + wpe[pos]
        embedding::forward(&self.ids, p(gpt.wte), &mut self.x, c);
        let pe = &p(gpt.wpe)[pos * c..(pos + 1) * c];
        for row in self.x.chunks_exact_mut(c) {
            row.iter_mut().zip(pe).for_each(|(x, &e)| *x += e);
        }
        let hs = c / cfg.n_head;
        let scale = F::from_f64(1.0 / (hs as f64).sqrt());
        for (layer, blk) in gpt.blocks.iter().enumerate() {
            layernorm::forward(&self.x, p(blk.ln1.0), p(blk.ln1.1), &mut self.h, &mut self.stats, c);
            linear::forward(&self.h, p(blk.attn.0), Some(p(blk.attn.1)), &mut self.qkv, bsz, 3 * c, c);
            for b in 0..bsz {
                let cache = (layer * bsz + b) * block * c; // this row's (block, C) slab
                let q = &self.qkv[b * 3 * c..(b + 1) * 3 * c];
                self.k[cache + pos * c..cache + (pos + 1) * c].copy_from_slice(&q[c..2 * c]);
                self.v[cache + pos * c..cache + (pos + 1) * c].copy_from_slice(&q[2 * c..]);
                for h in 0..cfg.n_head {
                    let s = &mut self.scores[..pos + 1];
                    // scores (1, pos+1) = scale * q_h K_h^T, K_h read in place with stride C
                    gemm(false, true, 1, pos + 1, hs, scale, &q[h * hs..], hs, &self.k[cache + h * hs..], c, F::ZERO, s, pos + 1);
                    attention::causal_softmax_row(s, pos);
                    // att_h (1, hs) = scores V_h
                    let out = &mut self.att[b * c + h * hs..b * c + (h + 1) * hs];
                    gemm(false, false, 1, hs, pos + 1, F::ONE, s, pos + 1, &self.v[cache + h * hs..], c, F::ZERO, out, hs);
                }
            }
            linear::forward(&self.att, p(blk.attn_proj.0), Some(p(blk.attn_proj.1)), &mut self.proj, bsz, c, c);
            self.x.iter_mut().zip(&self.proj).for_each(|(x, &d)| *x += d);
            layernorm::forward(&self.x, p(blk.ln2.0), p(blk.ln2.1), &mut self.h, &mut self.stats, c);
            linear::forward(&self.h, p(blk.fc.0), Some(p(blk.fc.1)), &mut self.fc, bsz, 4 * c, c);
            gelu::forward(&self.fc, &mut self.fc_act);
            linear::forward(&self.fc_act, p(blk.fc_proj.0), Some(p(blk.fc_proj.1)), &mut self.proj, bsz, c, 4 * c);
            self.x.iter_mut().zip(&self.proj).for_each(|(x, &d)| *x += d);
        }
        layernorm::forward(&self.x, p(gpt.ln_f.0), p(gpt.ln_f.1), &mut self.h, &mut self.stats, c);
        linear::forward(&self.h, p(gpt.wte), None, &mut self.logits, bsz, cfg.vocab_size, c);
        self.len += 1;
        Ok(&self.logits)
    }
}
