//! The shape of the Llama-style model the trainer runs, and how it maps to the planners' shape.

use serde::{Deserialize, Serialize};

use seqpipe_kernels::Rope;
use seqpipe_slicing::{FfnKind, ModelShape};

use super::rope_scaling::RopeScaling;

/// A Llama-style decoder: RMSNorm, RoPE, GQA attention, SwiGLU FFN. In TOML every field is
/// optional; missing ones take [`ModelConfig::tiny`]'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// FFN width `F`.
    pub ffn_hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Transformer layers.
    pub layers: usize,
    /// RoPE base θ.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Longest position RoPE tables are built for.
    pub max_positions: usize,
    /// Share the embedding matrix with the LM head.
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Head dimension when it is not `hidden / heads` (Hugging Face's `head_dim`; e.g. a model
    /// whose `heads · head_dim` differs from its hidden size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RoPE scaling of the base's frequencies (none: plain RoPE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Biases on the four attention projections (Hugging Face's `attention_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub attention_bias: bool,
    /// Biases on the three MLP projections (Hugging Face's `mlp_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// Upper bounds of the sizes (see [`ModelConfig::problems`]).
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest hidden or FFN width.
pub const MAX_WIDTH: usize = 1 << 18;
/// Largest head count.
pub const MAX_HEADS: usize = 4096;
/// Largest layer count.
pub const MAX_LAYERS: usize = 4096;
/// Largest RoPE table (16M positions).
pub const MAX_POSITIONS: usize = 1 << 24;
/// Largest parameter count (about 1.1 trillion).
pub const MAX_PARAMETERS: f64 = (1u64 << 40) as f64;

fn default_theta() -> f64 {
    10_000.0
}

fn default_eps() -> f64 {
    1e-5
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::tiny()
    }
}

impl ModelConfig {
    /// The default tiny model: trains in seconds on a CPU, deep enough for 4 stages × 2 chunks.
    pub fn tiny() -> Self {
        ModelConfig {
            vocab: 256,
            hidden: 64,
            ffn_hidden: 172,
            heads: 4,
            kv_heads: 2,
            layers: 8,
            rope_theta: default_theta(),
            norm_eps: default_eps(),
            max_positions: 4096,
            tie_embeddings: false,
            head_dim: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
        }
    }

    /// The RoPE tables of this model for inputs of `dtype` on `device`: the base's frequencies,
    /// scaled as `rope_scaling` says.
    pub fn rope(
        &self,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> seqpipe_kernels::Result<Rope> {
        let base = seqpipe_kernels::default_frequencies(self.rope_theta, self.head_dim());
        let (frequencies, attention) = match &self.rope_scaling {
            Some(s) => s.apply(&base, self.rope_theta),
            None => (base, 1.0),
        };
        Rope::from_frequencies(&frequencies, attention, self.max_positions, dtype, device)
    }

    /// Parameters of the whole model, in f64 so that no size overflows it.
    pub fn parameter_count(&self) -> f64 {
        let (h, f, v, l) = (
            self.hidden as f64,
            self.ffn_hidden as f64,
            self.vocab as f64,
            self.layers as f64,
        );
        let d = self.unchecked_head_dim() as f64;
        let (q, kv) = (self.heads as f64 * d, self.kv_heads as f64 * d);
        let layer = h * (2.0 * q + 2.0 * kv) + 3.0 * h * f + 2.0 * h;
        let ends = if self.tie_embeddings { 1.0 } else { 2.0 } * v * h + h;
        l * (layer + self.bias_parameters_per_layer()) + ends
    }

    /// Whether the projection in slot `i` of the seven matrices (q, k, v, o, gate, up, down: the
    /// layer's `MATRIX_SLOTS` order) has a bias.
    pub fn has_bias(&self, i: usize) -> bool {
        if i < 4 {
            self.attention_bias
        } else {
            self.mlp_bias
        }
    }

    /// Bias parameters of one layer: `q + 2·kv + H` with attention biases, `2F + H` with MLP ones
    /// (in f64, like [`Self::parameter_count`], so that unchecked sizes cannot overflow it).
    pub fn bias_parameters_per_layer(&self) -> f64 {
        let d = self.unchecked_head_dim() as f64;
        let (h, f) = (self.hidden as f64, self.ffn_hidden as f64);
        let attention = (self.heads as f64 + 2.0 * self.kv_heads as f64) * d + h;
        let mlp = 2.0 * f + h;
        f64::from(u8::from(self.attention_bias)) * attention
            + f64::from(u8::from(self.mlp_bias)) * mlp
    }

    /// [`Self::head_dim`] for sizes not yet checked: 0 where there are no heads.
    fn unchecked_head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or_else(|| self.hidden.checked_div(self.heads).unwrap_or(0))
    }

