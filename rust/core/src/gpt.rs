//! The GPT-2 style decoder assembled from the ops: token + position embeddings, pre-norm blocks
//! of causal self-attention and a GELU MLP with residual connections, a final layernorm and the
//! output projection tied to the token embedding. Options of `GptConfig` swap in modern parts
//! (rotary embeddings, RMSNorm, QK-norm, ReLU^2 or a gated SiLU MLP, no linear biases, an untied
//! head, zero-initialised projections, a logit soft-cap). Parameter names follow nanoGPT's, so
//! weights read naturally in a safetensors file.

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::real::Real;
use crate::rng::Rng;
use crate::store::{Shape, Var};

/// The model's shape and its block options. Every option is off by default, which is GPT-2's
/// block (the classic presets): its layout, initial weights and results stay as they were.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub block_size: usize,
    pub dropout: f64,
    /// Rotary position embeddings on every head's query and key (base 10000) instead of the
    /// learned position embedding `wpe`, which the layout then lacks.
    pub rope: bool,
    /// RMSNorm (a gain, no bias) instead of every LayerNorm, ln_f included.
    pub rmsnorm: bool,
    /// RMS-normalise each head's query and key before the scores (then rotate, with `rope`), with
    /// learnable gains `attn.q_norm.weight` and `attn.k_norm.weight` (hs each, shared by the heads).
    pub qk_norm: bool,
    /// relu(x)^2 instead of GELU in the MLP.
    pub relu2: bool,
    /// A gated SiLU MLP (SwiGLU, Llama's) instead of GELU: `mlp.c_fc` (8C, C) makes the gate (its
    /// first 4C rows) and the up projection (the next 4C), and silu(gate) * up goes to `mlp.c_proj`.
    pub swiglu: bool,
    /// No biases in the linear layers (Llama's and Qwen3's default); a LayerNorm keeps its own.
    pub no_bias: bool,
    /// A separate output projection `lm_head.weight` (V, C) instead of the token embedding.
    pub untied_head: bool,
    /// The residual projections (attn.c_proj, mlp.c_proj weights) and an untied head start at
    /// zero. A tied head is the token embedding, which is never zeroed.
    pub zero_init: bool,
    /// logits = cap * tanh(logits / cap) before the loss and in generation; 0 = off.
    pub logit_softcap: f64,
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

impl GptConfig {
    /// The one declaration of the model's parameters, in registration order: the token (and,
    /// without rope, position) embeddings, every block's, the final norm, an untied head. `Gpt::new`,
    /// the parameter count and (through the binding) Python's checkpoint checks all read it.
    /// With every option off it is GPT-2's layout, in the same order (so the same initial draws).
    pub fn layout(&self) -> impl Iterator<Item = ParamSpec> + '_ {
        self.embedding_specs().into_iter().chain((0..self.n_layer).flat_map(|i| self.block_specs(i))).chain(self.final_specs())
    }

    fn embedding_specs(&self) -> Vec<ParamSpec> {
        let (v, c, t) = (self.vocab_size, self.d_model, self.block_size);
        let std = Init::Normal(0.02);
        let mut specs = vec![spec("transformer.wte.weight".into(), &[v, c], std)];
        if !self.rope {
            specs.push(spec("transformer.wpe.weight".into(), &[t, c], std));
        }
        specs
    }

    /// The final norm and an untied head.
    fn final_specs(&self) -> Vec<ParamSpec> {
        let mut specs = self.norm_specs("transformer.ln_f");
        if self.untied_head {
            let init = if self.zero_init { Init::Const(0.0) } else { Init::Normal(0.02) };
            specs.push(spec("lm_head.weight".into(), &[self.vocab_size, self.d_model], init));
        }
        specs
    }

    /// A norm's weight and, for a LayerNorm, its bias.
    fn norm_specs(&self, prefix: &str) -> Vec<ParamSpec> {
        let c = self.d_model;
        let mut specs = vec![spec(format!("{prefix}.weight"), &[c], Init::Const(1.0))];
        if !self.rmsnorm {
            specs.push(spec(format!("{prefix}.bias"), &[c], Init::Const(0.0)));
        }
        specs
    }

    /// Block `i`'s parameters.
    fn block_specs(&self, i: usize) -> Vec<ParamSpec> {
        let (c, hs) = (self.d_model, self.d_model / self.n_head.max(1));
        let std = Init::Normal(0.02);
        // Residual projections are scaled so the residual stream's variance does not grow with depth.
        let proj_std = if self.zero_init { Init::Const(0.0) } else { Init::Normal(0.02 / (2.0 * self.n_layer as f64).sqrt()) };
        let (one, zero) = (Init::Const(1.0), Init::Const(0.0));
        let name = |part: &str| format!("transformer.h.{i}.{part}");
        let p = |part: &str, dims: &[usize], init| spec(name(part), dims, init);
        // A linear layer's weight and (unless no_bias) its bias.
        let linear = |part: &str, dims: &[usize], init, blocks| {
            let weight = p(&format!("{part}.weight"), dims, init).muon(blocks);
            std::iter::once(weight).chain((!self.no_bias).then(|| p(&format!("{part}.bias"), &dims[..1], zero)))
        };
        let mut specs = self.norm_specs(&name("ln_1"));
        // The fused weight's rows are Q, K and V: Muon orthogonalises each block alone.
        specs.extend(linear("attn.c_attn", &[3 * c, c], std, 3));
        if self.qk_norm {
            specs.extend([p("attn.q_norm.weight", &[hs], one), p("attn.k_norm.weight", &[hs], one)]);
        }
        specs.extend(linear("attn.c_proj", &[c, c], proj_std, 1));
        specs.extend(self.norm_specs(&name("ln_2")));
        // SwiGLU's fused gate and up weight: Muon orthogonalises each of the two blocks alone.
        let (fc, fc_blocks) = if self.swiglu { (8 * c, 2) } else { (4 * c, 1) };
        specs.extend(linear("mlp.c_fc", &[fc, c], std, fc_blocks));
        specs.extend(linear("mlp.c_proj", &[c, 4 * c], proj_std, 1));
        specs
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
        if !(self.logit_softcap.is_finite() && self.logit_softcap >= 0.0) {
            return fail(format!("logit_softcap must be a finite number >= 0 (0: off), got {}", self.logit_softcap));
        }
        if self.swiglu && self.relu2 {
            return fail("swiglu and relu2 are two MLP activations: choose one".into());
        }
        if self.rope && !(self.d_model / self.n_head).is_multiple_of(2) {
            return fail(format!(
                "rope needs an even head size, but d_model {} / n_head {} = {}",
                self.d_model, self.n_head, self.d_model / self.n_head
            ));
        }
        Ok(())
    }
}

