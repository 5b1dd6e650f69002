//! The shape of a decoder-only transformer, as far as FLOP and memory accounting need it.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{FfnKind, ModelShape};
//! let shape = ModelShape::mha(2, 64, 256, 4, 1000, FfnKind::Gated);
//! shape.validate().unwrap();
//! assert_eq!(shape.head_dim, 16);
//! // Per layer: 4·64² (Q, K, V, O) + 3·64·256 (SwiGLU) + 2·64 (norms).
//! assert_eq!(shape.layer_parameters(), 65_664);
//! assert_eq!(shape.parameters(), 2 * 65_664 + 2 * 1000 * 64 + 64);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Result, SlicingError};

/// Largest size of any one dimension [`ModelShape::validate`] accepts.
pub const MAX_SIZE: u64 = 1 << 32;
/// Largest parameter count [`ModelShape::validate`] accepts (2^50, far above any model; it keeps
/// every size product of [`ModelShape::parameters`] inside `u64`).
pub const MAX_PARAMETERS: f64 = (1u64 << 50) as f64;

/// Feed-forward block kind: its number of `H×F` GEMMs decides its FLOPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    /// Two GEMMs (`H→F`, `F→H`) around a pointwise activation: GPT-style, `4HF` FLOPs per token.
    Plain,
    /// Three GEMMs (gate, up, down) with SiLU(gate)·up: Llama-style SwiGLU, `6HF` FLOPs per token.
    Gated,
}

impl FfnKind {
    /// Number of `H×F` weight matrices.
    pub fn matrices(self) -> u64 {
        match self {
            FfnKind::Plain => 2,
            FfnKind::Gated => 3,
        }
    }
}

/// Sizes of a decoder-only transformer (SPEC notation in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Transformer layers `L`.
    pub layers: u64,
    /// Hidden size `H`.
    pub hidden: u64,
    /// FFN width `F`.
    pub ffn_hidden: u64,
    /// Query heads `h`.
    pub heads: u64,
    /// Key/value heads `h_kv` (equal to `heads` without GQA).
    pub kv_heads: u64,
    /// Head dimension `d` (usually `H / h`).
    pub head_dim: u64,
    /// Vocabulary size `V`.
    pub vocab: u64,
    /// Feed-forward kind.
    pub ffn: FfnKind,
}

impl ModelShape {
    /// A shape with `head_dim = hidden / heads` and `kv_heads = heads` (no GQA).
    pub fn mha(
        layers: u64,
        hidden: u64,
        ffn_hidden: u64,
        heads: u64,
        vocab: u64,
        ffn: FfnKind,
    ) -> Self {
        let head_dim = hidden.checked_div(heads).unwrap_or(0);
        ModelShape {
            layers,
            hidden,
            ffn_hidden,
            heads,
            kv_heads: heads,
            head_dim,
            vocab,
            ffn,
        }
    }

    /// Checks that every size is positive and the head layout is consistent.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("ffn_hidden", self.ffn_hidden),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("vocab", self.vocab),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(SlicingError::BadShape {
                    field,
                    value,
                    reason: "must be at least 1".into(),
                });
            }
        }
        for (field, value) in positive {
            if value > MAX_SIZE {
                return Err(SlicingError::BadShape {
                    field,
                    value,
                    reason: format!("at most {MAX_SIZE} is supported"),
                });
            }
        }
        let params = self.parameters_f64();
        if params > MAX_PARAMETERS {
            return Err(SlicingError::BadShape {
                field: "parameters",
                value: params as u64,
                reason: format!(
                    "{params:.3e} parameters: at most {MAX_PARAMETERS:.0e} are supported"
                ),
            });
        }
        if self.heads % self.kv_heads != 0 {
            return Err(SlicingError::BadShape {
                field: "kv_heads",
                value: self.kv_heads,
                reason: format!("must divide the number of query heads ({})", self.heads),
            });
        }
        Ok(())
    }

    /// Width of all query heads together, `h·d` (equals `H` for the usual shapes).
    pub fn q_width(&self) -> u64 {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together, `h_kv·d`.
    pub fn kv_width(&self) -> u64 {
        self.kv_heads * self.head_dim
    }

    /// Forward FLOPs per token of one layer's GEMMs: Q and O projections `4H·hd`, K and V
    /// projections `4H·h_kv·d` (together `8H·hd` without GQA, as in SPEC §1) and the FFN.
    pub fn layer_linear_flops_per_token(&self) -> f64 {
        let h = self.hidden as f64;
        let attn = 4.0 * h * self.q_width() as f64 + 4.0 * h * self.kv_width() as f64;
        let ffn = 2.0 * self.ffn.matrices() as f64 * h * self.ffn_hidden as f64;
        attn + ffn
    }

    /// Forward FLOPs of one layer's attention per (query, key) pair: `(4d+3)·h`
    /// (`QKᵀ` and `PV` at `2d` each, three for the softmax).
    pub fn layer_attention_flops_per_pair(&self) -> f64 {
        (4.0 * self.head_dim as f64 + 3.0) * self.heads as f64
    }

    /// Forward FLOPs per token of the embedding and LM head, `2HV` each (SPEC §1 counts both).
    pub fn vocab_flops_per_token(&self) -> f64 {
        4.0 * self.hidden as f64 * self.vocab as f64
    }

    /// [`ModelShape::parameters`] in f64, which cannot overflow (for validation).
    fn parameters_f64(&self) -> f64 {
        let (h, f) = (self.hidden as f64, self.ffn_hidden as f64);
        let q = self.heads as f64 * self.head_dim as f64;
        let kv = self.kv_heads as f64 * self.head_dim as f64;
        let layer = 2.0 * h * q + 2.0 * h * kv + self.ffn.matrices() as f64 * h * f + 2.0 * h;
        self.layers as f64 * layer + 2.0 * self.vocab as f64 * h + h
    }

    /// Parameters of one transformer layer (weights of the projections, FFN and two norms).
    pub fn layer_parameters(&self) -> u64 {
        let h = self.hidden;
        let attn = 2 * h * self.q_width() + 2 * h * self.kv_width();
        let ffn = self.ffn.matrices() * h * self.ffn_hidden;
        attn + ffn + 2 * h
    }

    /// Parameters of the whole model with an untied embedding and LM head.
    pub fn parameters(&self) -> u64 {
        self.layers * self.layer_parameters() + 2 * self.vocab * self.hidden + self.hidden
    }
}
