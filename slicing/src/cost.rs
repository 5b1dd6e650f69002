//! The cost of a token range of a causal sequence: a linear part plus the causal attention area.
//!
//! Every cost source seqpipe uses has the same shape. A range `[a, b)` of a causal sequence
//! attends to `(b² − a²)/2` (query, key) pairs (SPEC §1: `x·P − x²/2` with `x = b − a`, `P = b`), so
//!
//! ```text
//! forward(a, b) = per_pair · (b² − a²)/2 + per_token · (b − a) + per_slice
//! ```
//!
//! - FLOPs from a [`ModelShape`] (Seq1F1B's `T(S)` and `C(x, P)`): `per_pair = L(4d+3)h`,
//!   `per_token = 4HV + L·(linear FLOPs)`, `per_slice = 0`.
//! - Fitted times (InfiniPipe): `T(s) = α1·s² + α2·s + β`, i.e. `per_pair = 2α1`, `per_token = α2`,
//!   `per_slice = β`.
//!
//! Keeping the form closed is what lets [`crate::balanced`] solve for slice lengths exactly.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::CostModel;
//! // T(s) = 1·s² + 2·s + 3, so per_pair = 2, per_token = 2, per_slice = 3.
//! let cost = CostModel::fitted(1.0, 2.0, 3.0).unwrap();
//! assert_eq!(cost.sequence(10), 123.0); // 2·50 + 2·10 + 3
//! assert_eq!(cost.forward(10, 20), 323.0); // 2·(400 − 100)/2 + 2·10 + 3
//! assert_eq!(cost.backward(10, 20), 646.0);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Result, SlicingError};
use crate::shape::ModelShape;

/// What a cost counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostUnit {
    /// Floating-point operations.
    Flops,
    /// Seconds (a fitted model).
    Seconds,
}

/// Quadratic cost of a token range (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Cost of one causal (query, key) pair, all layers together.
    pub per_pair: f64,
    /// Cost of one token's linear work (GEMMs, embedding, head), all layers together.
    pub per_token: f64,
    /// Fixed cost of processing any slice (kernel launches, communication latency).
    pub per_slice: f64,
    /// Backward cost as a multiple of forward (2 for a full backward; 1 each for B and W).
    pub backward_factor: f64,
    /// What the numbers count.
    pub unit: CostUnit,
}

impl CostModel {
    /// Forward FLOPs of a model shape, SPEC §1 (`T(S)`, `C(x, P)`); backward = 2× forward.
    pub fn flops(shape: &ModelShape) -> Result<Self> {
        shape.validate()?;
        let layers = shape.layers as f64;
        CostModel {
            per_pair: layers * shape.layer_attention_flops_per_pair(),
            per_token: shape.vocab_flops_per_token()
                + layers * shape.layer_linear_flops_per_token(),
            per_slice: 0.0,
            backward_factor: 2.0,
            unit: CostUnit::Flops,
        }
        .validated()
    }

    /// Fitted time model `T(s) = α1·s² + α2·s + β` (InfiniPipe); backward = 2× forward.
    pub fn fitted(alpha1: f64, alpha2: f64, beta: f64) -> Result<Self> {
        CostModel {
            per_pair: 2.0 * alpha1,
            per_token: alpha2,
            per_slice: beta,
            backward_factor: 2.0,
            unit: CostUnit::Seconds,
        }
        .validated()
    }

    /// The same model with another backward multiple.
    pub fn with_backward_factor(self, factor: f64) -> Result<Self> {
        CostModel {
            backward_factor: factor,
            ..self
        }
        .validated()
    }

    /// Checks every coefficient is finite and non-negative and that something costs anything.
    pub fn validated(self) -> Result<Self> {
        let coefficients = [
            ("per_pair (alpha1)", self.per_pair),
            ("per_token (alpha2)", self.per_token),
            ("per_slice (beta)", self.per_slice),
            ("backward_factor", self.backward_factor),
        ];
        for (name, value) in coefficients {
            if !value.is_finite() || value < 0.0 {
                return Err(SlicingError::BadCostCoefficient { name, value });
            }
        }
        if self.per_pair == 0.0 && self.per_token == 0.0 {
            return Err(SlicingError::ZeroCost);
        }
        Ok(self)
    }

    /// Causal attention pairs of the range `[start, end)`: `(end² − start²)/2`.
    pub fn attention_pairs(start: u64, end: u64) -> f64 {
        let (a, b) = (start as f64, end as f64);
        (b * b - a * a) / 2.0
    }

    /// Forward cost of the token range `[start, end)` of a causal sequence.
    pub fn forward(&self, start: u64, end: u64) -> f64 {
        debug_assert!(start <= end);
        self.per_pair * Self::attention_pairs(start, end)
            + self.per_token * (end - start) as f64
            + self.per_slice
    }

    /// Backward cost of the token range `[start, end)`.
    pub fn backward(&self, start: u64, end: u64) -> f64 {
        self.backward_factor * self.forward(start, end)
    }

    /// Seq1F1B's `C(x, P)`: forward cost of `x` tokens ending at position `P`.
    pub fn slice(&self, x: u64, end: u64) -> f64 {
        self.forward(end - x, end)
    }

    /// Seq1F1B's `T(S)`: forward cost of a whole sequence processed in one piece.
    pub fn sequence(&self, len: u64) -> f64 {
        self.forward(0, len)
    }
}