    /// Head dimension: `head_dim` when given, else `H / heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden / self.heads)
    }

    /// The planners' view of this model (FLOPs, memory).
    pub fn shape(&self) -> ModelShape {
        ModelShape {
            layers: self.layers as u64,
            hidden: self.hidden as u64,
            ffn_hidden: self.ffn_hidden as u64,
            heads: self.heads as u64,
            kv_heads: self.kv_heads as u64,
            head_dim: self.head_dim() as u64,
            vocab: self.vocab as u64,
            ffn: FfnKind::Gated,
        }
    }

    /// Problems with the sizes, each naming the field and what would be valid. Every size has an
    /// upper bound (far above any real model's) so that no product of sizes overflows or sizes an
    /// allocation beyond reason.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, value, max) in [
            ("vocab", self.vocab, MAX_VOCAB),
            ("hidden", self.hidden, MAX_WIDTH),
            ("ffn_hidden", self.ffn_hidden, MAX_WIDTH),
            ("heads", self.heads, MAX_HEADS),
            ("kv_heads", self.kv_heads, MAX_HEADS),
            ("layers", self.layers, MAX_LAYERS),
            ("max_positions", self.max_positions, MAX_POSITIONS),
        ] {
            if value > max {
                out.push(format!(
                    "model.{name} = {value}: at most {max} is supported"
                ));
            }
        }
        if out.is_empty() && self.parameter_count() > MAX_PARAMETERS {
            out.push(format!(
                "the model has {:.3e} parameters: at most {MAX_PARAMETERS:.0e} are supported",
                self.parameter_count()
            ));
        }
        if self.kv_heads > self.heads {
            out.push(format!(
                "model.kv_heads = {} is more than model.heads = {}",
                self.kv_heads, self.heads
            ));
        }
        for (name, value) in [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("ffn_hidden", self.ffn_hidden),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("layers", self.layers),
            ("max_positions", self.max_positions),
        ] {
            if value == 0 {
                out.push(format!("model.{name} = 0: must be at least 1"));
            }
        }
        match self.head_dim {
            Some(d) if d == 0 || d % 2 == 1 || d > MAX_WIDTH => out.push(format!(
                "model.head_dim = {d}: give an even number from 2 to {MAX_WIDTH} (RoPE rotates pairs)"
            )),
            Some(_) => {}
            None if self.heads > 0 && self.hidden % self.heads != 0 => out.push(format!(
                "model.hidden = {} must be a multiple of model.heads = {} (or give model.head_dim)",
                self.hidden, self.heads
            )),
            None if self.heads > 0 && self.head_dim() % 2 == 1 => out.push(format!(
                "head dim hidden/heads = {} must be even for RoPE",
                self.head_dim()
            )),
            None => {}
        }
        if self.kv_heads > 0 && self.heads % self.kv_heads != 0 {
            out.push(format!(
                "model.kv_heads = {} must divide model.heads = {}",
                self.kv_heads, self.heads
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            out.push(format!(
                "model.rope_theta = {} must be finite and positive",
                self.rope_theta
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            out.push(format!(
                "model.norm_eps = {} must be finite and positive",
                self.norm_eps
            ));
        }
        if let Some(scaling) = &self.rope_scaling {
            out.extend(scaling.problems());
        }
        out
    }
}
