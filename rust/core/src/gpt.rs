//! The GPT-2 style decoder assembled from the ops: token + position embeddings, pre-norm blocks
//! of causal self-attention and a GELU MLP with residual connections, a final layernorm and the
//! output projection tied to the token embedding. Parameter names follow nanoGPT's, so weights
//! read naturally in a safetensors file.

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::real::Real;
use crate::rng::Rng;
use crate::store::{Shape, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub block_size: usize,
    pub dropout: f64,
}

/// The most parameters a model may have (4 GiB of f32 weights), so a config cannot ask for
/// more memory than any machine has (an allocation failure aborts rather than erring).
pub const MAX_PARAMS: usize = 1 << 30;

impl GptConfig {
    /// Number of parameters, or None if it overflows.
    pub fn param_count(&self) -> Option<usize> {
        let (v, c, t, l) = (self.vocab_size, self.d_model, self.block_size, self.n_layer);
        // wte, wpe, per block 4 weight matrices (12 C^2) plus 13 C of biases and norms, ln_f.
        let per_block = c.checked_mul(c)?.checked_mul(12)?.checked_add(c.checked_mul(13)?)?;
        v.checked_add(t)?.checked_mul(c)?.checked_add(per_block.checked_mul(l)?)?.checked_add(2 * c)
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Invalid(msg));
        if self.vocab_size == 0 || self.d_model == 0 || self.n_head == 0 || self.n_layer == 0 || self.block_size == 0 {
            return fail(format!("every model size must be at least 1, got {self:?}"));
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return fail(format!("n_head {} does not divide d_model {}", self.n_head, self.d_model));
        }
        if self.vocab_size > u32::MAX as usize || self.param_count().is_none_or(|n| n > MAX_PARAMS) {
            let count = self.param_count().map_or("more than 2^64".to_string(), |n| n.to_string());
            return fail(format!(
                "the model is too large: {count} parameters (vocab_size {}, d_model {}, n_layer {}, block_size {}), \
                 more than lmcore's limit of {MAX_PARAMS} (4 GiB of float32 weights)",
                self.vocab_size, self.d_model, self.n_layer, self.block_size
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }
}

/// Handles of one transformer block's parameters.
pub(crate) struct Block {
    pub ln1: (Var, Var),
    pub attn: (Var, Var),
    pub attn_proj: (Var, Var),
    pub ln2: (Var, Var),
    pub fc: (Var, Var),
    pub fc_proj: (Var, Var),
}

pub struct Gpt {
    pub config: GptConfig,
    pub(crate) wte: Var,
    pub(crate) wpe: Var,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: (Var, Var),
}

/// How a parameter starts: N(0, std), or a constant.
enum Init {
    Normal(f64),
    Const(f64),
}

fn add_param<F: Real>(g: &mut Graph<F>, rng: &mut Rng, name: &str, dims: &[usize], init: Init) -> Result<Var> {
    let shape = Shape::new(dims)?;
    let var = g.store.add_param(name, shape, dims.len() == 2)?;
    for x in g.store.values_mut(var) {
        *x = F::from_f64(match init {
            Init::Normal(std) => std * rng.normal(),
            Init::Const(c) => c,
        });
    }
    Ok(var)
}

impl Gpt {
    /// Register and initialise every parameter in `g` (which must not have any yet).
    pub fn new<F: Real>(g: &mut Graph<F>, config: GptConfig, seed: u64) -> Result<Gpt> {
        config.validate()?;
        let GptConfig { vocab_size: v, d_model: c, n_layer, block_size, .. } = config;
        let mut rng = Rng::new(seed);
        let std = 0.02;
        // Residual projections are scaled so the residual stream's variance does not grow with depth.
        let proj_std = std / (2.0 * n_layer as f64).sqrt();
        let mut p = |name: &str, dims: &[usize], init| add_param(g, &mut rng, name, dims, init);
        let wte = p("transformer.wte.weight", &[v, c], Init::Normal(std))?;
        let wpe = p("transformer.wpe.weight", &[block_size, c], Init::Normal(std))?;
        let mut blocks = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let mut pair = |part: &str, w: &[usize], w_init: Init, b: usize, b_init: Init| -> Result<(Var, Var)> {
                let name = format!("transformer.h.{i}.{part}");
                Ok((p(&format!("{name}.weight"), w, w_init)?, p(&format!("{name}.bias"), &[b], b_init)?))
            };
            blocks.push(Block {
                ln1: pair("ln_1", &[c], Init::Const(1.0), c, Init::Const(0.0))?,
                attn: pair("attn.c_attn", &[3 * c, c], Init::Normal(std), 3 * c, Init::Const(0.0))?,
                attn_proj: pair("attn.c_proj", &[c, c], Init::Normal(proj_std), c, Init::Const(0.0))?,
                ln2: pair("ln_2", &[c], Init::Const(1.0), c, Init::Const(0.0))?,
                fc: pair("mlp.c_fc", &[4 * c, c], Init::Normal(std), 4 * c, Init::Const(0.0))?,
                fc_proj: pair("mlp.c_proj", &[c, 4 * c], Init::Normal(proj_std), c, Init::Const(0.0))?,
            });
        }
        let ln_f = (p("transformer.ln_f.weight", &[c], Init::Const(1.0))?, p("transformer.ln_f.bias", &[c], Init::Const(0.0))?);
        Ok(Gpt { config, wte, wpe, blocks, ln_f })
    }

    /// Forward pass on ids (B, T). Returns logits (B, T, V) and, given targets (B, T), the mean
    /// cross-entropy loss. Dropout is applied only when `train` is set.
    pub fn forward<F: Real>(&self, g: &mut Graph<F>, idx: Var, targets: Option<Var>, train: bool) -> Result<(Var, Option<Var>)> {
        let s = g.store.ids_shape(idx)?;
        if s.ndim() != 2 || s.numel() == 0 {
            return Err(Error::Shape(format!("token ids must be a non-empty (B, T) array, got shape {:?}", s.dims())));
        }
        let (b, t) = (s.dims()[0], s.dims()[1]);
        if t > self.config.block_size {
            return Err(Error::Shape(format!("sequence length {t} exceeds the block size {}", self.config.block_size)));
        }
        let p_drop = if train { self.config.dropout } else { 0.0 };
        let pos = g.input_ids(&[b, t], (0..b * t).map(|i| (i % t) as i64), t)?;
        let tok = g.embedding(idx, self.wte)?;
        let pe = g.embedding(pos, self.wpe)?;
        let sum = g.add(tok, pe)?;
        let mut x = g.dropout(sum, p_drop)?;
        for blk in &self.blocks {
            let h = g.layernorm(x, blk.ln1.0, blk.ln1.1)?;
            let qkv = g.linear(h, blk.attn.0, Some(blk.attn.1))?;
            let a = g.attention(qkv, self.config.n_head)?;
            let a = g.linear(a, blk.attn_proj.0, Some(blk.attn_proj.1))?;
            let a = g.dropout(a, p_drop)?;
            x = g.add(x, a)?;
            let h = g.layernorm(x, blk.ln2.0, blk.ln2.1)?;
            let f = g.linear(h, blk.fc.0, Some(blk.fc.1))?;
            let f = g.gelu(f)?;
            let f = g.linear(f, blk.fc_proj.0, Some(blk.fc_proj.1))?;
            let f = g.dropout(f, p_drop)?;
            x = g.add(x, f)?;
        }
        let x = g.layernorm(x, self.ln_f.0, self.ln_f.1)?;
        let logits = g.linear(x, self.wte, None)?; // tied output projection
        let loss = targets.map(|tg| g.cross_entropy(logits, tg)).transpose()?;
        Ok((logits, loss))
    }
}
