//! Activation bytes of one unit of work (tokens × layers) as a sum of named tensors (SPEC §5).
//!
//! A Llama-style layer saves, per token (SlimPipe's estimator): input, norm out, Q, K, V, attention
//! out, residual, norm out, gate, up and SiLU(gate)·up, i.e. `6H + 2·h_kv·d + 3F` elements when
//! `h·d = H`. Everything is divided by `t·c` (TP with sequence parallelism splits every tensor, CP
//! splits tokens). Terms whose size depends on where a slice sits in its sequence are separate and
//! named: the attention score matrix (only without flash-style attention), the K/V a slice keeps
//! for later slices when its own activations are dropped (full recomputation), and the dK/dV
//! accumulator a sliced sequence carries through its backward.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{ActivationModel, Parallelism, RecomputePolicy};
//! use seqpipe_slicing::preset;
//! let llama = preset("llama-7b").unwrap();
//! let act = ActivationModel::new(llama, Parallelism::new(1, 1, 1).unwrap()).unwrap();
//! // 6H + 2·h_kv·d + 3F = 65 792 bf16 elements per token and layer.
//! assert_eq!(act.bytes_per_token_layer(), 131_584.0);
//! let full = act.with_recompute(RecomputePolicy::Full);
//! assert_eq!(full.bytes_per_token_layer(), 8192.0); // only the layer input (H elements)
//! // Under full recomputation a slice keeps its K and V for the later slices of its sequence.
//! let unit = full.unit(4096, 0, true, 8); // 4096 tokens through 8 layers
//! assert_eq!(unit.kv_prefix, 8.0 * 2.0 * 4096.0 * 4096.0 * 2.0);
//! ```

use seqpipe_slicing::{FfnKind, ModelShape};
use serde::{Deserialize, Serialize};

use crate::error::{positive, Result};

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// 8-bit float.
    F8,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F8 => 1,
        }
    }
}

/// Which activations a layer keeps for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecomputePolicy {
    /// Keep every saved tensor.
    None,
    /// Recompute the cheap ones: the score matrix, both norm outputs and SiLU(gate)·up
    /// (PipeOffload: "cheap ops like norm and activation outputs are recomputed").
    Selective,
    /// Keep only the layer input; the whole layer is recomputed in backward.
    Full,
}

/// How attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Flash-style: no score matrix is stored (the log-sum-exp is negligible and not counted).
    Flash,
    /// The softmax probabilities `h × queries × keys` are stored for backward.
    Materialized,
}

/// Where the logits (and their loss gradient) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitsPlacement {
    /// On the last stage, which owns the LM head.
    LastStage,
    /// Sharded over the vocabulary across all `p` stages (SlimPipe), `1/p` on each.
    VocabSharded,
}

/// One named per-token tensor of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TensorTerm {
    /// Name, as in SPEC §5.
    pub name: &'static str,
    /// Elements per token (before the `t·c` division).
    pub elements: u64,
    /// Whether the recomputation policy keeps it.
    pub kept: bool,
}

/// Degrees of parallelism that divide a stage's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parallelism {
    /// Tensor parallel size `t`.
    pub tp: u64,
    /// Context parallel size `c`.
    pub cp: u64,
    /// Data parallel size `d` (used by the distributed optimizer only).
    pub dp: u64,
}

impl Parallelism {
    /// Checks every degree is at least 1.
    pub fn new(tp: u64, cp: u64, dp: u64) -> Result<Self> {
        Ok(Parallelism {
            tp: positive("tensor parallel size", tp)?,
            cp: positive("context parallel size", cp)?,
            dp: positive("data parallel size", dp)?,
        })
    }

    /// `t·c`, the divisor of every activation.
    pub fn activation_divisor(&self) -> f64 {
        (self.tp * self.cp) as f64
    }
}

