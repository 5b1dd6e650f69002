//! The seqpipe trainer: a Llama-style model with explicit forward/backward, one executor that runs
//! any lowered pipeline schedule over the `comm` transport, and the training loop around it.
//!
//! Architecture invariant: the executor has no per-schedule code. It interprets the action lists
//! of `seqpipe-schedule` op by op; a new schedule kind needs no change here.

#![deny(missing_docs)]

// The README's examples run as doc tests, so the first thing a reader runs is checked.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod checkpoint;
pub mod checks;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod health;
pub mod heap;
pub mod init;
pub mod model;
pub mod optim;
pub mod predict;
pub mod progress_io;
pub mod runtime;
pub mod train;
