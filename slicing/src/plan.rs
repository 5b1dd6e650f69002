//! The result of slicing: token ranges in order, each with its cost and prefix length.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{uniform, CostModel, Padding};
//! let cost = CostModel::fitted(1.0, 0.0, 0.0).unwrap(); // cost of [a, b) = b² − a²
//! let plan = uniform(10, 3, 4, Padding::ToMultiple, &cost).unwrap();
//! assert_eq!((plan.len(), plan.padded_len, plan.padding()), (3, 12, 2));
//! let last = plan.slices[2];
//! assert_eq!((last.start, last.end, last.prefix()), (8, 12, 8));
//! assert_eq!(last.cost, 80.0); // 12² − 8²
//! assert_eq!(plan.total_cost(), 144.0);
//! ```

use serde::{Deserialize, Serialize};

/// How a plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceMethod {
    /// Equal slices (SlimPipe).
    Uniform,
    /// Equal forward cost per slice (Seq1F1B `uniform_comp`).
    Balanced,
}

impl std::fmt::Display for SliceMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SliceMethod::Uniform => "uniform",
            SliceMethod::Balanced => "balanced",
        })
    }
}

/// One slice: the tokens `[start, end)` of its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// Position in the sequence (0 = first).
    pub index: usize,
    /// First token.
    pub start: u64,
    /// One past the last token.
    pub end: u64,
    /// Forward cost of this slice, including attention to its prefix.
    pub cost: f64,
}

impl Slice {
    /// Tokens in the slice.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the slice holds no token (never true in a plan this crate returns).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Tokens of earlier slices this slice attends to (its KV prefix).
    pub fn prefix(&self) -> u64 {
        self.start
    }
}

/// An ordered cover of `[0, padded_len)` by non-empty slices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlicePlan {
    /// How the plan was made.
    pub method: SliceMethod,
    /// Real tokens in the sequence.
    pub seq_len: u64,
    /// Tokens after padding (equal to `seq_len` unless uniform slicing padded the last slice).
    pub padded_len: u64,
    /// Slice lengths are multiples of this (except the first slice of an unpadded plan).
    pub multiple: u64,
    /// Slices, first to last.
    pub slices: Vec<Slice>,
}

impl SlicePlan {
    /// Padding tokens appended to the end of the sequence.
    pub fn padding(&self) -> u64 {
        self.padded_len - self.seq_len
    }

    /// Number of slices.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// Whether there are no slices (never true in a plan this crate returns).
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Slice lengths, first to last.
    pub fn lengths(&self) -> Vec<u64> {
        self.slices.iter().map(Slice::len).collect()
    }

    /// Sum of slice costs.
    pub fn total_cost(&self) -> f64 {
        self.slices.iter().map(|s| s.cost).sum()
    }

    /// Largest slice cost divided by the smallest: 1.0 is perfect balance.
    pub fn max_min_cost_ratio(&self) -> f64 {
        let max = self.slices.iter().map(|s| s.cost).fold(f64::MIN, f64::max);
        let min = self.slices.iter().map(|s| s.cost).fold(f64::MAX, f64::min);
        max / min
    }
}
