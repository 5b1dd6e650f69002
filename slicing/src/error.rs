//! The one error type of the slicing crate: every variant names the bad value and what would be valid.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{uniform, CostModel, Padding, SlicingError};
//! let cost = CostModel::fitted(0.0, 1.0, 0.0).unwrap();
//! let err = uniform(4, 8, 1, Padding::None, &cost).unwrap_err();
//! assert_eq!(err, SlicingError::TooManySlices { slices: 8, tokens: 4 });
//! assert_eq!(
//!     err.to_string(),
//!     "cannot cut a sequence of 4 tokens into 8 slices: slices must be between 1 and 4"
//! );
//! ```

use thiserror::Error;

/// Everything that can go wrong while describing a model or slicing a sequence.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SlicingError {
    /// A length, count or size that must be positive was zero (or negative where text was parsed).
    #[error("{what} must be at least 1, got {value}")]
    NotPositive {
        /// Which quantity.
        what: &'static str,
        /// The value given, as written.
        value: String,
    },
    /// More slices were asked for than the sequence has tokens.
    #[error("cannot cut a sequence of {tokens} tokens into {slices} slices: slices must be between 1 and {tokens}")]
    TooManySlices {
        /// Slices asked for.
        slices: usize,
        /// Tokens in the sequence.
        tokens: u64,
    },
    /// Rounding slice lengths to a multiple left a slice with no tokens.
    #[error("rounding to a multiple of {multiple} leaves slice {slice} empty (its unrounded length was {unrounded:.1} tokens); use a multiple of at most {largest_valid} or fewer slices")]
    EmptySliceAfterRounding {
        /// The rounding multiple.
        multiple: u64,
        /// Index of the slice that became empty (0 = first).
        slice: usize,
        /// Length before rounding.
        unrounded: f64,
        /// The largest multiple that leaves every slice non-empty for this request (0 if none).
        largest_valid: u64,
    },
    /// Padding would leave whole slices without a real token.
    #[error("padding {tokens} tokens to {slices} slices of {slice_len} tokens (multiple {multiple}) leaves the last slices with only padding; use a multiple of at most {largest_valid} or fewer slices")]
    PaddingOnlySlice {
        /// Real tokens.
        tokens: u64,
        /// Slices asked for.
        slices: usize,
        /// The padded slice length.
        slice_len: u64,
        /// The rounding multiple.
        multiple: u64,
        /// The largest multiple that works (0 if none).
        largest_valid: u64,
    },
    /// A cost coefficient was NaN, infinite or negative.
    #[error("cost coefficient `{name}` must be finite and non-negative, got {value}")]
    BadCostCoefficient {
        /// Coefficient name.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A cost model that gives every token range zero cost cannot balance anything.
    #[error("cost model has zero per-token and per-pair cost: nothing to balance (give alpha1 or alpha2 > 0)")]
    ZeroCost,
    /// A model shape field is inconsistent.
    #[error("invalid model shape: {field} = {value}: {reason}")]
    BadShape {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What would be valid.
        reason: String,
    },
    /// No preset of that name.
    #[error("unknown model preset `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// Comma-separated list of presets.
        known: String,
    },
    /// A Hugging Face `config.json` could not be understood.
    #[error("config.json: {0}")]
    HfConfig(String),
    /// A token count written as text (`65536`, `64k`, `2M`) did not parse.
    #[error("cannot read token count `{text}`: expected a positive whole number with an optional k/K (×1024) or m/M (×1048576) suffix, e.g. 65536, 64k, 2M")]
    BadTokenCount {
        /// The text given.
        text: String,
    },
    /// A length-distribution description or its parameters are invalid.
    #[error("length distribution `{text}`: {reason}")]
    BadDistribution {
        /// The description given.
        text: String,
        /// What is wrong and what would be valid.
        reason: String,
    },
    /// A line of a lengths file did not hold a length.
    #[error("lengths line {line}: cannot read `{text}`: {reason}")]
    BadLengthLine {
        /// 1-based line number.
        line: usize,
        /// The offending text (shortened).
        text: String,
        /// What was expected.
        reason: String,
    },
    /// The chunker's token budget cannot hold one slice of the longest sequence.
    #[error("token budget {budget} is below the {needed} tokens of the first of {slices} balanced slices of the longest sequence ({longest} tokens); raise the budget to at least {needed} or use more slices")]
    TokenBudgetTooSmall {
        /// Token budget `T_m` given.
        budget: u64,
        /// Tokens of the largest slice.
        needed: u64,
        /// Slices `K` asked for.
        slices: usize,
        /// Tokens of the longest sequence.
        longest: u64,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SlicingError>;
