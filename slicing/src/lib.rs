//! Sequence slicing and load balancing for sequence-sliced pipeline parallelism.
//!
//! A long sequence is cut into slices that flow through the pipeline one after another
//! (Seq1F1B, SlimPipe). Because attention is causal, a later slice costs more than an earlier one
//! of the same length; this crate describes the model ([`ModelShape`], [`preset`],
//! [`shape_from_hf_config`]), prices token ranges ([`CostModel`]) and cuts sequences into
//! [`SlicePlan`]s: [`uniform()`] (equal lengths) or [`balanced()`] (equal cost, SPEC §2.2).
//! For variable-length batches, [`chunk()`] splits long sequences and packs short ones into
//! time-balanced chunks (InfiniPipe, SPEC §2.3); [`LengthDist`] and [`parse_lengths`] supply
//! the batches.
//!
//! Architecture invariant: this crate is pure planning. It sees no tensor, no device and no file;
//! `config.json` arrives as text.
//!
//! ```
//! use seqpipe_slicing::{balanced, preset, CostModel};
//! let cost = CostModel::flops(&preset("gpt-7b").unwrap()).unwrap();
//! let plan = balanced(32768, 4, 8, &cost).unwrap();
//! assert_eq!(plan.lengths(), vec![11040, 8416, 7080, 6232]);
//! ```

#![deny(missing_docs)]

// The README's examples run as doc tests, so the first thing a reader runs is checked.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod balanced;
pub mod chunk;
pub mod cost;
pub mod error;
pub mod hf_config;
pub mod lengths;
pub mod plan;
pub mod presets;
pub mod shape;
pub mod tokens;
pub mod uniform;

pub use balanced::balanced;
pub use chunk::{chunk, Chunk, ChunkKind, Chunking, Piece};
pub use cost::{CostModel, CostUnit};
pub use error::{Result, SlicingError};
pub use hf_config::shape_from_hf_config;
pub use lengths::{parse_lengths, LengthDist};
pub use plan::{Slice, SliceMethod, SlicePlan};
pub use presets::{preset, Preset, PRESETS};
pub use shape::{FfnKind, ModelShape};
pub use tokens::parse_token_count;
pub use uniform::{uniform, Padding};