/// Bytes of one unit (tokens of one slice × layers of one chunk), by named term.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UnitFootprint {
    /// The saved per-token tensors the policy keeps.
    pub activations: f64,
    /// Softmax probabilities (materialized attention without recomputation only).
    pub attention_scores: f64,
    /// K and V kept for later slices of the sequence when the policy drops them.
    pub kv_prefix: f64,
}

impl UnitFootprint {
    /// Sum of the terms.
    pub fn total(&self) -> f64 {
        self.activations + self.attention_scores + self.kv_prefix
    }
}

/// The activation model of one stage's layers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActivationModel {
    /// Model shape.
    pub shape: ModelShape,
    /// Element type of saved activations.
    pub dtype: Dtype,
    /// Element type of the logits and their gradient.
    pub logits_dtype: Dtype,
    /// Element type of the dK/dV accumulator of sliced sequences.
    pub accumulator_dtype: Dtype,
    /// TP and CP (DP unused here).
    pub parallel: Parallelism,
    /// Recomputation policy.
    pub recompute: RecomputePolicy,
    /// Attention kind.
    pub attention: AttentionKind,
    /// Logits placement.
    pub logits: LogitsPlacement,
}

impl ActivationModel {
    /// bf16 activations, fp32 logits, bf16 dK/dV accumulator, flash attention, no recomputation,
    /// logits on the last stage.
    pub fn new(shape: ModelShape, parallel: Parallelism) -> Result<Self> {
        shape.validate()?;
        Ok(ActivationModel {
            shape,
            dtype: Dtype::Bf16,
            logits_dtype: Dtype::F32,
            accumulator_dtype: Dtype::Bf16,
            parallel,
            recompute: RecomputePolicy::None,
            attention: AttentionKind::Flash,
            logits: LogitsPlacement::LastStage,
        })
    }

    /// The same model with another recomputation policy.
    pub fn with_recompute(self, recompute: RecomputePolicy) -> Self {
        ActivationModel { recompute, ..self }
    }

    /// The named per-token tensors of one layer, with whether the policy keeps them.
    pub fn tensors(&self) -> Vec<TensorTerm> {
        let s = &self.shape;
        let (h, kv, f) = (s.hidden, s.kv_width(), s.ffn_hidden);
        let gated = s.ffn == FfnKind::Gated;
        let keep_all = self.recompute == RecomputePolicy::None;
        let keep_main = self.recompute != RecomputePolicy::Full;
        let t = |name, elements, kept| TensorTerm {
            name,
            elements,
            kept,
        };
        let mut terms = vec![
            t("input", h, true),
            t("attention norm out", h, keep_all),
            t("q", s.q_width(), keep_main),
            t("k", kv, keep_main),
            t("v", kv, keep_main),
            t("attention out", s.q_width(), keep_main),
            t("residual", h, keep_main),
            t("ffn norm out", h, keep_all),
        ];
        if gated {
            terms.push(t("gate", f, keep_main));
        }
        terms.push(t("up", f, keep_main));
        terms.push(t("activation", f, keep_all));
        terms
    }

    /// What a split backward keeps for its weight half, per token of one layer: the input and
    /// the output gradient of every weight matrix (the input `x` of `y = x·Wᵀ` and `dy` give
    /// `dW = dyᵀ·x`). Inputs shared by several matrices (the attention norm output feeds Q, K
    /// and V; the FFN norm output feeds gate and up) are one tensor. With the forward's saved
    /// tensors dropped at the input-gradient half, these are what a zero-bubble schedule holds
    /// from `I` to `W`: `4H + 2·q + 2·kv + 3F` elements for a gated FFN (`2F` otherwise).
    pub fn weight_grad_inputs(&self) -> Vec<TensorTerm> {
        let s = &self.shape;
        let (h, kv, f) = (s.hidden, s.kv_width(), s.ffn_hidden);
        let t = |name, elements| TensorTerm {
            name,
            elements,
            kept: true,
        };
        let mut terms = vec![
            t("q/k/v input (attention norm out)", h),
            t("q output gradient", s.q_width()),
            t("k output gradient", kv),
            t("v output gradient", kv),
            t("o input (attention out)", s.q_width()),
            t("o output gradient", h),
            t("ffn input (ffn norm out)", h),
        ];
        if s.ffn == FfnKind::Gated {
            terms.push(t("gate output gradient", f));
        }
        terms.push(t("up output gradient", f));
        terms.push(t("down input (activation)", f));
        terms.push(t("down output gradient (layer output gradient)", h));
        terms
    }

