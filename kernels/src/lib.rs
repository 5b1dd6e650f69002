//! Transformer ops with explicit forward and backward over candle tensors.
//!
//! The engine does not use candle's autograd: several fused candle ops silently drop gradients,
//! and offload, recomputation and the zero-bubble B/W split need control over what is saved. Each
//! op here is a pair of plain functions, forward → (output, saved) and backward(saved, d_out) →
//! gradients:
//!
//! - [`linear_forward`], [`linear_backward_input`], [`linear_backward_weight`] (B/W split),
//!   [`linear_forward_biased`] and [`linear_backward_bias`];
//! - [`rms_norm_forward`] / [`rms_norm_backward`];
//! - [`Rope`] with an absolute position offset;
//! - [`swiglu_forward`] / [`swiglu_backward`];
//! - [`attention_forward`] / [`attention_backward`]: a query slice against a KV prefix, causal
//!   bottom-right, GQA, blockwise with online softmax; [`merge_attention`] by log-sum-exp; and
//!   [`SliceKvCache`], the KV-prefix cache and prefix-gradient accumulator of SPEC §4;
//! - [`Documents`]: packed rows of documents, with [`attention_forward_documents`] /
//!   [`attention_backward_documents`] and [`Rope::forward_documents`] masking every document
//!   from the others and restarting its positions;
//! - [`cross_entropy_forward`] / [`cross_entropy_backward`] fused with the LM head, in vocabulary
//!   blocks, and over row shards of the vocabulary ([`vocab_shard_forward`],
//!   [`vocab_shard_backward`], [`combine_lse`]: vocabulary parallelism).
//!
//! Layouts: activations `[b, s, H]` (any leading dims for row-wise ops), attention tensors
//! `[b, heads, s, d]`. Dtypes: f32 and bf16 (computed in f32), f64 (the test oracle). Bad shapes
//! and dtypes are a [`KernelError`] naming them, never a panic.
//!
//! Architecture invariant: every op has a CPU path and the default build needs no nvcc; the
//! `cuda` feature only switches candle's CUDA backend on. The crate knows tensors, not schedules,
//! models or ranks.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use seqpipe_kernels::{attention_forward, AttentionOptions};
//! let q = Tensor::ones((1, 4, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let kv = Tensor::ones((1, 2, 5, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let (out, lse) = attention_forward(&q, &kv, &kv, &AttentionOptions::causal(8)).unwrap();
//! assert_eq!((out.dims(), lse.dims()), (&[1, 4, 3, 8][..], &[1, 4, 3][..]));
//! ```

#![deny(missing_docs)]

// The README's examples run as doc tests, so the first thing a reader runs is checked.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod attention;
pub mod attention_backward;
mod check;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod documents;
pub mod error;
mod exp_shifted;
mod fused_cpu;
pub mod linear;
pub mod merge;
pub mod rms_norm;
pub mod rope;
pub mod slice_cache;
pub mod swiglu;
pub mod vocab_shard;

pub use attention::{attention_forward, AttentionOptions, Mask};
pub use attention_backward::{attention_backward, attention_backward_unrounded};
pub use cross_entropy::{
    cross_entropy_backward, cross_entropy_backward_input, cross_entropy_backward_weight,
    cross_entropy_forward, CrossEntropySaved,
};
pub use documents::{attention_backward_documents, attention_forward_documents, Documents, Piece};
pub use error::{KernelError, Result};
pub use linear::{
    linear_backward_bias, linear_backward_input, linear_backward_weight, linear_forward,
    linear_forward_biased,
};
pub use merge::merge_attention;
pub use rms_norm::{rms_norm_backward, rms_norm_forward};
pub use rope::{default_frequencies, Rope};
pub use slice_cache::SliceKvCache;
pub use swiglu::{swiglu_backward, swiglu_forward};
pub use vocab_shard::{
    combine_lse, sharded_loss, vocab_shard_backward, vocab_shard_forward, Shard, ShardStats,
};
