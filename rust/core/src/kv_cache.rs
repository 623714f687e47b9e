//! Incremental inference with a key/value cache. Feeding P new tokens per row costs P rows
//! through every layer plus attention over the cached keys and values, instead of a full forward
//! of the window: one token at a time while sampling, a whole window at once when (re)filling.
//! It reuses the training kernels (embedding, the norms, linear, the activations, rope, softcap)
//! and BLAS; no tape. Rotary embeddings rotate each query and key at its absolute position
//! before the key enters the cache.
//! Shapes: B rows decoded together, P new positions per call, C channels, L layers; k and v are
//! (L, B, block, C); the scratch holds up to (B, block) positions.

use crate::blas::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpt::{Gpt, GptConfig, Norm};
use crate::memory;
use crate::ops::{attention, embedding, gelu, layernorm, linear, qk_norm, relu_squared, rmsnorm, rope, softcap, swiglu};
use crate::real::Real;
use crate::store::Store;

pub struct KvCache<F: Real> {
    batch: usize,
    len: usize,
    k: Vec<F>,
    v: Vec<F>,
    // Scratch for the positions fed in one call, (B * P, C) unless noted.
    x: Vec<F>,
    h: Vec<F>,
    qkv: Vec<F>,    // (B * P, 3C)
    att: Vec<F>,    // (B * P, C)
    fc: Vec<F>,     // (B * P, 4C), or (8C) with swiglu: its gate and up
    fc_act: Vec<F>, // (B * P, 4C)
    proj: Vec<F>,   // (B * P, C)
    scores: Vec<F>, // (P, block)
    stats: Vec<F>,  // (B * P, 2)
    // Only with the option that needs them (else empty):
    qk_out: Vec<F>,     // qk_norm: (B * P, 3C)
    qk_stats: Vec<F>,   // qk_norm: (B * P, 2H)
    rope_table: Vec<F>, // rope: (up to block, hs), the angles of one call's positions
    ids: Vec<u32>,  // (B * P)
    last: Vec<F>,   // (B, C): each row's newest position, for the logits
    logits: Vec<F>, // (B, V)
}

