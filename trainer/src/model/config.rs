//! The shape of the Llama-style model the trainer runs, and how it maps to the planners' shape.

use serde::{Deserialize, Serialize};

use seqpipe_slicing::{FfnKind, ModelShape};

/// A Llama-style decoder: RMSNorm, RoPE, GQA attention, SwiGLU FFN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

fn default_theta() -> f64 {
    10_000.0
}

fn default_eps() -> f64 {
    1e-5
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
        }
    }

    /// Head dimension `H / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
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

    /// Problems with the sizes, each naming the field and what would be valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
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
        if self.heads > 0 && self.hidden % self.heads != 0 {
            out.push(format!(
                "model.hidden = {} must be a multiple of model.heads = {}",
                self.hidden, self.heads
            ));
        } else if self.heads > 0 && self.head_dim() % 2 == 1 {
            out.push(format!(
                "head dim hidden/heads = {} must be even for RoPE",
                self.head_dim()
            ));
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
        out
    }
}
