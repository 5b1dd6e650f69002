//! The one error type of the kernels crate: every variant names the op, the bad shapes or values and
//! what would be valid, so a trainer bug reads as a sentence rather than a candle backtrace.

use candle_core::DType;
use thiserror::Error;

/// Everything that can go wrong when calling a kernel.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A tensor has the wrong number of dimensions.
    #[error("{op}: `{name}` must have rank {expected} ({layout}), got shape {shape:?}")]
    Rank {
        /// The op that was called.
        op: &'static str,
        /// Which argument.
        name: &'static str,
        /// The rank the op needs.
        expected: usize,
        /// The layout the op expects, e.g. `[b, heads, s, d]`.
        layout: &'static str,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// Two tensors whose shapes must agree do not.
    #[error("{op}: shapes do not fit: {detail}")]
    Shape {
        /// The op that was called.
        op: &'static str,
        /// Which shapes and how they should relate, with the shapes given.
        detail: String,
    },
    /// Query heads are not a whole multiple of key/value heads (grouped-query attention).
    #[error("{op}: q has {q_heads} heads (shape {q_shape:?}) and k/v have {kv_heads} (shape {kv_shape:?}); query heads must be a positive multiple of key/value heads")]
    Heads {
        /// The op that was called.
        op: &'static str,
        /// Query heads.
        q_heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Shape of q.
        q_shape: Vec<usize>,
        /// Shape of k.
        kv_shape: Vec<usize>,
    },
    /// With a causal mask, the keys must include at least the query slice itself.
    #[error("{op}: causal attention needs a KV prefix at least as long as the query slice: q has {q_len} tokens (shape {q_shape:?}) but k/v have {kv_len} (shape {kv_shape:?})")]
    PrefixShorterThanSlice {
        /// The op that was called.
        op: &'static str,
        /// Query tokens.
        q_len: usize,
        /// Key/value tokens.
        kv_len: usize,
        /// Shape of q.
        q_shape: Vec<usize>,
        /// Shape of k.
        kv_shape: Vec<usize>,
    },
    /// A tensor's element type is not one the op supports.
    #[error("{op}: `{name}` has dtype {dtype:?}; expected {expected}")]
    DType {
        /// The op that was called.
        op: &'static str,
        /// Which argument.
        name: &'static str,
        /// The dtype given.
        dtype: DType,
        /// What would be valid.
        expected: String,
    },
    /// A size, count or scalar parameter is out of range.
    #[error("{op}: {what} = {value} is invalid: must be {valid}")]
    Param {
        /// The op that was called.
        op: &'static str,
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        valid: String,
    },
    /// RoPE was asked for positions past its table.
    #[error("rope: positions {offset}..{end} are past the table of {max_positions} positions; build the Rope with max_positions >= {end}")]
    Positions {
        /// First position asked for.
        offset: usize,
        /// One past the last position asked for.
        end: usize,
        /// Positions in the table.
        max_positions: usize,
    },
    /// A (counted) cross-entropy target is not a vocabulary index.
    #[error("cross_entropy: target {target} of token {token} is not in the vocabulary 0..{vocab} (masked-out tokens may hold any target)")]
    Target {
        /// Token row.
        token: usize,
        /// The target given.
        target: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The slice walk of [`crate::SliceKvCache`] was driven out of order.
    #[error("slice cache: {detail}")]
    SliceWalk {
        /// What was called out of order and what the cache holds.
        detail: String,
    },
    /// An error from candle itself (device or allocation trouble, not a bad argument).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KernelError>;