    /// Bytes per token per layer a split backward holds from `I` to `W`:
    /// `Σ weight_grad_inputs elements · dtype / (t·c)`.
    pub fn weight_grad_input_bytes_per_token_layer(&self) -> f64 {
        let elements: u64 = self.weight_grad_inputs().iter().map(|t| t.elements).sum();
        (elements * self.dtype.bytes()) as f64 / self.parallel.activation_divisor()
    }

    /// Saved bytes per token per layer: `Σ kept elements · dtype / (t·c)`.
    pub fn bytes_per_token_layer(&self) -> f64 {
        let elements: u64 = self
            .tensors()
            .iter()
            .filter(|t| t.kept)
            .map(|t| t.elements)
            .sum();
        (elements * self.dtype.bytes()) as f64 / self.parallel.activation_divisor()
    }

    /// Score-matrix bytes of one layer for `tokens` queries after a prefix of `prefix` tokens.
    pub fn attention_score_bytes_per_layer(&self, tokens: u64, prefix: u64) -> f64 {
        if self.attention == AttentionKind::Flash || self.recompute != RecomputePolicy::None {
            return 0.0;
        }
        let elements = self.shape.heads as f64 * tokens as f64 * (prefix + tokens) as f64;
        elements * self.dtype.bytes() as f64 / self.parallel.activation_divisor()
    }

    /// K and V a slice of `tokens` tokens keeps per layer for later slices of its sequence; zero
    /// for the last slice and when the policy keeps K and V anyway.
    pub fn kv_prefix_bytes_per_layer(&self, tokens: u64, later_slices: bool) -> f64 {
        if !later_slices || self.recompute != RecomputePolicy::Full {
            return 0.0;
        }
        self.kv_bytes(tokens, self.dtype)
    }

    /// The dK/dV accumulator per layer after a backward left `prefix` tokens' gradients pending.
    pub fn dkv_accumulator_bytes_per_layer(&self, prefix: u64) -> f64 {
        self.kv_bytes(prefix, self.accumulator_dtype)
    }

    fn kv_bytes(&self, tokens: u64, dtype: Dtype) -> f64 {
        let elements = 2 * self.shape.kv_width() * tokens;
        (elements * dtype.bytes()) as f64 / self.parallel.activation_divisor()
    }

    /// Logits bytes of `tokens` tokens on one stage of `stages` (vocab over TP, tokens over CP,
    /// and over the pipeline too when vocab-sharded).
    pub fn logits_bytes(&self, tokens: u64, stages: u64) -> f64 {
        let mut divisor = self.parallel.activation_divisor();
        if self.logits == LogitsPlacement::VocabSharded {
            divisor *= stages.max(1) as f64;
        }
        (tokens * self.shape.vocab * self.logits_dtype.bytes()) as f64 / divisor
    }

    /// Footprint of one unit: `tokens` tokens after `prefix`, over `layers` layers.
    pub fn unit(&self, tokens: u64, prefix: u64, later_slices: bool, layers: u64) -> UnitFootprint {
        let l = layers as f64;
        UnitFootprint {
            activations: self.bytes_per_token_layer() * tokens as f64 * l,
            attention_scores: self.attention_score_bytes_per_layer(tokens, prefix) * l,
            kv_prefix: self.kv_prefix_bytes_per_layer(tokens, later_slices) * l,
        }
    }
}
