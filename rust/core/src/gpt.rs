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

/// How a parameter starts: N(0, std), or a constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal(f64),
    Const(f64),
}

/// One parameter as the model declares it: name (nanoGPT's), shape, initialisation, whether
/// AdamW decays it (2-D weights only), and whether Muon orthogonalises its updates.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub init: Init,
    pub decay: bool,
    /// Muon's hidden matrices: the number of equal row blocks orthogonalised separately (3 for a
    /// fused Q, K, V weight). None: AdamW updates it, even when Muon is the optimizer.
    pub muon_blocks: Option<usize>,
}

/// A parameter updated by AdamW under every optimizer unless marked with `muon`.
fn spec(name: String, dims: &[usize], init: Init) -> ParamSpec {
    ParamSpec { name, decay: dims.len() == 2, dims: dims.to_vec(), init, muon_blocks: None }
}

impl ParamSpec {
    /// Mark a hidden 2-D weight as Muon's, its rows orthogonalised as `blocks` equal blocks.
    fn muon(self, blocks: usize) -> ParamSpec {
        ParamSpec { muon_blocks: Some(blocks), ..self }
    }
}

/// Total elements of `specs`, or None if it overflows.
fn sum_numel(specs: impl IntoIterator<Item = ParamSpec>) -> Option<usize> {
    specs.into_iter().try_fold(0usize, |n, s| n.checked_add(s.dims.iter().try_fold(1usize, |m, &d| m.checked_mul(d))?))
}

/// Parameters per block, in `block_specs` order (the order `Block::from_handles` reads).
const PER_BLOCK: usize = 12;

impl GptConfig {
    /// The one declaration of the model's parameters, in registration order: the token and
    /// position embeddings, every block's, the final layernorm. `Gpt::new`, the parameter count
    /// and (through the binding) Python's checkpoint checks all read it.
    pub fn layout(&self) -> impl Iterator<Item = ParamSpec> + '_ {
        let (v, c, t) = (self.vocab_size, self.d_model, self.block_size);
        let std = Init::Normal(0.02);
        let embeddings = [
            spec("transformer.wte.weight".into(), &[v, c], std),
            spec("transformer.wpe.weight".into(), &[t, c], std),
        ];
        let ln_f = [
            spec("transformer.ln_f.weight".into(), &[c], Init::Const(1.0)),
            spec("transformer.ln_f.bias".into(), &[c], Init::Const(0.0)),
        ];
        embeddings.into_iter().chain((0..self.n_layer).flat_map(|i| self.block_specs(i))).chain(ln_f)
    }

    /// Block `i`'s parameters.
    fn block_specs(&self, i: usize) -> [ParamSpec; PER_BLOCK] {
        let c = self.d_model;
        let std = Init::Normal(0.02);
        // Residual projections are scaled so the residual stream's variance does not grow with depth.
        let proj_std = Init::Normal(0.02 / (2.0 * self.n_layer as f64).sqrt());
        let (one, zero) = (Init::Const(1.0), Init::Const(0.0));
        let p = |part: &str, dims: &[usize], init| spec(format!("transformer.h.{i}.{part}"), dims, init);
        [
            p("ln_1.weight", &[c], one),
            p("ln_1.bias", &[c], zero),
            p("attn.c_attn.weight", &[3 * c, c], std).muon(3), // rows: Q, K, V
            p("attn.c_attn.bias", &[3 * c], zero),
            p("attn.c_proj.weight", &[c, c], proj_std).muon(1),
            p("attn.c_proj.bias", &[c], zero),
            p("ln_2.weight", &[c], one),
            p("ln_2.bias", &[c], zero),
            p("mlp.c_fc.weight", &[4 * c, c], std).muon(1),
            p("mlp.c_fc.bias", &[4 * c], zero),
            p("mlp.c_proj.weight", &[c, 4 * c], proj_std).muon(1),
            p("mlp.c_proj.bias", &[c], zero),
        ]
    }

    /// Number of parameters, or None if it overflows. Counts one block's layout and multiplies,
    /// so a config of a billion layers is counted without being listed.
    pub fn param_count(&self) -> Option<usize> {
        let per_block = sum_numel(self.block_specs(0))?;
        let outside = sum_numel(GptConfig { n_layer: 0, ..*self }.layout())?;
        per_block.checked_mul(self.n_layer)?.checked_add(outside)
    }

    /// Every check: the settings one by one (`validate_settings`), then the model's size.
    pub fn validate(&self) -> Result<()> {
        self.validate_settings()?;
        if self.vocab_size > u32::MAX as usize || self.param_count().is_none_or(|n| n > MAX_PARAMS) {
            let count = self.param_count().map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(Error::Invalid(format!(
                "the model is too large: {count} parameters (vocab_size {}, d_model {}, n_layer {}, block_size {}), \
                 more than lmcore's limit of {MAX_PARAMS} (4 GiB of float32 weights)",
                self.vocab_size, self.d_model, self.n_layer, self.block_size
            )));
        }
        Ok(())
    }

    /// The checks of each setting and of their relations, not of the size they add up to.
    pub fn validate_settings(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Invalid(msg));
        let sizes = [("vocab_size", self.vocab_size), ("d_model", self.d_model), ("n_head", self.n_head), ("n_layer", self.n_layer), ("block_size", self.block_size)];
        if let Some((name, value)) = sizes.iter().find(|(_, v)| *v == 0) {
            return fail(format!("{name} must be at least 1, got {value}"));
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return fail(format!("n_head {} does not divide d_model {}", self.n_head, self.d_model));
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

impl Block {
    /// The handles of one block, in `block_specs` order.
    fn from_handles(h: &[Var]) -> Block {
        Block { ln1: (h[0], h[1]), attn: (h[2], h[3]), attn_proj: (h[4], h[5]), ln2: (h[6], h[7]), fc: (h[8], h[9]), fc_proj: (h[10], h[11]) }
    }
}

impl Gpt {
    /// Register and initialise every parameter of `config.layout()` in `g` (which must not have
    /// any yet), drawing the normal ones from one generator seeded with `seed`, in layout order.
    pub fn new<F: Real>(g: &mut Graph<F>, config: GptConfig, seed: u64) -> Result<Gpt> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut handles = Vec::new();
        for spec in config.layout() {
            let var = g.store.add_param(&spec.name, Shape::new(&spec.dims)?, spec.decay, spec.muon_blocks)?;
            for x in g.store.values_mut(var) {
                *x = F::from_f64(match spec.init {
                    Init::Normal(std) => std * rng.normal(),
                    Init::Const(c) => c,
                });
            }
            handles.push(var);
        }
        let (wte, wpe, ln_f) = (handles[0], handles[1], (handles[handles.len() - 2], handles[handles.len() - 1]));
        let blocks = handles[2..handles.len() - 2].chunks_exact(PER_BLOCK).map(Block::from_handles).collect();
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