/// A norm's handles: its weight and, for a LayerNorm, its bias (RMSNorm has none).
#[derive(Clone, Copy)]
pub(crate) struct Norm {
    pub weight: Var,
    pub bias: Option<Var>,
}

/// Handles of one transformer block's parameters.
pub(crate) struct Block {
    pub ln1: Norm,
    /// Each linear layer's weight and bias (none with `no_bias`).
    pub attn: (Var, Option<Var>),
    /// QK-norm's gains (queries, keys).
    pub qk_norm: Option<(Var, Var)>,
    pub attn_proj: (Var, Option<Var>),
    pub ln2: Norm,
    pub fc: (Var, Option<Var>),
    pub fc_proj: (Var, Option<Var>),
}

pub struct Gpt {
    pub config: GptConfig,
    pub(crate) wte: Var,
    pub(crate) wpe: Option<Var>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: Norm,
    /// The output projection: `lm_head` when untied, else `wte`.
    pub(crate) head: Var,
}

/// Handles registered from consecutive specs, found by the end of their names.
struct Named<'a>(&'a [(String, Var)]);

impl Named<'_> {
    fn get(&self, suffix: &str) -> Option<Var> {
        self.0.iter().find(|(n, _)| n.ends_with(suffix)).map(|&(_, v)| v)
    }
    fn must(&self, suffix: &str) -> Var {
        self.get(suffix).expect("the layout declares it")
    }
    fn norm(&self, prefix: &str) -> Norm {
        Norm { weight: self.must(&format!("{prefix}.weight")), bias: self.get(&format!("{prefix}.bias")) }
    }
    fn pair(&self, prefix: &str) -> (Var, Option<Var>) {
        (self.must(&format!("{prefix}.weight")), self.get(&format!("{prefix}.bias")))
    }
}

impl Block {
    /// The handles of one block, registered from `block_specs`.
    fn from_handles(h: &Named) -> Block {
        let qk_norm = h.get("attn.q_norm.weight").map(|q| (q, h.must("attn.k_norm.weight")));
        Block {
            ln1: h.norm("ln_1"),
            attn: h.pair("attn.c_attn"),
            qk_norm,
            attn_proj: h.pair("attn.c_proj"),
            ln2: h.norm("ln_2"),
            fc: h.pair("mlp.c_fc"),
            fc_proj: h.pair("mlp.c_proj"),
        }
    }
}