impl<F: Real> KvCache<F> {
    pub fn new(gpt: &Gpt, batch: usize) -> Result<Self> {
        if batch == 0 {
            return Err(Error::Invalid("generation needs at least one row".into()));
        }
        let c = gpt.config;
        let (d, l, t) = (c.d_model, c.n_layer, c.block_size);
        let hs = d / c.n_head;
        // QK-norm's and SwiGLU's scratch per position
        let extra = if c.qk_norm { 3 * d + 2 * c.n_head } else { 0 } + fc_width(&c) - 4 * d;
        // Keys and values (2L floats per position and channel) and the scratch (15, and the
        // options') for B * block positions, checked against the memory this process can still
        // use before any of it is made.
        let floats = (t * d)
            .checked_mul(2 * l + 15)
            .and_then(|n| n.checked_add(t * extra))
            .and_then(|n| n.checked_mul(batch))
            .and_then(|n| n.checked_add(t * t + t * hs * c.rope as usize + batch * c.vocab_size));
        let bytes = floats.and_then(|n| n.checked_mul(size_of::<F>())).unwrap_or(usize::MAX);
        let in_cache_terms = |e: Error| {
            e.out_of_memory_as(|| {
                (
                    format!("a key/value cache for {batch} rows of {t} positions"),
                    "it grows with rows x block_size x d_model x (2 n_layer + 15): generate fewer rows at once".into(),
                )
            })
        };
        if floats.is_none() {
            let e = Error::OutOfMemory { what: String::new(), bytes, available: memory::available_bytes(), hint: String::new() };
            return Err(in_cache_terms(e));
        }
        memory::check_available(bytes, "").map_err(in_cache_terms)?;
        let z = |n: usize| memory::filled(n, F::ZERO, "").map_err(in_cache_terms);
        let rows = batch * t;
        Ok(KvCache {
            batch,
            len: 0,
            k: z(l * rows * d)?,
            v: z(l * rows * d)?,
            x: z(rows * d)?,
            h: z(rows * d)?,
            qkv: z(rows * 3 * d)?,
            att: z(rows * d)?,
            fc: z(rows * fc_width(&c))?,
            fc_act: z(rows * 4 * d)?,
            proj: z(rows * d)?,
            scores: z(t * t)?,
            stats: z(rows * 2)?,
            qk_out: z(if c.qk_norm { rows * 3 * d } else { 0 })?,
            qk_stats: z(if c.qk_norm { rows * 2 * c.n_head } else { 0 })?,
            rope_table: z(if c.rope { t * hs } else { 0 })?,
            ids: memory::filled(rows, 0, "").map_err(in_cache_terms)?,
            last: z(batch * d)?,
            logits: z(batch * c.vocab_size)?,
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

    /// Feed `steps` tokens per row, `tokens` (B, steps) row-major, at the next positions; returns
    /// the logits (B, V) that follow each row's last token.
    pub fn push(&mut self, gpt: &Gpt, store: &Store<F>, tokens: &[i64], steps: usize) -> Result<&[F]> {
        let cfg = gpt.config;
        let (c, bsz, block, pos) = (cfg.d_model, self.batch, cfg.block_size, self.len);
        if steps == 0 {
            return Err(Error::Shape("no tokens given".into()));
        }
        if tokens.len() != bsz * steps {
            return Err(Error::Shape(format!("{} tokens do not make {steps} positions for {bsz} rows", tokens.len())));
        }
        if pos + steps > block {
            return Err(Error::Invalid(format!(
                "{steps} more positions do not fit the cache ({pos} of {block} used); clear it and re-feed a shorter window"
            )));
        }
        for (slot, &tok) in self.ids.iter_mut().zip(tokens) {
            if tok < 0 || tok as usize >= cfg.vocab_size {
                return Err(Error::TokenOutOfRange { id: tok, limit: cfg.vocab_size });
            }
            *slot = tok as u32;
        }
        let n = bsz * steps; // rows of this call
        let p = |v| store.values(v);
        let (x, h, stats) = (&mut self.x[..n * c], &mut self.h[..n * c], &mut self.stats[..]);
        let (qkv_raw, att, proj) = (&mut self.qkv[..n * 3 * c], &mut self.att[..n * c], &mut self.proj[..n * c]);
        let (qk_out, qk_stats) = (&mut self.qk_out[..], &mut self.qk_stats[..]);
        let fc_width = fc_width(&cfg);
        let (fc, fc_act) = (&mut self.fc[..n * fc_width], &mut self.fc_act[..n * 4 * c]);
        let hs = c / cfg.n_head;
        // x = wte[token] (+ wpe[position])
        embedding::forward(&self.ids[..n], p(gpt.wte), x, c);
        if let Some(wpe) = gpt.wpe {
            let pe = &p(wpe)[pos * c..(pos + steps) * c];
            for row in x.chunks_exact_mut(steps * c) {
                row.iter_mut().zip(pe).for_each(|(x, &e)| *x += e);
            }
        }
        let angles = &mut self.rope_table[..if cfg.rope { steps * hs } else { 0 }];
        rope::fill_table(angles, pos, hs);
        let angles = &*angles;
        let scale = F::from_f64(1.0 / (hs as f64).sqrt());
        let keys = pos + steps; // every query sees the cache and the new positions up to itself
        for (layer, blk) in gpt.blocks.iter().enumerate() {
            norm(x, blk.ln1, p, h, stats, c);
            linear::forward(h, p(blk.attn.0), blk.attn.1.map(p), qkv_raw, n, 3 * c, c);
            let qkv: &mut [F] = match blk.qk_norm {
                Some((qg, kg)) => {
                    let out = &mut qk_out[..n * 3 * c];
                    qk_norm::forward(qkv_raw, p(qg), p(kg), out, &mut qk_stats[..n * 2 * cfg.n_head], cfg.n_head);
                    out
                }
                None => qkv_raw,
            };
            if cfg.rope {
                rope::rotate_rows(qkv, angles, hs, cfg.n_head); // row b * P + i: position pos + i
            }
            let qkv = &*qkv;
            for b in 0..bsz {
                let slab = (layer * bsz + b) * block * c; // this row's (block, C) keys and values
                let q = &qkv[b * steps * 3 * c..(b + 1) * steps * 3 * c];
                for (i, qi) in q.chunks_exact(3 * c).enumerate() {
                    let at = slab + (pos + i) * c;
                    self.k[at..at + c].copy_from_slice(&qi[c..2 * c]);
                    self.v[at..at + c].copy_from_slice(&qi[2 * c..]);
                }
                for head in 0..cfg.n_head {
                    let s = &mut self.scores[..steps * block];
                    // scores (P, keys) = scale * Q_h K_h^T, heads read in place through strides
                    let (kh, vh) = (&self.k[slab + head * hs..], &self.v[slab + head * hs..]);
                    gemm(&Gemm::nt(steps, keys, hs, &q[head * hs..], 3 * c, kh, c).alpha(scale), s, block);
                    for (i, row) in s.chunks_exact_mut(block).enumerate() {
                        attention::causal_softmax_row(&mut row[..keys], pos + i);
                    }
                    // att_h (P, hs) = scores V_h
                    let out = &mut att[b * steps * c + head * hs..];
                    gemm(&Gemm::nn(steps, hs, keys, s, block, vh, c), out, c);
                }
            }
            linear::forward(att, p(blk.attn_proj.0), blk.attn_proj.1.map(p), proj, n, c, c);
            x.iter_mut().zip(&*proj).for_each(|(x, &d)| *x += d);
            norm(x, blk.ln2, p, h, stats, c);
            linear::forward(h, p(blk.fc.0), blk.fc.1.map(p), fc, n, fc_width, c);
            if cfg.swiglu {
                swiglu::forward(fc, fc_act, 4 * c);
            } else if cfg.relu2 {
                relu_squared::forward(fc, fc_act);
            } else {
                gelu::forward(fc, fc_act);
            }
            linear::forward(fc_act, p(blk.fc_proj.0), blk.fc_proj.1.map(p), proj, n, c, 4 * c);
            x.iter_mut().zip(&*proj).for_each(|(x, &d)| *x += d);
        }
        // Only each row's newest position needs logits.
        for (last, row) in self.last.chunks_exact_mut(c).zip(x.chunks_exact(steps * c)) {
            last.copy_from_slice(&row[(steps - 1) * c..]);
        }
        let h = &mut h[..bsz * c];
        norm(&self.last, gpt.ln_f, p, h, stats, c);
        linear::forward(h, p(gpt.head), None, &mut self.logits, bsz, cfg.vocab_size, c);
        if cfg.logit_softcap > 0.0 {
            softcap::forward(&mut self.logits, cfg.logit_softcap);
        }
        self.len += steps;
        Ok(&self.logits)
    }
}

/// The width of the MLP's first linear layer: 4C, or 8C for SwiGLU's gate and up.
fn fc_width(c: &GptConfig) -> usize {
    if c.swiglu { 8 * c.d_model } else { 4 * c.d_model }
}

/// LayerNorm, or RMSNorm for a norm without a bias, of the rows of `x` into `out`; `stats` is
/// scratch of at least two floats per row.
fn norm<'a, F: Real>(x: &[F], n: Norm, p: impl Fn(crate::store::Var) -> &'a [F], out: &mut [F], stats: &mut [F], c: usize) {
    let rows = x.len() / c;
    let out = &mut out[..x.len()];
    match n.bias {
        Some(b) => layernorm::forward(x, p(n.weight), p(b), out, &mut stats[..2 * rows], c),
        None => rmsnorm::forward(x, p(n.weight), out, &mut stats[..rows], c),
    }
}