/// LayerNorm, or RMSNorm for a norm without a bias.
fn norm<F: Real>(g: &mut Graph<F>, x: Var, n: Norm) -> Result<Var> {
    match n.bias {
        Some(b) => g.layernorm(x, n.weight, b),
        None => g.rmsnorm(x, n.weight),
    }
}

impl Gpt {
    /// Register and initialise every parameter of `config.layout()` in `g` (which must not have
    /// any yet), drawing the normal ones from one generator seeded with `seed`, in layout order.
    pub fn new<F: Real>(g: &mut Graph<F>, config: GptConfig, seed: u64) -> Result<Gpt> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut register = |specs: Vec<ParamSpec>| -> Result<Vec<(String, Var)>> {
            let mut handles = Vec::with_capacity(specs.len());
            for spec in specs {
                let var = g.store.add_param(&spec.name, Shape::new(&spec.dims)?, spec.decay, spec.muon_blocks)?;
                for x in g.store.values_mut(var) {
                    *x = F::from_f64(match spec.init {
                        Init::Normal(std) => std * rng.normal(),
                        Init::Const(c) => c,
                    });
                }
                handles.push((spec.name, var));
            }
            Ok(handles)
        };
        let embeddings = register(config.embedding_specs())?;
        let blocks = (0..config.n_layer).map(|i| Ok(Block::from_handles(&Named(&register(config.block_specs(i))?)))).collect::<Result<_>>()?;
        let last = register(config.final_specs())?;
        let (embeddings, last) = (Named(&embeddings), Named(&last));
        let wte = embeddings.must("wte.weight");
        Ok(Gpt { config, wte, wpe: embeddings.get("wpe.weight"), blocks, ln_f: last.norm("ln_f"), head: last.get("lm_head.weight").unwrap_or(wte) })
    }

    /// Forward pass on ids (B, T). Returns logits (B, T, V) and, given targets (B, T), the mean
    /// cross-entropy loss. Dropout is applied only when `train` is set.
    pub fn forward<F: Real>(&self, g: &mut Graph<F>, idx: Var, targets: Option<Var>, train: bool) -> Result<(Var, Option<Var>)> {
        let s = g.store.ids_shape(idx)?;
        if s.ndim() != 2 || s.numel() == 0 {
            return Err(Error::Shape(format!("token ids must be a non-empty (B, T) array, got shape {:?}", s.dims())));
        }
        let (b, t) = (s.dims()[0], s.dims()[1]);
        let cfg = &self.config;
        if t > cfg.block_size {
            return Err(Error::Shape(format!("sequence length {t} exceeds the block size {}", cfg.block_size)));
        }
        let p_drop = if train { cfg.dropout } else { 0.0 };
        let pos = self.wpe.map(|_| g.input_ids(&[b, t], (0..b * t).map(|i| (i % t) as i64), t)).transpose()?;
        let mut x = g.embedding(idx, self.wte)?;
        if let (Some(wpe), Some(pos)) = (self.wpe, pos) {
            let pe = g.embedding(pos, wpe)?;
            x = g.add(x, pe)?;
        }
        let mut x = g.dropout(x, p_drop)?;
        for blk in &self.blocks {
            let h = norm(g, x, blk.ln1)?;
            let mut qkv = g.linear(h, blk.attn.0, blk.attn.1)?;
            if let Some((qg, kg)) = blk.qk_norm {
                qkv = g.qk_norm(qkv, qg, kg, cfg.n_head)?;
            }
            if cfg.rope {
                qkv = g.rope(qkv, cfg.n_head)?;
            }
            let a = g.attention(qkv, cfg.n_head)?;
            let a = g.linear(a, blk.attn_proj.0, blk.attn_proj.1)?;
            let a = g.dropout(a, p_drop)?;
            x = g.add(x, a)?;
            let h = norm(g, x, blk.ln2)?;
            let f = g.linear(h, blk.fc.0, blk.fc.1)?;
            let f = if cfg.swiglu {
                g.swiglu(f)?
            } else if cfg.relu2 {
                g.relu_squared(f)?
            } else {
                g.gelu(f)?
            };
            let f = g.linear(f, blk.fc_proj.0, blk.fc_proj.1)?;
            let f = g.dropout(f, p_drop)?;
            x = g.add(x, f)?;
        }
        let x = norm(g, x, self.ln_f)?;
        let mut logits = g.linear(x, self.head, None)?; // the tied or untied output projection
        if cfg.logit_softcap > 0.0 {
            logits = g.softcap(logits, cfg.logit_softcap)?;
        }
        let loss = targets.map(|tg| g.cross_entropy(logits, tg)).transpose()?;
        Ok((logits, loss))
    }
}
